"""Tests of the voxel modality plugin: generation, voxelization, readers, data, output, metrics."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import torch
from matplotlib.image import imread
from scipy import ndimage

from mmldm.plugins import registry
from mmldm_voxel import VoxelConfig
from mmldm_voxel import data as voxel_data
from mmldm_voxel.metrics import chamfer, generation_metrics, iou, occupancy_jsd, surface_points
from mmldm_voxel.modality import VoxelModality
from mmldm_voxel.readers import load_grid, read_binvox, read_mesh, read_off
from mmldm_voxel.shapes import CLASS_NAMES, generate, make_shape
from mmldm_voxel.voxelize import voxel_centres, voxelize_mesh

MESHES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "meshes"
needs_meshes = pytest.mark.skipif(not MESHES.is_dir(), reason="shared test meshes (../shared/data/meshes) not present")


def _modality(tmp_path: Path, **overrides) -> VoxelModality:
    return VoxelModality(VoxelConfig(name="voxel", cache_dir=str(tmp_path / "cache"), **overrides))


def _is_solid(grid: np.ndarray) -> bool:
    """No enclosed empty cavity: filling holes changes nothing."""
    return bool(np.array_equal(ndimage.binary_fill_holes(grid), grid.astype(bool)))


def test_registered_and_built_from_registry(tmp_path):
    m = registry().build("modality", {"name": "voxel", "resolution": 16, "cache_dir": str(tmp_path)})
    assert isinstance(m, VoxelModality)
    assert (m.name, m.dims, m.channels, m.num_classes) == ("voxel", 3, 1, len(CLASS_NAMES))
    assert m.sample_shape == (1, 16, 16, 16)
    assert m.reconstruction_loss == "bce"


def test_bad_config_names_key_and_choices(tmp_path):
    with pytest.raises(ValueError, match=r"representation='mesh'.*occupancy.*sdf"):
        _modality(tmp_path, representation="mesh")
    with pytest.raises(ValueError, match="occupancy_rays=2"):
        _modality(tmp_path, occupancy_rays=2)


def test_generation_is_deterministic_and_prefix_stable():
    grids, labels, captions = generate(12, seed=3, resolution=16)
    again = generate(12, seed=3, resolution=16)
    assert np.array_equal(grids, again[0]) and captions == again[2]
    assert np.array_equal(generate(6, seed=3, resolution=16)[0], grids[:6])  # shape i depends on (seed, i) only
    assert not np.array_equal(generate(12, seed=4, resolution=16)[0], grids)
    assert labels.tolist() == [i % 6 for i in range(12)]
    for label, caption in zip(labels, captions):
        assert caption.startswith(("a ", "an ")) and caption.endswith(CLASS_NAMES[label])
    fill = grids.reshape(12, -1).mean(axis=1)
    assert (fill > 0).all() and all(_is_solid(g) for g in grids)
    assert grids[:, [0, -1]].max() == 0  # one-voxel empty border


def test_capsule_union_is_filled_where_parts_overlap():
    shape = make_shape(0, 5, 32)
    assert len(shape.parts) == 3  # cylinder and two end spheres, overlapping
    grid = generate(6, seed=0, resolution=32)[0][5]
    parts = [voxelize_mesh(v, f, 32, closed=True) for v, f in shape.parts]
    assert np.array_equal(grid, np.maximum.reduce(parts))
    overlap = np.logical_and(parts[0], parts[1])
    assert overlap.any() and grid[overlap].all() and _is_solid(grid)


def test_sphere_volume_and_interior():
    r, res = 0.4, 32
    sphere = o3d.geometry.TriangleMesh.create_sphere(r, resolution=60)
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.triangles)
    occ = voxelize_mesh(v, f, res)
    assert occ.mean() == pytest.approx(4 / 3 * np.pi * r**3, rel=0.03)
    dist = np.linalg.norm(voxel_centres(res), axis=-1)
    assert occ[dist < r - 1.5 / res].all() and not occ[dist > r + 1.5 / res].any()
    sdf = voxelize_mesh(v, f, res, representation="sdf", sdf_truncation=0.1)
    assert sdf.min() >= -1 and sdf.max() <= 1
    assert np.mean((sdf < 0) == occ.astype(bool)) > 0.99
    expected = np.clip((dist - r) / 0.1, -1, 1)
    assert np.abs(sdf - expected).max() < 0.1  # polygonal sphere: within 1e-2 of the analytic distance


def test_banded_sdf_matches_full_signed_distance():
    # distances are only queried near the surface; the result must equal a full query
    for index in (2, 4):  # a torus and a cone
        (v, f), = make_shape(7, index, 32).parts
        fast = voxelize_mesh(v, f, 32, representation="sdf", sdf_truncation=0.08, closed=True)
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(v.astype(np.float32)), o3d.core.Tensor(f.astype(np.uint32)))
        full = scene.compute_signed_distance(o3d.core.Tensor(voxel_centres(32))).numpy()
        assert np.allclose(fast, np.clip(full / 0.08, -1, 1), atol=1e-5)


@needs_meshes
@pytest.mark.parametrize("name", ["spot.obj", "bathtub_0001.off", "bathtub_0002.off", "suzanne.obj"])
def test_real_meshes_voxelize_to_solids(name):
    grid = load_grid(MESHES / name, 32)
    assert grid.shape == (32, 32, 32) and 0.02 < grid.mean() < 0.5
    assert _is_solid(grid)


@needs_meshes
def test_binvox_reader_on_real_file():
    grid = read_binvox(MESHES / "chair_model.binvox")
    assert grid.shape == (32, 32, 32) and grid.dtype == np.uint8
    assert set(np.unique(grid)) == {0, 1} and 0 < grid.mean() < 0.5


def test_binvox_run_length_and_axis_order(tmp_path):
    # 2^3 grid, one voxel at (x=1, y=0, z=0): stored index x*4 + z*2 + y = 4 (y runs fastest)
    path = tmp_path / "one.binvox"
    path.write_bytes(b"#binvox 1\ndim 2 2 2\ntranslate 0 0 0\nscale 1\ndata\n" + bytes([0, 4, 1, 1, 0, 3]))
    grid = read_binvox(path)
    assert grid.sum() == 1 and grid[1, 0, 0] == 1
    path.write_bytes(b"#binvox 1\ndim 2 2 2\ndata\n" + bytes([0, 5]))
    with pytest.raises(ValueError, match=r"one.binvox.*5 voxels"):
        read_binvox(path)


_CUBE_BODY = """8 6 0
0 0 0\n1 0 0\n1 1 0\n0 1 0\n0 0 1\n1 0 1\n1 1 1\n0 1 1
4 0 3 2 1\n4 4 5 6 7\n4 0 1 5 4\n4 2 3 7 6\n4 1 2 6 5\n4 0 4 7 3
"""


def test_off_with_counts_on_header_line(tmp_path):
    glued, plain = tmp_path / "glued.off", tmp_path / "plain.off"
    glued.write_text("OFF" + _CUBE_BODY)
    plain.write_text("OFF\n# a comment\n" + _CUBE_BODY)
    v1, t1 = read_off(glued)
    v2, t2 = read_off(plain)
    assert v1.shape == (8, 3) and t1.shape == (12, 3)  # quads fan-triangulated
    assert np.array_equal(v1, v2) and np.array_equal(t1, t2)
    v3, t3 = read_mesh(glued)  # open3d rejects the glued header; the fallback reads it
    assert len(t3) == 12
    grid = load_grid(glued, 16)
    assert grid[1:-1, 1:-1, 1:-1].all() and grid.sum() == 14**3
    with pytest.raises(ValueError, match="bad.off.*OFF"):
        (tmp_path / "bad.off").write_text("PLY\n1 2 3\n")
        read_off(tmp_path / "bad.off")


def _sphere_points(n: int = 4000) -> np.ndarray:
    rng = np.random.default_rng(0)
    p = rng.normal(size=(n, 3))
    return 0.4 * p / np.linalg.norm(p, axis=1, keepdims=True)


def _make_folder(root: Path) -> None:
    (root / "boxes").mkdir(parents=True)
    (root / "balls").mkdir()
    (root / "boxes" / "cube.off").write_text("OFF" + _CUBE_BODY)
    (root / "boxes" / "cube.txt").write_text("a plain cube\n")
    grid = np.zeros((8, 8, 8), np.uint8)
    grid[2:6, 2:6, 2:6] = 1
    np.save(root / "boxes" / "small.npy", grid)
    np.savetxt(root / "balls" / "ball.xyz", _sphere_points())
    (root / "balls" / "captions.json").write_text(json.dumps({"ball": "a round ball"}))
    (root / "balls" / "broken.obj").write_text("this is not a mesh\n")
    (root / "balls" / "junk.binvox").write_bytes(b"\x00\x01garbage")


def test_folder_data_classes_captions_and_skipped_files(tmp_path, caplog):
    root = tmp_path / "data"
    _make_folder(root)
    m = _modality(tmp_path, root=str(root), resolution=16, val_fraction=0.0)
    assert m.class_names == ["balls", "boxes"] and m.num_classes == 2
    ds = m.dataset("train")
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]  # one, naming each file
    assert "skipped 2 unreadable file(s)" in warning and "broken.obj" in warning and "junk.binvox" in warning
    assert m.num_skipped == 2 and sorted(Path(s).name for s in m.skipped) == ["broken.obj", "junk.binvox"]
    items = {it["cond"]["text"]: it for it in ds}
    assert set(items) == {"a round ball", "a plain cube", "a boxes"}
    assert items["a round ball"]["cond"]["class"] == 0 and items["a plain cube"]["cond"]["class"] == 1
    ball = items["a round ball"]["x"][0].numpy()
    assert 0.2 < ball.mean() < 0.45 and ball[8, 8, 8] == 1  # surface points filled to a solid
    assert items["a boxes"]["x"].shape == (1, 16, 16, 16) and items["a boxes"]["x"].sum() == 8**3

    again = _modality(tmp_path, root=str(root), resolution=16, val_fraction=0.0)
    assert again.num_skipped == 2 and len(again.dataset("train")) == 3  # from the cache
    if MESHES.is_dir():
        shutil.copy(MESHES / "spot.obj", root / "boxes" / "x.obj")
    else:  # without the shared meshes: a tetrahedron written as OBJ
        (root / "boxes" / "x.obj").write_text(
            "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n"
        )
    assert len(list((tmp_path / "cache").glob("folder-*.npz"))) == 1
    caplog.clear()
    _modality(tmp_path, root=str(root), resolution=16).dataset("val")  # new file -> new cache key
    assert "skipped 2 unreadable file(s)" in caplog.text
    assert len(list((tmp_path / "cache").glob("folder-*.npz"))) == 2


def test_dataset_items_split_and_cache(tmp_path, monkeypatch):
    m = _modality(tmp_path, num_shapes=30, resolution=16, val_fraction=0.2, seed=1)
    train, val = m.dataset("train"), m.dataset("val")
    assert (len(train), len(val)) == (24, 6)
    assert not set(train.indices) & set(val.indices)
    item = train[0]
    assert item["x"].shape == (1, 16, 16, 16) and item["x"].dtype == torch.float32
    assert set(item["x"].unique().tolist()) <= {0.0, 1.0}
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=4)))
    assert batch["x"].shape == (4, 1, 16, 16, 16)
    assert batch["cond"]["class"].dtype == torch.int64 and len(batch["cond"]["text"]) == 4

    def fail(*args, **kwargs):
        raise AssertionError("generated again although cached")

    monkeypatch.setattr(voxel_data, "generate", fail)
    cached = _modality(tmp_path, num_shapes=30, resolution=16, val_fraction=0.2, seed=1)
    assert np.array_equal(cached.dataset("val").indices, val.indices)
    assert torch.equal(cached.dataset("train")[3]["x"], train[3]["x"])
    with pytest.raises(ValueError, match="unknown split 'test'"):
        m.dataset("test")


def test_sdf_representation(tmp_path):
    m = _modality(tmp_path, num_shapes=6, resolution=16, representation="sdf", val_fraction=0.0)
    occ = _modality(tmp_path, num_shapes=6, resolution=16, val_fraction=0.0)
    x, o = m.dataset("train")[2]["x"], occ.dataset("train")[2]["x"]
    assert x.min() >= -1 and x.max() <= 1 and x.min() < 0
    assert ((x < 0) == (o > 0.5)).float().mean() > 0.99
    assert m.reconstruction_loss == "l1"
    assert torch.equal(m.postprocess(torch.tensor([-3.0, 0.2, 5.0])), torch.tensor([-1.0, 0.2, 1.0]))
    assert torch.allclose(occ.postprocess(torch.tensor([0.0, 40.0])), torch.tensor([0.5, 1.0]))


def test_finalize_gives_the_occupancy_that_meshes_and_metrics_use(tmp_path):
    occ = _modality(tmp_path, num_shapes=6, resolution=16, val_fraction=0.0)
    real = occ.dataset("train")[2]["x"][None]
    assert torch.equal(occ.finalize(real), real)  # real grids are already 0/1
    probs = torch.sigmoid(torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0)) * 3)
    final = occ.finalize(probs)
    assert set(final.unique().tolist()) == {0.0, 1.0}
    assert np.array_equal(final[:, 0].numpy().astype(bool), occ.occupancy(probs))
    sdf = _modality(tmp_path, num_shapes=6, resolution=16, representation="sdf", val_fraction=0.0)
    values = probs * 2 - 1
    assert torch.equal(sdf.finalize(values), values)


def test_save_writes_grids_meshes_and_pngs_that_reload(tmp_path):
    m = _modality(tmp_path, resolution=16)
    samples = torch.from_numpy(generate(3, seed=0, resolution=16)[0]).float()[:, None]
    paths = m.save(samples * 0.9, tmp_path / "out", prefix="s")  # probabilities, as a sampled model gives
    assert [p.name for p in paths] == [f"s_00{i}.{ext}" for i in range(3) for ext in ("npz", "ply", "png")] + [
        "s_grid.png"]
    assert np.array_equal(np.load(paths[0])["grid"], samples[0, 0].numpy() * np.float32(0.9))  # the grid as sampled
    assert np.array_equal(load_grid(paths[0], resolution=16) > 0.5, samples[0, 0].numpy() > 0.5)  # readable as data
    mesh = o3d.io.read_triangle_mesh(str(paths[1]))
    assert len(mesh.vertices) > 0 and len(mesh.triangles) > 0
    assert np.abs(np.asarray(mesh.vertices)).max() <= 0.5
    assert imread(paths[2]).ndim == 3 and imread(paths[-1]).shape[1] > imread(paths[2]).shape[1]
    obj = _modality(tmp_path, resolution=16, mesh_format="obj").save(samples[:1], tmp_path / "obj")
    assert [p.suffix for p in obj] == [".npz", ".obj", ".png", ".png"]
    assert len(o3d.io.read_triangle_mesh(str(obj[1])).triangles) > 0
    with pytest.warns(UserWarning, match="no surface"):
        paths = m.save(torch.zeros(1, 1, 16, 16, 16), tmp_path / "empty")
    assert [p.suffix for p in paths] == [".npz", ".png", ".png"]
    with pytest.raises(ValueError, match=r"mesh_format='stl' \(expected one of \('ply', 'obj'\)\)"):
        _modality(tmp_path, mesh_format="stl")


def test_reconstruction_metrics(tmp_path):
    m = _modality(tmp_path, resolution=16)
    x = torch.from_numpy(generate(4, seed=0, resolution=16)[0]).float()[:, None]
    assert m.reconstruction_metrics(x, x) == {"iou": 1.0, "chamfer": 0.0}
    assert m.reconstruction_metrics(x, torch.zeros_like(x))["iou"] == 0.0
    shifted = torch.roll(x, 1, dims=2)
    metrics = m.reconstruction_metrics(x, shifted)
    assert 0 < metrics["iou"] < 1 and metrics["chamfer"] > 0
    assert iou(np.zeros((1, 4, 4, 4), bool), np.zeros((1, 4, 4, 4), bool)).tolist() == [1.0]


def test_chamfer_symmetric_and_zero_for_identical():
    grids = generate(2, seed=0, resolution=16)[0].astype(bool)
    a, b = surface_points(grids[0], 500, seed=0), surface_points(grids[1], 700, seed=1)
    assert a.shape == (500, 3)
    assert chamfer(a, a) == 0.0
    assert chamfer(a, b) == pytest.approx(chamfer(b, a)) and chamfer(a, b) > 0
    assert np.isnan(chamfer(a, np.zeros((0, 3))))


def _balls_and_cubes(res: int = 16) -> tuple[np.ndarray, np.ndarray]:
    c = voxel_centres(res)
    balls = np.stack([np.linalg.norm(c, axis=-1) < r for r in (0.15, 0.17, 0.19, 0.21)])
    cubes = np.stack([np.abs(c).max(axis=-1) < h for h in (0.35, 0.37, 0.39, 0.41)])
    return balls, cubes


def test_generation_metrics_separate_and_match():
    balls, cubes = _balls_and_cubes()
    same = generation_metrics(balls, balls, points=256)
    assert same["mmd_cd"] == 0.0 and same["cov_cd"] == 1.0 and same["1nna_cd"] <= 0.5
    apart = generation_metrics(balls, cubes, points=256)
    assert apart["mmd_cd"] > 0.01 and apart["1nna_cd"] == 1.0  # every shape's nearest neighbour is its own kind
    assert apart["cov_cd"] == 0.25  # every cube is nearest the largest ball
    grids = generate(8, seed=0, resolution=16)[0].astype(bool)
    mixed = generation_metrics(grids[:4], grids[4:], points=256)
    assert set(mixed) == {"mmd_cd", "cov_cd", "1nna_cd", "jsd"} and 0 <= mixed["1nna_cd"] <= 1
    assert same["jsd"] == pytest.approx(0.0, abs=1e-12) and 0 < apart["jsd"] < math.log(2)


def test_occupancy_jsd_bounds():
    left = np.zeros((2, 4, 4, 4), bool)
    left[:, :2] = True
    right = np.zeros_like(left)
    right[:, 2:] = True
    assert occupancy_jsd(left, right) == pytest.approx(math.log(2))  # disjoint: the maximum
    assert occupancy_jsd(left, left) == pytest.approx(0.0)
    assert math.isnan(occupancy_jsd(left, np.zeros_like(left)))  # an empty set has no distribution


def test_2d_layout_folds_depth_into_channels_and_keeps_3d_outputs(tmp_path):
    flat = _modality(tmp_path, num_shapes=12, resolution=16, layout="2d")
    deep = _modality(tmp_path, num_shapes=12, resolution=16)
    assert (flat.dims, flat.channels, flat.sample_shape) == (2, 16, (16, 16, 16))
    assert (deep.dims, deep.channels, deep.sample_shape) == (3, 1, (1, 16, 16, 16))
    x2, x3 = flat.dataset("train")[0]["x"], deep.dataset("train")[0]["x"]
    assert x2.shape == (16, 16, 16) and torch.equal(x2, x3[0])
    b2 = torch.stack([flat.dataset("train")[i]["x"] for i in range(2)])
    b3 = b2[:, None]
    shifted2, shifted3 = torch.roll(b2, 1, dims=2), torch.roll(b3, 1, dims=3)
    assert flat.reconstruction_metrics(b2, shifted2) == deep.reconstruction_metrics(b3, shifted3)
    paths = flat.save(b2, tmp_path / "out")
    assert [p.suffix for p in paths].count(".ply") == 2
    with pytest.raises(ValueError, match=r"layout='4d' \(expected one of \('3d', '2d'\)\)"):
        _modality(tmp_path, layout="4d")
