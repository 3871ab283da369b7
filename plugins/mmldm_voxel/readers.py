"""Reading one file of a voxel data folder into an ``[R, R, R]`` grid.

Supported: triangle meshes (.obj .off .ply .stl) read with open3d, with
fallback OFF and OBJ readers for files open3d rejects or reads partly; point clouds (.ply without
faces, .pcd, .xyz); binvox grids; .npy/.npz arrays. Every reader raises
``ValueError`` naming the file when the content is unusable.

Sizes a header declares (PLY/OFF/PCD element counts, npy shapes, binvox dims) are checked against
the file's size and the limits below before anything is allocated: a 200-byte file that claims
2e9 vertices is rejected by name instead of failing the run with ``std::bad_alloc``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import open3d as o3d

from mmldm.data import path_problem

from .voxelize import fit_unit_cube, resize_grid, to_representation, voxelize_mesh, voxelize_points

MESH_SUFFIXES = (".obj", ".off", ".ply", ".stl")
POINT_SUFFIXES = (".pcd", ".xyz")
GRID_SUFFIXES = (".binvox", ".npy", ".npz")
SUFFIXES = MESH_SUFFIXES + POINT_SUFFIXES + GRID_SUFFIXES
_GRID_KEYS = ("voxels", "occupancy", "grid", "data", "arr_0")

#: Most vertices, faces or points (each element of a PLY) a header may declare: 1e8, i.e. 2.4 GB of
#: float64 coordinates; more is refused before reading. (Voxelizing even 1e7 triangles takes minutes.)
MAX_ELEMENTS = 100_000_000
#: Most values a grid file (.npy/.npz member, binvox) may hold: 1024^3 (4 GiB as float32).
MAX_GRID_VALUES = 1024**3
_HEAD_BYTES = 1 << 20  # headers are looked for in the first MiB


def _off_lines(text: str) -> list[list[str]]:
    lines = []
    for raw in text.splitlines():
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
    lines = _off_lines(path.read_text(errors="replace"))
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
    if min(dims) < 1 or np.prod(dims, dtype=object) > MAX_GRID_VALUES:
        raise ValueError(f"{path}: binvox header declares dim {dims}, outside 1..{MAX_GRID_VALUES} voxels "
                         "(mmldm_voxel.readers.MAX_GRID_VALUES)")
    pairs = np.frombuffer(raw[end + 6 :], dtype=np.uint8)
    pairs = pairs[: len(pairs) // 2 * 2].reshape(-1, 2)
    runs = pairs[:, 1].astype(np.int64)
    if runs.sum() != np.prod(dims):  # checked before decoding: runs of 255 expand the data 127 times
        raise ValueError(f"{path}: binvox data decodes to {runs.sum()} voxels, header says {dims}")
    values = np.repeat(pairs[:, 0], runs)
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


def _count(n: int, name: str) -> str:
    plural = {"vertex": "vertices", "face": "faces", "edge": "edges", "point": "points"}.get(name, f"'{name}' elements")
    return f"{n} {name if n == 1 and name in ('vertex', 'face', 'edge', 'point') else plural}"


def _too_short(size: int, start: int) -> str:
    return f"the file has {size} bytes" + (f" ({size - start} after its header)" if start else "")


def _check_counts(path: Path, counts: dict[str, int], need: int, size: int, start: int, encoding: str) -> None:
    """Raise ``ValueError`` when a header's element ``counts`` need at least ``need`` bytes of ``encoding``
    data after byte ``start`` of a file of ``size`` bytes, or when a count is negative or above
    :data:`MAX_ELEMENTS`."""
    what = ", ".join(_count(n, name) for name, n in counts.items())
    if min(counts.values(), default=0) < 0:
        raise ValueError(f"{path}: header declares {what}: a negative count")
    if need > size - start:
        raise ValueError(f"{path}: header declares {what} (at least {need} bytes of {encoding} data) but "
                         f"{_too_short(size, start)}")
    if max(counts.values(), default=0) > MAX_ELEMENTS:
        raise ValueError(f"{path}: header declares {what}, more than the limit of {MAX_ELEMENTS} "
                         "(mmldm_voxel.readers.MAX_ELEMENTS)")


_PLY_BYTES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
              "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}


def _check_ply(path: Path, head: bytes, size: int) -> None:
    """Element counts of a PLY header against the bytes after it: an ascii value takes at least 2 bytes
    (digit and separator), a binary one its type's size (a list at least its count)."""
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file (no 'ply' ... 'end_header' header in the first {len(head)} bytes)")
    encoding, counts, per_element = "ascii", {}, {}
    for tokens in (line.split() for line in head[:end].decode("ascii", "replace").splitlines()):
        if tokens[:1] == ["format"] and len(tokens) > 1:
            encoding = tokens[1]
        elif tokens[:1] == ["element"] and len(tokens) > 2:
            counts[tokens[1]], per_element[tokens[1]] = int(tokens[2]), 0
        elif tokens[:1] == ["property"] and len(tokens) > 2 and per_element:
            kind = tokens[2] if tokens[1] == "list" else tokens[1]
            per_element[list(per_element)[-1]] += 2 if encoding == "ascii" else _PLY_BYTES.get(kind, 1)
    need = sum(counts[name] * per_element[name] for name in counts)
    start = head.find(b"\n", end) + 1 or end + len(b"end_header")
    _check_counts(path, counts, need - (encoding == "ascii"), size, start, encoding)  # ascii: last newline optional


