"""Property-based tests: the data loaders of every modality against damaged files.

Valid WAV, PNG, mesh (OFF/OBJ/PLY/STL), binvox and npy files are truncated,
overwritten with random bytes, bit-flipped or padded, and arrays are drawn with
NaN/Inf values and wrong shapes. A loader either returns a usable sample
(finite, of the expected shape, not empty) or rejects the file with a
``ValueError`` that names it; a folder loader skips and counts such files
and keeps the good ones. Examples are derandomized (the same cases every run)
and few, so the file runs in seconds.
"""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from mmldm_audio.sources import load_folder as load_audio_folder
from mmldm_audio.sources import read_audio
from mmldm_image.sources import _read_image
from mmldm_image.sources import load_folder as load_image_folder
from mmldm_voxel.data import folder_data
from mmldm_voxel.readers import load_grid

FUZZ = settings(max_examples=50, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

CUBE_V = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], float)
CUBE_F = np.array([[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4],
                   [2, 3, 7], [2, 7, 6], [1, 2, 6], [1, 6, 5], [0, 4, 7], [0, 7, 3]])


def _wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, (0.5 * np.sin(np.arange(2000) / 5)).astype(np.float32), 8000, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _off(v=CUBE_V, f=CUBE_F) -> bytes:
    lines = [f"OFF\n{len(v)} {len(f)} 0"] + [" ".join(map(str, p)) for p in v] + [f"3 {a} {b} {c}" for a, b, c in f]
    return ("\n".join(lines) + "\n").encode()


def _obj() -> bytes:
    lines = [f"v {a} {b} {c}\n" for a, b, c in CUBE_V] + [f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in CUBE_F]
    return "".join(lines).encode()


def _ply() -> bytes:
    head = ("ply\nformat ascii 1.0\nelement vertex 8\nproperty float x\nproperty float y\nproperty float z\n"
            "element face 12\nproperty list uchar int vertex_indices\nend_header\n")
    body = [f"{a} {b} {c}\n" for a, b, c in CUBE_V] + [f"3 {a} {b} {c}\n" for a, b, c in CUBE_F]
    return (head + "".join(body)).encode()


def _stl() -> bytes:
    lines = ["solid cube"]
    for tri in CUBE_F:
        corners = [f"vertex {a} {b} {c}" for a, b, c in CUBE_V[tri]]
        lines += ["facet normal 0 0 0", "outer loop", *corners, "endloop", "endfacet"]
    return ("\n".join(lines + ["endsolid cube"]) + "\n").encode()


def _binvox() -> bytes:
    return b"#binvox 1\ndim 4 4 4\ntranslate 0 0 0\nscale 1\ndata\n" + bytes([0, 20, 1, 24, 0, 20])


def _npy(grid: np.ndarray | None = None) -> bytes:
    if grid is None:
        grid = np.zeros((8, 8, 8), np.uint8)
        grid[2:6, 2:6, 2:6] = 1
    buf = io.BytesIO()
    np.save(buf, grid)
    return buf.getvalue()


VALID = {"wav": _wav(), "png": _png(), "off": _off(), "obj": _obj(), "ply": _ply(), "stl": _stl(),
         "binvox": _binvox(), "npy": _npy()}


@st.composite
def corrupted(draw, data: bytes) -> bytes:
    """``data`` truncated, overwritten in places, replaced by random bytes, or cut and zero-padded."""
    kind = draw(st.sampled_from(["truncate", "flip", "random", "pad"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "pad":
        cut = draw(st.integers(len(data) // 2, len(data) - 1))
        return data[:cut] + b"\x00" * draw(st.integers(1, 64))
    out = bytearray(data)
    edits = st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), min_size=1, max_size=12)
    for pos, byte in draw(edits):
        out[pos] = byte
    return bytes(out)


def _load(fmt: str, path: Path) -> np.ndarray:
    """One file through its modality's reader, as the array a dataset would hold."""
    if fmt == "wav":
        return read_audio(path, 8000).numpy()
    if fmt == "png":
        return _read_image(path, 16, 3)[0]
    return load_grid(path, 8)


def _check_loaded_or_named(fmt: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"sample.{fmt}"
        path.write_bytes(data)
        try:
            out = _load(fmt, path)
        except ValueError as e:
            if fmt not in ("wav", "png"):  # audio and image readers leave naming the file to the folder loaders
                assert str(path) in str(e), f"error does not name the file: {e}"
            return
    out = np.asarray(out, dtype=np.float64)
    assert out.size and np.isfinite(out).all(), f"{fmt}: a damaged file loaded as a non-finite or empty array"
    assert np.abs(out).max() > 0, f"{fmt}: a damaged file loaded as all zeros"
    assert out.shape == {"wav": out.shape, "png": (16, 16, 3)}.get(fmt, (8, 8, 8))


@pytest.mark.parametrize("fmt", sorted(VALID))
def test_damaged_file_loads_cleanly_or_is_rejected_by_name(fmt):
    _check_loaded_or_named(fmt, VALID[fmt])  # the undamaged file loads

    @FUZZ
    @given(corrupted(VALID[fmt]))
    def check(data):
        _check_loaded_or_named(fmt, data)

    check()


@FUZZ
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6),
                  elements=st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.just(1.0))))
