"""Voxel data: procedural or folder grids, their on-disk cache and the torch Dataset.

A :class:`VoxelData` holds every grid of a source (``[N, R, R, R]``), labels,
captions, class names and the files skipped (with the reason) while reading a folder. Building
it once costs seconds to minutes, so the arrays are cached as ``.npz`` under
a key hashing every setting (and, for folders, each file's path, size and
modification time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mmldm.data import SkippedFiles, read_sidecar_text
from mmldm.data import list_files as list_folder

from .readers import SUFFIXES, load_grid
from .shapes import CLASS_NAMES, generate

logger = logging.getLogger(__name__)
_CACHE_VERSION = 2  # bump when the generated content changes for the same settings
_NO_CLASS = "(none)"


@dataclass
class VoxelData:
    """All grids of one source: ``grids [N, R, R, R]`` (uint8 occupancy or float16 SDF),
    ``labels int64 [N]``, ``captions``, ``class_names`` and the ``skipped`` files (relative paths, reasons)."""

    grids: np.ndarray
    labels: np.ndarray
    captions: list[str]
    class_names: list[str]
    skipped: SkippedFiles = field(default_factory=SkippedFiles)


def default_cache_dir() -> Path:
    """``$MMLDM_CACHE/voxel``, else ``$XDG_CACHE_HOME/mmldm/voxel``, else ``~/.cache/mmldm/voxel``."""
    if os.environ.get("MMLDM_CACHE"):
        return Path(os.environ["MMLDM_CACHE"]) / "voxel"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmldm" / "voxel"


def settings_key(settings: dict[str, Any]) -> str:
    """A short stable hash of JSON-serializable settings."""
    text = json.dumps({"version": _CACHE_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cached(path: Path, build: Callable[[], VoxelData]) -> VoxelData:
    """Load ``path`` if it exists, else ``build()`` and write it atomically (compressed;
    SDF grids kept as float16, enough for values in [-1, 1], and returned as stored)."""
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            skipped = SkippedFiles(list(zip(f["skipped"].tolist(), f["skipped_reasons"].tolist())))
            return VoxelData(f["grids"], f["labels"], f["captions"].tolist(), f["class_names"].tolist(), skipped)
    data = build()
    if data.grids.dtype.kind == "f":
        data.grids = data.grids.astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(
        tmp,
        grids=data.grids,
        labels=data.labels,
        captions=np.asarray(data.captions, dtype=str),
        class_names=np.asarray(data.class_names, dtype=str),
        skipped=np.asarray(data.skipped.paths, dtype=str),
        skipped_reasons=np.asarray([reason for _, reason in data.skipped.items], dtype=str),
    )
    os.replace(tmp, path)
    logger.info("cached %d voxel grids in %s", len(data.grids), path)
    return data


def procedural_data(settings: dict[str, Any], cache_dir: Path) -> VoxelData:
    """Procedural shapes for ``settings`` (num_shapes, seed, resolution, representation, sdf_truncation)."""
    def build() -> VoxelData:
        grids, labels, captions = generate(**settings)
        return VoxelData(grids, labels, captions, list(CLASS_NAMES))

    return cached(cache_dir / f"procedural-{settings_key(settings)}.npz", build)


def list_files(root: Path, skipped: SkippedFiles | None = None) -> list[Path]:
    """Supported regular files under ``root`` (recursive, sorted); the paths left out (FIFOs and other
    non-regular files, dangling links, symlink loops) are recorded in ``skipped`` with the reason
    (see :func:`mmldm.data.list_files`)."""
    if not root.is_dir():
        raise FileNotFoundError(f"voxel data root '{root}' is not a directory")
    return list_folder(root, SUFFIXES, SkippedFiles() if skipped is None else skipped)


def class_of(path: Path, root: Path) -> str:
    """The class of a file: its top-level sub-folder under ``root`` (``(none)`` for files in ``root``)."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else _NO_CLASS


def folder_class_names(files: list[Path], root: Path) -> list[str]:
    """Sorted class names; empty when no file sits in a sub-folder (unconditional data)."""
    names = sorted({class_of(p, root) for p in files})
    return [] if names == [_NO_CLASS] else names


