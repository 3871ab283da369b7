"""Reading one file of a voxel data folder into an ``[R, R, R]`` grid.

Supported: triangle meshes (.obj .off .ply .stl) read with open3d, with
fallback OFF and OBJ readers for files open3d rejects or reads partly; point clouds (.ply without
faces, .pcd, .xyz); binvox grids; .npy/.npz arrays. Every reader raises
``ValueError`` naming the file when the content is unusable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d

from .voxelize import fit_unit_cube, resize_grid, to_representation, voxelize_mesh, voxelize_points

MESH_SUFFIXES = (".obj", ".off", ".ply", ".stl")
POINT_SUFFIXES = (".pcd", ".xyz")
GRID_SUFFIXES = (".binvox", ".npy", ".npz")
SUFFIXES = MESH_SUFFIXES + POINT_SUFFIXES + GRID_SUFFIXES
_GRID_KEYS = ("voxels", "occupancy", "grid", "data", "arr_0")


def _off_lines(path: Path) -> list[list[str]]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        tokens = raw.split("#", 1)[0].split()
        if tokens:
            lines.append(tokens)
    return lines


def read_off(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an OFF mesh: ``(vertices float64 [V, 3], triangles int64 [F, 3])``.

    Accepts the counts on their own line or glued to the keyword on the first
    line (``OFF490 518 0``, found in ModelNet); polygons are fan-triangulated.
    """
    path = Path(path)
    lines = _off_lines(path)
    if not lines or not lines[0][0].upper().startswith("OFF"):
        raise ValueError(f"{path}: not an OFF file (first line must start with 'OFF')")
    head = [lines[0][0][3:]] + lines[0][1:]
    head = [t for t in head if t]
    body = lines[1:] if head else lines[2:]
    counts = head or (lines[1] if len(lines) > 1 else [])
    try:
        n_vertices, n_faces = int(counts[0]), int(counts[1])
        vertices = np.array([[float(t) for t in line[:3]] for line in body[:n_vertices]])
        faces = body[n_vertices : n_vertices + n_faces]
        triangles = _fan([int(t) for t in line[1 : 1 + int(line[0])]] for line in faces)
    except (IndexError, ValueError) as e:
        raise ValueError(f"{path}: malformed OFF content ({e})") from e
    if len(vertices) != n_vertices or len(faces) != n_faces:
        raise ValueError(
            f"{path}: OFF header announces {n_vertices} vertices and {n_faces} faces, the file is shorter"
        )
    return vertices, _checked(triangles, n_vertices, path)


def _fan(polygons) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Fan-triangulate polygons given as vertex index lists: ``int64 [F, 3]``."""
    tris = [(p[0], p[k], p[k + 1]) for p in polygons for k in range(1, len(p) - 1)]
    return np.asarray(tris, dtype=np.int64).reshape(-1, 3)


def _checked(triangles: np.ndarray, n_vertices: int, path: Path) -> np.ndarray:
    if len(triangles) and (triangles.min() < 0 or triangles.max() >= n_vertices):
        raise ValueError(f"{path}: face index out of range [0, {n_vertices})")
    return triangles


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the geometry of an OBJ file (``v`` and ``f`` lines; ``i/t/n`` and negative
    indices; polygons fan-triangulated): ``(vertices [V, 3], triangles [F, 3])``.

    A fallback for files whose polygons open3d's reader drops (e.g. quads with normals).
    """
    path = Path(path)
    vertices, polygons = [], []
    try:
        for line in path.read_text(errors="replace").splitlines():
            tokens = line.split()
            if tokens and tokens[0] == "v":
                vertices.append([float(t) for t in tokens[1:4]])
            elif tokens and tokens[0] == "f":
                polygons.append([int(t.split("/")[0]) for t in tokens[1:]])
    except ValueError as e:
        raise ValueError(f"{path}: malformed OBJ content ({e})") from e
    n = len(vertices)
    polygons = [[i - 1 if i > 0 else n + i for i in p] for p in polygons]  # 1-based or relative to the end
    return np.asarray(vertices, dtype=np.float64).reshape(-1, 3), _checked(_fan(polygons), n, path)


