"""Files a person opens: PLY meshes (marching cubes) and matplotlib renders of voxel grids.

Surfaces are extracted with :func:`skimage.measure.marching_cubes` (Lorensen
& Cline 1987) and placed in unit-cube coordinates (see :mod:`.voxelize`).
Rendering uses matplotlib's Agg backend: no display, no GPU.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import open3d as o3d  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402
from skimage.measure import marching_cubes  # noqa: E402

_LIGHT = np.array([0.4, -0.5, 0.77])


def surface_mesh(grid: np.ndarray, level: float, outside: float) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface of ``grid [R, R, R]`` at ``level``: ``(vertices float32 [V, 3], faces int64 [F, 3])``.

    ``outside`` is the value of empty space (0 for occupancy, 1 for a truncated
    SDF); the grid is padded with it so that surfaces touching the border
    close. Empty arrays when the level is not crossed.
    """
    grid = np.asarray(grid, dtype=np.float32)
    r = grid.shape[0]
    padded = np.pad(grid, 1, constant_values=outside)
    if not padded.min() < level < padded.max():
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    direction = "descent" if outside < level else "ascent"  # normals point to the outside
    verts, faces, _, _ = marching_cubes(padded, level=level, gradient_direction=direction)
    verts = (verts - 0.5) / r - 0.5  # padded index -> unit-cube coordinate of voxel centres
    return verts.astype(np.float32), faces.astype(np.int64)


def write_mesh(vertices: np.ndarray, faces: np.ndarray, path: Path) -> None:
    """Write a triangle mesh with vertex normals; open3d picks the format from the suffix (.ply, .obj)."""
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(faces))
    mesh.compute_vertex_normals()
    if not o3d.io.write_triangle_mesh(str(path), mesh):
        raise OSError(f"open3d could not write the mesh '{path}'")


def draw_mesh(ax, vertices: np.ndarray, faces: np.ndarray, title: str = "") -> None:  # type: ignore[no-untyped-def]
    """Draw a mesh with Lambert shading on a 3D matplotlib axis, y up (as in OBJ, ShapeNet, binvox)."""
    ax.set_axis_off()
    ax.set(xlim=(-0.5, 0.5), ylim=(-0.5, 0.5), zlim=(-0.5, 0.5))
    ax.set_box_aspect((1, 1, 1), zoom=1.35)
    ax.view_init(elev=25, azim=-60, vertical_axis="y")
    if title:
        ax.set_title(title, fontsize=8)
    if len(faces) == 0:
        ax.text(0, 0, 0, "(empty)", ha="center")
        return
    tris = vertices[faces]  # (F, 3 corners, 3 coords)
    normals = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    shade = 0.35 + 0.65 * np.clip(np.abs(normals @ (_LIGHT / np.linalg.norm(_LIGHT))), 0, 1)
    colors = shade[:, None] * np.array([0.35, 0.55, 0.85])
    ax.add_collection3d(Poly3DCollection(tris, facecolors=colors, edgecolors="none"))


def render_png(meshes: list[tuple[np.ndarray, np.ndarray]], path: Path, titles: list[str] | None = None) -> None:
    """Render one or more meshes side by side (a near-square grid) into one PNG."""
    n = len(meshes)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig = plt.figure(figsize=(2.5 * cols, 2.5 * rows), dpi=100)
    for i, (v, f) in enumerate(meshes):
        ax = fig.add_subplot(rows, cols, i + 1, projection="3d")
        draw_mesh(ax, v, f, titles[i] if titles else "")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_grids(grids: np.ndarray, directory: Path, prefix: str, level: float, outside: float,
               mesh_format: str = "ply", titles: Sequence[str] | None = None) -> list[Path]:
    """For each grid of ``grids [B, R, R, R]`` write ``{prefix}_{i:03d}.npz`` (the grid, key ``grid``),
    ``.{mesh_format}`` (its surface at ``level``) and ``.png``, plus ``{prefix}_grid.png`` showing all of
    them. Empty grids get no mesh (with a warning)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meshes = [surface_mesh(g, level, outside) for g in grids]
    written: list[Path] = []
    for i, (v, f) in enumerate(meshes):
        stem = directory / f"{prefix}_{i:03d}"
        np.savez_compressed(stem.with_suffix(".npz"), grid=np.asarray(grids[i], dtype=np.float32))
        written.append(stem.with_suffix(".npz"))
        if len(f):
            write_mesh(v, f, stem.with_suffix(f".{mesh_format}"))
            written.append(stem.with_suffix(f".{mesh_format}"))
        else:
            warnings.warn(f"sample {i} has no surface at level {level}: no mesh written for '{stem}'", stacklevel=2)
        render_png([(v, f)], stem.with_suffix(".png"))
        written.append(stem.with_suffix(".png"))
    grid_png = directory / f"{prefix}_grid.png"
    render_png(meshes, grid_png, titles=list(titles) if titles is not None else [str(i) for i in range(len(meshes))])
    return written + [grid_png]
