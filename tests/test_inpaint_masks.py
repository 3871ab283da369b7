"""The training masks of the trained-inpainting conditioner (mmldm_conditioners.inpaint.random_masks): the
``stroke`` (free-form brush strokes) and ``scan`` (what a depth sensor does not see) families over 1, 2 and 3
spatial dims, and the config's ``masks`` choices."""

from __future__ import annotations

import pytest
import torch

from mmldm.configuration import ConfigProblem, validate
from mmldm.schema import check_fields

NEW = ("stroke", "scan")
DIMS = (1, 2, 3)


def _masks(family: str, dims: int, seed: int = 0, batch: int = 16, n: int = 8) -> torch.Tensor:
    from mmldm_conditioners.inpaint import random_masks

    return random_masks((batch, *([n] * dims)), [family], torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("family", NEW)
def test_new_families_have_their_shape_values_and_seeds(family, dims):
    masks = _masks(family, dims)
    assert masks.shape == (16, 1, *([8] * dims)) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    shares = masks.flatten(1).mean(1)
    assert float(shares.min()) > 0 and float(shares.max()) < 1, "every mask generates some cells and keeps some"
    assert torch.equal(masks, _masks(family, dims)), "the same seed draws the same masks"
    assert not torch.equal(masks, _masks(family, dims, seed=1)), "another seed draws other masks"


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("family", NEW)
def test_new_families_mask_20_to_80_percent_on_average(family, dims):
    share = float(_masks(family, dims, batch=200).mean())
    assert 0.2 <= share <= 0.8, share


def _gaps(points: torch.Tensor, strokes) -> torch.Tensor:
    """Each point's distance to the nearest stroke minus that stroke's radius, segment by segment in float64."""
    gap = torch.full((points.shape[0],), float("inf"), dtype=torch.float64)
    for vertices, radius in strokes:
        for a, b in zip(vertices[:-1].double(), vertices[1:].double()):
            t = ((points - a) @ (b - a) / max(float((b - a) @ (b - a)), 1e-12)).clamp(0, 1)
            gap = torch.minimum(gap, (points - a - t[:, None] * (b - a)).norm(dim=1) - radius)
    return gap


@pytest.mark.parametrize("dims", DIMS)
def test_a_stroke_masks_the_cells_within_its_radius_of_its_polyline(dims):
    from mmldm_conditioners.inpaint import stroke_mask

    spatial = (8, 6, 10)[:dims]
    floor = 0.5 * sum(1 / n ** 2 for n in spatial) ** 0.5  # half a cell's diagonal
    centres = torch.stack(torch.meshgrid(*[(torch.arange(n) + 0.5) / n for n in spatial], indexing="ij"))
    points = centres.reshape(dims, -1).T.double()
    for seed in range(10):
        mask, strokes = stroke_mask(spatial, torch.Generator().manual_seed(seed))
        assert mask.shape == spatial and 1 <= len(strokes) <= 16
        for vertices, radius in strokes:
            assert 2 <= len(vertices) <= 5 and float(vertices.min()) >= 0 and float(vertices.max()) <= 1
            assert 0.05 <= radius <= 0.15 or radius == pytest.approx(floor)
        gap, masked = _gaps(points, strokes), mask.flatten().bool()
        assert bool((gap[masked] <= 1e-5).all()), "every masked cell lies within a stroke's radius of its polyline"
        inside = gap <= -1e-5
        if not bool(inside.all()):  # (a stroke covering everything keeps one cell known)
            assert bool(masked[inside].all()), "every cell within a stroke's radius is masked"


@pytest.mark.parametrize("spatial", [(32,), (16, 16), (8, 12, 8)], ids=["1d", "2d", "3d"])
def test_each_stroke_masks_a_connected_set_of_cells(spatial):
    """The radius is at least half a cell's diagonal: every cell a polyline passes through is masked, so each
    stroke's cells touch (as neighbours by a face, edge or corner)."""
    import itertools

    from mmldm_conditioners.inpaint import stroke_mask

    dims = len(spatial)
    centres = torch.stack(torch.meshgrid(*[(torch.arange(n) + 0.5) / n for n in spatial], indexing="ij"))
    points = centres.reshape(dims, -1).T.double()
    steps = [d for d in itertools.product((-1, 0, 1), repeat=dims) if any(d)]
    for seed in range(8):
        mask, strokes = stroke_mask(spatial, torch.Generator().manual_seed(seed))
        for stroke in strokes:
            own = (_gaps(points, [stroke]) <= 1e-5).reshape(spatial) & mask.bool()
            cells = {tuple(c) for c in own.nonzero().tolist()}
            assert cells, "a stroke masks a cell"
            todo, seen = [next(iter(cells))], set()
            while todo:
                cell = todo.pop()
                if cell not in seen:
                    seen.add(cell)
                    todo += [n for n in (tuple(c + d for c, d in zip(cell, step)) for step in steps) if n in cells]
            assert seen == cells, (seed, stroke)


def test_tiny_grids():
    """A grid of one cell is masked whole; one of two cells is split."""
    for family in NEW:
        assert bool((_masks(family, 1, n=1) == 1).all())
        assert bool((_masks(family, 1, n=2).sum(-1) == 1).all())


@pytest.mark.parametrize("dims", DIMS)
def test_a_scan_is_monotone_along_its_axis_away_from_the_viewer(dims):
    from mmldm_conditioners.inpaint import scan_mask

    spatial = (8, 6, 10)[:dims]
    seen = set()
    for seed in range(40):
        mask, axis, side = scan_mask(spatial, torch.Generator().manual_seed(seed))
        seen.add((axis, side))
        assert mask.shape == spatial
        lines = mask.movedim(axis, -1)
        if side == 1:
            lines = lines.flip(-1)  # seen from the last index: away from the viewer is towards index 0
        assert bool((lines.diff(dim=-1) >= 0).all()), "once masked, masked further from the viewer"
        assert bool((lines[..., 0] == 0).all()) and bool((lines[..., -1] == 1).all()), "nearest known, farthest masked"
    assert seen == {(a, s) for a in range(dims) for s in (0, 1)}, "every axis and side is drawn"


def test_scan_masks_from_random_masks_are_monotone_along_some_axis():
    masks = _masks("scan", 3)[:, 0]
    for m in masks:
        monotone = [bool((d >= 0).all()) or bool((d <= 0).all())
                    for d in (m.diff(dim=a) for a in range(3))]
        assert any(monotone)


def test_existing_families_are_unchanged_by_the_new_ones():
    """The new families add branches: masks of box, half and slab from one generator state are those of before,
    which is what ``masks`` defaults to."""
    from mmldm_conditioners.config import DEFAULT_INPAINT_MASKS, INPAINT_MASKS, InpaintConditionerConfig
    from mmldm_conditioners.inpaint import InpaintConditioner

    assert INPAINT_MASKS == ("box", "half", "slab", "stroke", "scan")
    assert InpaintConditionerConfig(name="inpaint").masks == ["box", "half", "slab"] == list(DEFAULT_INPAINT_MASKS)
    assert InpaintConditioner().masks == ("box", "half", "slab")


def test_unknown_family_is_named():
    from mmldm_conditioners.inpaint import random_masks

    with pytest.raises(ValueError, match=r"unknown inpainting mask families \['brush'\]"):
        random_masks((2, 8, 8), ["stroke", "brush"])


def test_config_accepts_the_new_families_and_names_a_bad_one():
    from mmldm_conditioners.config import InpaintConditionerConfig

    check_fields(InpaintConditionerConfig(name="inpaint", masks=["stroke", "scan"]), "conditioner")
    bad = r"invalid value '\['bogus'\]' for config key 'conditioner.masks'.*stroke, scan"
    with pytest.raises(ValueError, match=bad):
        check_fields(InpaintConditionerConfig(name="inpaint", masks=["bogus"]), "conditioner")
    cfg = validate(["modality=voxel", "conditioner=class_inpaint", "conditioner.1.masks=[stroke,scan]"]).config
    assert list(cfg.conditioner[1].masks) == ["stroke", "scan"]
    with pytest.raises(ConfigProblem, match=r"invalid value '\[box,bogus\]' for config key 'conditioner.1.masks'"):
        validate(["modality=voxel", "conditioner=class_inpaint", "conditioner.1.masks=[box,bogus]"])
