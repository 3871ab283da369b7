"""Hostile data files: a header that claims more data than the file holds, a caption that is not UTF-8,
absurd or non-finite samples, a FIFO, a 16-bit picture, symlink loops and dangling links.

Each must leave the run alive and the good files loaded, and be named in the loader's one warning
("skipped N unreadable file(s): path (reason); ...") with a reason saying what is wrong, counted in N.
(Randomly damaged files: test_fuzz.py.)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmldm_audio.config import AudioConfig
from mmldm_audio.modality import AudioModality
from mmldm_audio.sources import load_folder as load_audio_folder
from mmldm_image.config import ImageConfig
from mmldm_image.modality import ImageModality
from mmldm_image.sources import load_folder as load_image_folder
from mmldm_voxel.data import folder_data
from mmldm_voxel.readers import load_grid

LOGGERS = ("mmldm_audio.sources", "mmldm_image.sources", "mmldm_voxel.data")


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def skipped(self) -> str:
        """The loader's one "skipped ..." warning."""
        [message] = [m for m in self.messages if "unreadable file(s)" in m]
        return message


@pytest.fixture
def warnings():
    """The warnings of the three folder loaders (handlers on their loggers: immune to logging setups)."""
    handler = _Warnings()
    for name in LOGGERS:
        logging.getLogger(name).addHandler(handler)
    yield handler
    for name in LOGGERS:
        logging.getLogger(name).removeHandler(handler)


def _write_wav(path: Path, wave: np.ndarray) -> None:
    sf.write(path, wave.astype(np.float32), 8000, subtype="FLOAT")


def _tone(n: int = 4000) -> np.ndarray:
    return 0.5 * np.sin(np.arange(n) / 5)


def _good_grid() -> np.ndarray:
    grid = np.zeros((8, 8, 8), np.uint8)
    grid[2:6, 2:6, 2:6] = 1
    return grid


def _good_file(kind: str, root: Path) -> None:
    """One readable file of ``kind`` (audio, image, voxel) in ``root``."""
    if kind == "audio":
        _write_wav(root / "0_good.wav", _tone())
    elif kind == "image":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / "good.png")
    else:
        np.save(root / "good.npy", _good_grid())


def _load(kind: str, root: Path) -> int:
    """Items the ``kind`` folder loader reads from ``root``."""
    if kind == "audio":
        return len(load_audio_folder(root, 8000, r"^(\d+)_").waves)
    if kind == "image":
        return len(load_image_folder(root, 16, 3).images)
    return len(folder_data(root, {"resolution": 8}, root.parent / "cache").grids)


def _assert_skipped(message: str, count: int, name: str, *reason: str) -> None:
    assert f"skipped {count} unreadable file(s)" in message, message
    entry = next((part for part in message.split("unreadable file(s): ", 1)[1].split("; ") if part.startswith(f"{name} (")), None)
    assert entry is not None, f"{name} is not named in: {message}"
    for words in reason:
        assert words in entry, f"reason of {name} lacks {words!r}: {entry}"