# binvox (Min 2004-2019; format at patrickmin.com/binvox/binvox.html) is read by
# hand: the usual reader is a single unpackaged script and the libraries that
# include one (e.g. trimesh) are not dependencies of this project; the format
# is a short text header plus run-length-encoded bytes.
def read_binvox(path: str | Path) -> np.ndarray:
    """Read a binvox file: occupancy ``uint8 [D, D, D]`` indexed ``[x, y, z]``.

    Header lines ``#binvox 1``, ``dim d d d``, ``translate ...``, ``scale s``,
    ``data``, then pairs of bytes ``(value, run length)``. Voxels are stored
    with y running fastest, then z, then x.
    """
    path = Path(path)
    raw = path.read_bytes()
    if not raw.startswith(b"#binvox"):
        raise ValueError(f"{path}: not a binvox file (must start with '#binvox')")
    end = raw.find(b"\ndata\n")
    if end < 0:
        raise ValueError(f"{path}: binvox header has no 'data' line")
    dims = None
    for line in raw[:end].decode("ascii", errors="replace").splitlines():
        tokens = line.split("#", 1)[0].split()
        if tokens and tokens[0] == "dim":
            dims = tuple(int(t) for t in tokens[1:4])
    if dims is None or len(dims) != 3:
        raise ValueError(f"{path}: binvox header has no 'dim d d d' line")
    pairs = np.frombuffer(raw[end + 6 :], dtype=np.uint8)
    pairs = pairs[: len(pairs) // 2 * 2].reshape(-1, 2)
    values = np.repeat(pairs[:, 0], pairs[:, 1].astype(np.int64))
    if values.size != np.prod(dims):
        raise ValueError(f"{path}: binvox data decodes to {values.size} voxels, header says {dims}")
    return values.reshape(dims[0], dims[2], dims[1]).transpose(0, 2, 1).astype(np.uint8)  # [x, z, y] -> [x, y, z]


def read_array(path: str | Path) -> np.ndarray:
    """A 3D grid from ``.npy`` or ``.npz`` (key voxels/occupancy/grid/data/arr_0, or the only array)."""
    path = Path(path)
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = [k for k in _GRID_KEYS if k in data.files] or (data.files if len(data.files) == 1 else [])
        if not keys:
            raise ValueError(f"{path}: npz needs one of the keys {_GRID_KEYS}, found {data.files}")
        data = data[keys[0]]
    grid = np.squeeze(np.asarray(data))
    if grid.ndim != 3:
        raise ValueError(f"{path}: expected a 3D grid, got shape {np.shape(data)}")
    return grid


def _polygon_count(path: Path) -> int:
    """Faces a text mesh file announces (OBJ ``f`` lines); 0 when unknown."""
    if path.suffix.lower() != ".obj":
        return 0
    return sum(1 for line in path.read_text(errors="replace").splitlines() if line.startswith("f "))


def read_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices [V, 3], triangles [F, 3])`` of a mesh file; empty triangles for a point cloud PLY.

    Read with open3d; OFF and OBJ files fall back to the readers above when
    open3d returns fewer triangles than the file has faces.
    """
    path = Path(path)
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        mesh = o3d.io.read_triangle_mesh(str(path))
    vertices, triangles = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    suffix = path.suffix.lower()
    if suffix == ".off" and len(triangles) == 0:
        return read_off(path)
    if suffix == ".obj" and len(triangles) < _polygon_count(path):
        return read_obj(path)
    return vertices, triangles


def read_points(path: str | Path) -> np.ndarray:
    """Points ``[N, 3]`` of a point cloud file."""
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        points = np.asarray(o3d.io.read_point_cloud(str(path)).points)
    if len(points) == 0:
        raise ValueError(f"{path}: no points could be read")
    return points


def load_grid(
    path: str | Path,
    resolution: int,
    representation: str = "occupancy",
    sdf_truncation: float = 0.1,
    rays: int = 3,
) -> np.ndarray:
    """Read any supported file and return its grid ``[R, R, R]`` in ``representation``.

    Meshes are normalized (bounding box centred, longest side fitting the unit
    cube less a one-voxel border) and voxelized to solids by ray parity.

    Raises ``ValueError`` naming the file for anything unusable: unreadable or
    truncated content (whatever the parsing library raised), non-finite
    coordinates or grid values, and a result with no occupied voxel (an empty
    grid is never returned in place of a shape).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type '{suffix}', expected one of {SUFFIXES}")
    try:
        occupancy = _read_grid(path, suffix, resolution, representation, sdf_truncation, rays)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - parsers of untrusted files raise many types (zlib, tokenize, struct...)
        if isinstance(e, ValueError) and str(path) in str(e):
            raise
        raise ValueError(f"{path}: cannot read ({type(e).__name__}: {e})") from e
    inside = occupancy < 0 if representation == "sdf" else occupancy > 0
    if not inside.any():
        raise ValueError(f"{path}: the shape voxelizes to an empty grid at resolution {resolution}")
    return occupancy


def _read_grid(path: Path, suffix: str, resolution: int, representation: str, sdf_truncation: float,
               rays: int) -> np.ndarray:
    if suffix in GRID_SUFFIXES:
        grid = read_binvox(path) if suffix == ".binvox" else read_array(path)
        if not np.isfinite(np.asarray(grid, dtype=np.float64)).all():
            raise ValueError(f"{path}: grid holds NaN or Inf values")
        return to_representation(resize_grid(grid, resolution), representation, sdf_truncation)
    vertices, triangles = read_mesh(path) if suffix in MESH_SUFFIXES else (read_points(path), np.empty((0, 3)))
    if len(vertices) == 0:
        raise ValueError(f"{path}: no vertices could be read")
    if not np.isfinite(vertices).all():
        raise ValueError(f"{path}: vertex coordinates hold NaN or Inf")
    if len(triangles) == 0:
        if suffix not in (".ply",) + POINT_SUFFIXES:
            raise ValueError(f"{path}: mesh has no triangles")
        return to_representation(voxelize_points(vertices, resolution), representation, sdf_truncation)
    vertices = fit_unit_cube(vertices, resolution)
    return voxelize_mesh(vertices, triangles, resolution, representation, sdf_truncation, rays)