def test_arrays_with_nan_inf_or_wrong_shape_are_rejected(grid):
    """``.npy`` grids: only finite 3D arrays with an occupied voxel load."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.npy"
        path.write_bytes(_npy(grid))
        usable = np.squeeze(grid).ndim == 3 and np.isfinite(grid).all()  # singleton axes are squeezed
        try:
            out = load_grid(path, 8)
        except ValueError as e:
            assert "grid.npy" in str(e)
            return
    assert usable and out.shape == (8, 8, 8) and out.any()


@pytest.mark.parametrize("vertices,faces,reason", [
    (np.zeros((0, 3)), np.zeros((0, 3), int), "no vertices"),
    (CUBE_V, np.zeros((0, 3), int), "no triangles"),
    (np.ones((8, 3)), CUBE_F, "degenerate"),
    (np.where(np.arange(24).reshape(8, 3) == 5, np.nan, CUBE_V), CUBE_F, "NaN"),
    (np.where(np.arange(24).reshape(8, 3) == 5, np.inf, CUBE_V), CUBE_F, "Inf"),
])
def test_empty_and_degenerate_meshes_are_rejected(tmp_path, vertices, faces, reason):
    path = tmp_path / "mesh.off"
    path.write_bytes(_off(vertices, faces))
    with pytest.raises(ValueError, match=rf"mesh\.off.*{reason}"):
        load_grid(path, 8)


def test_empty_grids_are_rejected_not_returned_as_zeros(tmp_path):
    (tmp_path / "zeros.npy").write_bytes(_npy(np.zeros((8, 8, 8), np.uint8)))
    (tmp_path / "zeros.binvox").write_bytes(b"#binvox 1\ndim 4 4 4\ndata\n" + bytes([0, 64]))
    for name in ("zeros.npy", "zeros.binvox"):
        with pytest.raises(ValueError, match=rf"{name}.*empty grid"):
            load_grid(tmp_path / name, 8)


def test_silent_and_nan_audio_are_rejected(tmp_path):
    for name, wave in {"silent": np.zeros(800), "nan": np.full(800, np.nan)}.items():
        sf.write(tmp_path / f"{name}.wav", wave.astype(np.float32), 8000, subtype="FLOAT")
        with pytest.raises(ValueError, match="silent" if name == "silent" else "non-finite"):
            read_audio(tmp_path / f"{name}.wav", 8000)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _folder(fmt: str, damaged: list[bytes]) -> tuple[int, list[str], list[str]]:
    """Load a folder of 3 good files and the ``damaged`` ones: (items loaded, damaged names, warnings)."""
    handler = _Records()
    loggers = [logging.getLogger(n) for n in ("mmldm_audio.sources", "mmldm_image.sources", "mmldm_voxel.data")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for i in range(3):
                (root / f"{i}_good.{fmt}").write_bytes(VALID[fmt])
            names = [f"{i}_bad{i}.{fmt}" for i in range(len(damaged))]
            for name, data in zip(names, damaged):
                (root / name).write_bytes(data)
            if fmt == "wav":
                loaded = load_audio_folder(root, 8000, r"^(\d+)_").waves
                assert all(np.isfinite(w.numpy()).all() and w.abs().max() > 0 for w in loaded)
            elif fmt == "png":
                loaded = load_image_folder(root, 16, 3).images
            else:
                with tempfile.TemporaryDirectory() as cache:
                    data = folder_data(root, {"resolution": 8}, Path(cache))
                loaded = data.grids
                handler.messages.append(data.skipped.message("voxel folder"))
                assert all(g.any() for g in loaded)
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    return len(loaded), names, handler.messages


@pytest.mark.parametrize("fmt", ["wav", "png", "off", "binvox"])
def test_folder_loaders_skip_and_count_damaged_files(fmt):
    """Good files always load; every damaged file is loaded or skipped, and each skipped one is named."""

    @settings(FUZZ, max_examples=10)
    @given(st.lists(corrupted(VALID[fmt]), min_size=1, max_size=4))
    def check(damaged):
        n, names, warnings = _folder(fmt, damaged)
        skipped = [name for name in names if any(name in w for w in warnings)]
        assert n + len(skipped) == 3 + len(damaged), (n, skipped, warnings)
        if skipped:
            assert any(f"skipped {len(skipped)} unreadable file(s)" in w for w in warnings)

    check()