# ---------------------------------------------------------------------------- declared sizes (voxel)
def _huge_ply() -> bytes:
    head = ("ply\nformat ascii 1.0\nelement vertex 2000000000\nproperty float x\nproperty float y\nproperty float z\n"
            "element face 1\nproperty list uchar int vertex_indices\nend_header\n").encode()
    return head + b"0 0 0\n" * ((200 - len(head)) // 6)


def test_ply_header_claiming_2e9_vertices_is_skipped_before_allocating(tmp_path, warnings):
    root = tmp_path / "data"
    root.mkdir()
    _good_file("voxel", root)
    (root / "huge.ply").write_bytes(_huge_ply())
    size = (root / "huge.ply").stat().st_size
    assert _load("voxel", root) == 1
    _assert_skipped(warnings.skipped(), 1, "huge.ply", "2000000000 vertices", f"the file has {size} bytes")
    with pytest.raises(ValueError, match=r"huge\.ply: header declares 2000000000 vertices"):
        load_grid(root / "huge.ply", 8)


def test_npy_header_claiming_1e12_elements_is_skipped_before_allocating(tmp_path, warnings):
    root = tmp_path / "data"
    root.mkdir()
    _good_file("voxel", root)
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (10000, 10000, 10000), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"  # padded to 64 bytes, as numpy writes it
    (root / "huge.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
                                    + b"\x01" * 64)
    size = (root / "huge.npy").stat().st_size
    assert _load("voxel", root) == 1
    _assert_skipped(warnings.skipped(), 1, "huge.npy", "(10000, 10000, 10000)", "1000000000000 bytes",
                    f"the file has {size} bytes (64 after its header)")


# ---------------------------------------------------------------------------- captions
@pytest.mark.parametrize("kind", ["audio", "voxel"])
def test_caption_that_is_not_utf8_is_named_and_the_item_kept(tmp_path, warnings, kind):
    root = tmp_path / "data"
    root.mkdir()
    _good_file(kind, root)
    stem = "0_good" if kind == "audio" else "good"
    (root / f"{stem}.txt").write_bytes("un caf\u00e9 bruyant".encode("latin-1"))  # 0xe9: not UTF-8
    assert _load(kind, root) == 1
    _assert_skipped(warnings.skipped(), 1, f"{stem}.txt", "not UTF-8", "byte 0xe9 at position 6")


# ---------------------------------------------------------------------------- samples (audio)
def _audio_modality(root: Path) -> AudioModality:
    cfg = AudioConfig(source="folder", root=str(root), sample_rate=8000, n_fft=256, hop_length=64, n_mels=16,
                      num_frames=16, val_fraction=0.0)
    return AudioModality(cfg)


@pytest.mark.parametrize("value,reason", [
    (1e30, ("sample 2000 (channel 0) is 1e+30, beyond ±16",)),
    (np.nan, ("non-finite samples",)),  # the wording tests/test_audio.py pins
    (-np.inf, ("non-finite samples",)),
])
def test_absurd_or_non_finite_samples_skip_the_file_before_statistics(tmp_path, warnings, value, reason):
    root = tmp_path / "data"
    root.mkdir()
    _write_wav(root / "0_good.wav", _tone())
    _write_wav(root / "1_also_good.wav", _tone()[::-1])
    bad = _tone()
    bad[2000] = value  # inside the centred crop the statistics see
    _write_wav(root / "2_bad.wav", bad)
    modality = _audio_modality(root)
    stats = modality.stats
    assert all(np.isfinite(v.numpy()).all() for v in stats.values())
    items = modality.dataset("train")
    assert len(items) == 2 and all(np.isfinite(items[i]["x"].numpy()).all() for i in range(2))
    _assert_skipped(warnings.skipped(), 1, "2_bad.wav", *reason)


# ---------------------------------------------------------------------------- paths that are not regular files
@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind,name", [("audio", "1_x.wav"), ("image", "x.png"), ("voxel", "x.npy")])
def test_fifo_is_skipped_not_opened(tmp_path, warnings, kind, name):
    root = tmp_path / "data"
    root.mkdir()
    _good_file(kind, root)
    os.mkfifo(root / name)  # opening it for reading would block until a writer comes: none does
    assert _load(kind, root) == 1
    _assert_skipped(warnings.skipped(), 1, name, "not a regular file (FIFO)")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind,suffix", [("audio", ".wav"), ("image", ".png"), ("voxel", ".npy")])
def test_symlink_loops_are_counted(tmp_path, warnings, kind, suffix):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    _good_file(kind, root / "sub")
    os.symlink(f"1_loop{suffix}", root / f"1_loop{suffix}")  # a link to itself
    os.symlink("..", root / "sub" / "up")  # a folder link back to its parent
    assert _load(kind, root) == 1
    message = warnings.skipped()
    _assert_skipped(message, 2, f"1_loop{suffix}", "symlink loop")
    _assert_skipped(message, 2, "sub/up", "symlink loop", "'.'")


@pytest.mark.parametrize("kind,suffix", [("audio", ".wav"), ("image", ".png"), ("voxel", ".npy")])
def test_dangling_links_are_counted(tmp_path, warnings, kind, suffix):
    root = tmp_path / "data"
    root.mkdir()
    _good_file(kind, root)
    os.symlink(f"moved_away{suffix}", root / f"1_gone{suffix}")
    os.symlink("/nonexistent/class_b", root / "class_b")  # a whole class folder lost
    assert _load(kind, root) == 1
    message = warnings.skipped()
    _assert_skipped(message, 2, f"1_gone{suffix}", "dangling symlink", f"moved_away{suffix}")
    _assert_skipped(message, 2, "class_b", "dangling symlink", "/nonexistent/class_b")


# ---------------------------------------------------------------------------- pixel depth (image)
def test_16_bit_png_is_scaled_by_its_own_range(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    Image.fromarray(np.full((20, 20), 32768, np.uint16)).save(root / "grey16.png")  # mode I;16
    Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(root / "white16.png")
    assert Image.open(root / "grey16.png").mode == "I;16"
    images = load_image_folder(root, 16, 3).images  # sorted: grey16, white16
    assert np.abs(images[0].astype(int) - 128).max() <= 1 and (images[1] == 255).all()
    modality = ImageModality(ImageConfig(source="folder", root=str(root), size=16, val_fraction=0.0))
    x = modality.dataset("train")[0]["x"]  # in [-1, 1]: mid-grey is 0 (half-way), white 1
    assert x.shape == (3, 16, 16) and x.abs().max() < 0.01, float(x.mean())


def test_statistics_name_the_clip_that_would_make_them_nan(tmp_path, monkeypatch):
    """The last guard: were a 1e30 sample let through (bound lifted), the statistics would be NaN; the
    modality refuses to compute them and names the file."""
    import mmldm_audio.sources

    monkeypatch.setattr(mmldm_audio.sources, "MAX_ABS_SAMPLE", np.inf)
    root = tmp_path / "data"
    root.mkdir()
    _write_wav(root / "0_good.wav", _tone())
    bad = _tone()
    bad[2000] = 1e30
    _write_wav(root / "1_bad.wav", bad)
    with pytest.raises(ValueError, match=r"non-finite log-mel in 1 training clip\(s\) \(1_bad.wav\)"):
        _audio_modality(root).stats
