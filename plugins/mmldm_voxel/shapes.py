"""Procedural 3D shapes: the voxel modality's embedded default data.

Six classes built from open3d primitives (box, sphere, torus, cylinder, cone
and a capsule made of a cylinder and two spheres), each with a random size,
proportions and rotation, a class label and a caption naming what varies
("a large thin torus", "a small tall thin cylinder"). Shape ``i`` of seed
``s`` depends on ``(s, i)`` only, so growing ``num_shapes`` keeps earlier shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d
from scipy.spatial.transform import Rotation

from .voxelize import fit_unit_cube, union, voxelize_mesh

CLASS_NAMES = ("box", "sphere", "torus", "cylinder", "cone", "capsule")
_MESH = o3d.geometry.TriangleMesh


@dataclass
class Shape:
    """One procedural shape: class index, caption and its parts as ``(vertices [V,3], triangles [F,3])``
    in unit-cube coordinates. Parts may overlap; they are voxelized one by one and united."""

    label: int
    caption: str
    parts: list[tuple[np.ndarray, np.ndarray]]


def _arrays(mesh: o3d.geometry.TriangleMesh, scale=(1.0, 1.0, 1.0), shift=(0.0, 0.0, 0.0)):
    v = np.asarray(mesh.vertices) * np.asarray(scale) + np.asarray(shift)
    return v, np.asarray(mesh.triangles)


def _box(rng: np.random.Generator):
    sides = np.sort(rng.uniform(0.25, 1.0, size=3))  # small, middle, large
    short, mid, long = sides
    if long / short < 1.4:
        word = "cube-shaped"
    elif mid / short < 1.4:
        word = "long"
    elif long / mid < 1.4:
        word = "flat"
    else:
        word = "long flat"
    return word, [_arrays(_MESH.create_box(*rng.permutation(sides)))]


def _sphere(rng: np.random.Generator):
    radii = np.array([1.0, *rng.uniform(0.6, 1.0, size=2)])
    word = "round" if radii.min() > 0.85 else "squashed"
    return word, [_arrays(_MESH.create_sphere(1.0, resolution=24), scale=rng.permutation(radii))]


def _torus(rng: np.random.Generator):
    tube = rng.uniform(0.15, 0.5)
    word = "thin" if tube < 0.28 else "thick"
    return word, [_arrays(_MESH.create_torus(1.0, tube, radial_resolution=32, tubular_resolution=16))]


def _elongation(height_over_width: float, tall: str, wide: str) -> str:
    return tall if height_over_width > 1.5 else wide if height_over_width < 0.7 else ""


def _cylinder(rng: np.random.Generator):
    height = rng.uniform(0.5, 5.0)  # radius 1: diameter 2
    word = _elongation(height / 2, "tall thin", "short wide")
    return word, [_arrays(_MESH.create_cylinder(1.0, height, resolution=32))]


def _cone(rng: np.random.Generator):
    height = rng.uniform(0.6, 5.0)
    word = _elongation(height / 2, "tall", "squat")
    return word, [_arrays(_MESH.create_cone(1.0, height, resolution=32))]


def _capsule(rng: np.random.Generator):
    length = rng.uniform(1.0, 5.0)  # of the cylinder, radius 1
    word = "long" if length > 2.5 else "short"
    sphere = _MESH.create_sphere(1.0, resolution=24)
    parts = [_arrays(_MESH.create_cylinder(1.0, length, resolution=32))]
    parts += [_arrays(sphere, shift=(0.0, 0.0, s * length / 2)) for s in (-1, 1)]
    return word, parts


_BUILDERS = (_box, _sphere, _torus, _cylinder, _cone, _capsule)


def _caption(*words: str) -> str:
    text = " ".join(w for w in words if w)
    return ("an " if text[0] in "aeiou" else "a ") + text


def make_shape(seed: int, index: int, resolution: int) -> Shape:
    """Shape ``index`` of ``seed``: class ``index % 6``, random proportions,
    rotation and size (longest side 55-100% of the unit cube minus a one-voxel border)."""
    rng = np.random.default_rng([seed, index])
    label = index % len(CLASS_NAMES)
    word, parts = _BUILDERS[label](rng)
    rotation = Rotation.random(random_state=rng).as_matrix()
    size = rng.uniform(0.55, 1.0)
    points = np.concatenate([v for v, _ in parts]) @ rotation.T
    points = fit_unit_cube(points, resolution, size=size)  # one transform for all parts
    splits = np.cumsum([len(v) for v, _ in parts])[:-1]
    parts = [(v, f) for v, (_, f) in zip(np.split(points, splits), parts)]
    size_word = "small" if size < 0.7 else "large" if size > 0.88 else ""
    return Shape(label, _caption(size_word, word, CLASS_NAMES[label]), parts)


def generate(
    num_shapes: int, seed: int, resolution: int, representation: str = "occupancy", sdf_truncation: float = 0.1
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Make and voxelize ``num_shapes`` procedural shapes.

    Returns:
        grids ``[N, R, R, R]`` (uint8 occupancy or float32 truncated SDF),
        labels ``int64 [N]`` and ``N`` captions.
    """
    grids, labels, captions = [], [], []
    for i in range(num_shapes):
        shape = make_shape(seed, i, resolution)
        parts = [
            voxelize_mesh(v, f, resolution, representation, sdf_truncation, closed=True) for v, f in shape.parts
        ]
        grids.append(union(parts, representation))
        labels.append(shape.label)
        captions.append(shape.caption)
    return np.stack(grids), np.asarray(labels, dtype=np.int64), captions