def caption_of(path: Path, class_name: str, root: Path | None = None, skipped: SkippedFiles | None = None) -> str:
    """Caption of a file: ``<stem>.txt`` beside it, else ``captions.json`` in its folder
    (``{stem or file name: caption}``), else ``"a <class>"`` (empty without a class).

    A sidecar that is not UTF-8, not a regular file, or (``captions.json``) not a JSON object is
    recorded in ``skipped`` (relative to ``root``, default the file's folder) and not used.
    """
    root = path.parent if root is None else root
    skipped = SkippedFiles() if skipped is None else skipped
    text = read_sidecar_text(path.with_suffix(".txt"), root, skipped)
    if text is not None:
        return text
    table = path.parent / "captions.json"
    text = read_sidecar_text(table, root, skipped)
    captions = {} if text is None else _caption_table(text, table.relative_to(root), skipped)
    for key in (path.stem, path.name):
        if key in captions:
            return str(captions[key])
    return "" if class_name == _NO_CLASS else f"a {class_name.replace('_', ' ')}"


def _caption_table(text: str, name: Path, skipped: SkippedFiles) -> dict:
    """The ``{stem or file name: caption}`` object of a ``captions.json``; ``{}`` (recorded) when it is not one."""
    try:
        captions = json.loads(text)
    except json.JSONDecodeError as e:
        skipped.add(name, f"not valid JSON ({e})")
        return {}
    if not isinstance(captions, dict):
        skipped.add(name, "not a JSON object {file stem or name: caption}")
        return {}
    return captions


def _read_folder(root: Path, files: list[Path], **settings: Any) -> VoxelData:
    names = folder_class_names(files, root)
    grids, labels, captions, skipped = [], [], [], SkippedFiles()
    for path in files:
        try:
            grids.append(load_grid(path, **settings))
        except (ValueError, OSError, RuntimeError) as e:
            skipped.add(path.relative_to(root), e)
            continue
        cls = class_of(path, root)
        labels.append(names.index(cls) if names else 0)
        captions.append(caption_of(path, cls, root, skipped))
    if not grids:
        raise ValueError(skipped.message(f"no readable voxel data under '{root}'"))
    return VoxelData(np.stack(grids), np.asarray(labels, dtype=np.int64), captions, names, skipped)


def folder_data(root: str | Path, settings: dict[str, Any], cache_dir: Path) -> VoxelData:
    """Grids of every supported file under ``root``; ``settings`` are :func:`load_grid`'s keywords.
    Unreadable files, unusable captions and the paths the folder scan leaves out (non-regular files,
    dangling links, symlink loops: found again on every call, not cached) are skipped with one warning
    naming each (repeated when read from the cache)."""
    root = Path(root).resolve()
    listed = SkippedFiles()
    files = list_files(root, listed)
    if not files:
        what = f"no voxel data under '{root}': expected files ending in {', '.join(SUFFIXES)}"
        raise ValueError(listed.message(what) if listed.count else what)
    stamp = [(str(p.relative_to(root)), p.stat().st_mtime_ns, p.stat().st_size) for p in files]
    key = settings_key({"root": str(root), "files": stamp, **settings})
    data = cached(cache_dir / f"folder-{key}.npz", lambda: _read_folder(root, files, **settings))
    data.skipped = SkippedFiles(listed.items + data.skipped.items)
    data.skipped.warn(logger, f"voxel data under {root} ({len(files)} files)")
    return data


class VoxelDataset(torch.utils.data.Dataset):
    """Items ``{"x": FloatTensor [1, R, R, R], "cond": {"class": int, "text": str}}``.

    ``x`` is occupancy in {0, 1} (float) or a truncated SDF in [-1, 1]; ``class``
    is omitted when the data has no classes. With ``fold_depth`` ``x`` is
    ``[R, R, R]``: the first grid axis becomes the channels of a 2D sample.
    """

    def __init__(self, data: VoxelData, indices: np.ndarray, fold_depth: bool = False):
        self.data, self.indices, self.fold_depth = data, np.asarray(indices), fold_depth

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(self.indices[i])
        x = torch.from_numpy(np.asarray(self.data.grids[j], dtype=np.float32))
        x = x if self.fold_depth else x[None]  # (R, R, R) or (1, R, R, R)
        cond: dict[str, Any] = {"text": self.data.captions[j]}
        if self.data.class_names:
            cond["class"] = int(self.data.labels[j])
        return {"x": x, "cond": cond}