def _check_off(path: Path, head: bytes, size: int) -> None:
    """Vertex and face counts of an OFF header: a vertex line takes at least 6 bytes, a face 2."""
    lines = _off_lines(head.decode("ascii", "replace"))
    keyword = lines[0][0] if lines else ""
    at = keyword.upper().find("OFF")
    if at < 0 or "n" in keyword[:at] or "4" in keyword[:at]:  # not OFF, or nOFF/4OFF (other layouts): no check
        return
    counts = [t for t in [keyword[at + 3 :]] + lines[0][1:] if t] or (lines[1] if len(lines) > 1 else [])
    try:
        n_vertices, n_faces = int(counts[0]), int(counts[1])
    except (IndexError, ValueError):
        return  # read_off names the malformed header
    _check_counts(path, {"vertex": n_vertices, "face": n_faces}, 6 * n_vertices + 2 * n_faces - 1, size, 0, "text")


def _check_pcd(path: Path, head: bytes, size: int) -> None:
    """The POINTS of a PCD header: an ascii value takes at least 2 bytes, a binary one its SIZE."""
    fields: dict[str, list[str]] = {}
    start = 0
    for line in head.split(b"\n"):
        start += len(line) + 1
        tokens = line.decode("ascii", "replace").split()
        if tokens:
            fields[tokens[0].upper()] = tokens[1:]
        if tokens[:1] == ["DATA"]:
            break
    try:
        points = int(fields["POINTS"][0])
        counts = [int(c) for c in fields.get("COUNT", ["1"] * len(fields["SIZE"]))]
        per_point = sum(int(b) * c for b, c in zip(fields["SIZE"], counts))
    except (KeyError, IndexError, ValueError):
        return  # open3d rejects a header without them
    encoding = (fields.get("DATA") or ["ascii"])[0]
    need = {"ascii": 2 * sum(counts) * points - 1, "binary": per_point * points}.get(encoding, 0)
    _check_counts(path, {"point": points}, need, size, 0 if encoding == "ascii" else start, encoding)


def _check_array(path: str, f, size: int) -> None:  # type: ignore[no-untyped-def]
    """The shape in the npy header read from ``f`` against the ``size`` bytes of the file (or zip member)."""
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0), (3, 0)):
        return  # np.load names the unsupported version
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    values = int(np.prod(shape, dtype=object))
    need = values * dtype.itemsize
    if need > size - f.tell():
        raise ValueError(f"{path}: header declares shape {shape} of {dtype} ({need} bytes) but "
                         f"{_too_short(size, f.tell())}")
    if values > MAX_GRID_VALUES:
        raise ValueError(f"{path}: header declares shape {shape}: {values} values, more than the limit of "
                         f"{MAX_GRID_VALUES} (mmldm_voxel.readers.MAX_GRID_VALUES)")


def _check_arrays(path: Path, head: bytes, size: int) -> None:
    """Every ``.npy`` header of an npy file or npz archive (zip members against their stored size)."""
    if not head.startswith(b"PK"):
        with open(path, "rb") as f:
            return _check_array(str(path), f, size)
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.filename.endswith(".npy"):
                with archive.open(info) as f:
                    _check_array(f"{path}[{info.filename}]", f, info.file_size)


def check_declared_sizes(path: Path) -> None:
    """Raise ``ValueError`` naming ``path`` when its header (PLY, OFF, PCD, npy/npz) declares more data than
    the file holds or more than :data:`MAX_ELEMENTS` / :data:`MAX_GRID_VALUES`; reads the first MiB only."""
    check = {".ply": _check_ply, ".off": _check_off, ".pcd": _check_pcd, ".npy": _check_arrays,
             ".npz": _check_arrays}.get(path.suffix.lower())
    if check is not None:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
        check(path, head, path.stat().st_size)


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

    Raises ``ValueError`` naming the file for anything unusable: no regular file,
    a header declaring more data than the file holds or than the limits
    (:func:`check_declared_sizes`), unreadable or truncated content (whatever the
    parsing library raised), non-finite
    coordinates or grid values, and a result with no occupied voxel (an empty
    grid is never returned in place of a shape).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type '{suffix}', expected one of {SUFFIXES}")
    problem = path_problem(path)  # a FIFO would block the reader
    if problem is not None:
        raise ValueError(f"{path}: {problem}")
    try:
        check_declared_sizes(path)
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
