"""Data helpers shared by modality plugins: the train/val split, the report of skipped files, and
listing a data folder and reading caption sidecars so that no path is left out unnamed.

Torch-free (numpy only), so a plugin's data code can use it anywhere.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

SPLITS = ("train", "val")


def check_split(split: str) -> None:
    """Raise ``ValueError`` unless ``split`` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}': expected one of {', '.join(SPLITS)}")


def split_indices(n: int, val_fraction: float, split: str, seed: int = 0, shuffle: bool = True) -> np.ndarray:
    """Indices (int64) of ``split`` (``"train"`` or ``"val"``) among ``n`` items.

    The convention every modality shares:

    * the items are ordered by a permutation drawn from ``numpy.random.default_rng(seed)``
      (``shuffle=True``, so e.g. class folders mix across splits) or kept in their own
      order (``shuffle=False``: val is then the tail of the data, in file order);
    * val is the **last** ``n_val = round(n * val_fraction)`` items of that order, train
      the others; both keep that order (neither is sorted);
    * ``n_val`` is at least 1 when ``val_fraction > 0`` and ``n > 1``, and at most ``n - 1``
      (train is never empty); with ``n <= 1`` or ``val_fraction == 0`` val is empty;
    * the result depends only on ``(n, val_fraction, seed, shuffle)``: the same call
      always returns the same indices, and the two splits partition ``range(n)``.

    Args:
        n (`int`): number of items.
        val_fraction (`float`): fraction of the items held out for validation, in [0, 1).
        split (`str`): ``"train"`` or ``"val"``.
        seed (`int`, defaults to 0): seed of the permutation.
        shuffle (`bool`, defaults to `True`): permute before splitting.
    """
    check_split(split)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    n_val = min(n - 1, max(1, round(n * val_fraction))) if val_fraction > 0 and n > 1 else 0
    return order[n - n_val :] if split == "val" else order[: n - n_val]


@dataclass
class SkippedFiles:
    """Files a data reader could not use, each with the reason, reported in one warning.

    Usage::

        skipped = SkippedFiles()
        for path in files:
            try:
                ...
            except OSError as e:
                skipped.add(path.relative_to(root), e)
        skipped.warn(logger, f"image folder {root}")
    """

    items: list[tuple[str, str]] = field(default_factory=list)  #: ``(path, reason)`` pairs

    def add(self, path: str | Path, reason: str | BaseException) -> None:
        """Record ``path``; an exception becomes ``"<ExceptionType>: <message>"``. Recording the same
        ``(path, reason)`` again changes nothing (e.g. a caption table shared by the files of a folder)."""
        if isinstance(reason, BaseException):
            reason = f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
        if (str(path), reason) not in self.items:
            self.items.append((str(path), reason))

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.items]

    def message(self, what: str) -> str:
        """``"<what>: skipped <count> unreadable file(s): <path> (<reason>); ..."``."""
        listed = "; ".join(f"{path} ({reason})" if reason else path for path, reason in self.items)
        return f"{what}: skipped {self.count} unreadable file(s): {listed}"

    def warn(self, logger: logging.Logger, what: str) -> None:
        """Log one warning on ``logger`` naming every skipped file and the count (nothing when none)."""
        if self.items:
            logger.warning(self.message(what))
            for found in _collectors:
                found.append((what, self))


_collectors: list[list[tuple[str, SkippedFiles]]] = []


@contextlib.contextmanager
def collect_skipped() -> Iterator[list[tuple[str, SkippedFiles]]]:
    """Collect every :meth:`SkippedFiles.warn` of the body as ``(what, skipped)`` pairs (``mmldm prepare``
    reports the files a modality's readers skipped this way, whichever plugin read them)."""
    found: list[tuple[str, SkippedFiles]] = []
    _collectors.append(found)
    try:
        yield found
    finally:
        _collectors.remove(found)


#: How :func:`path_problem` reasons about broken links start; :func:`list_files` counts those whatever their name.
BROKEN_LINK = ("dangling symlink", "symlink loop")
_FILE_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
               (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


def path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a regular file, or ``None`` when it can; never opens it (opening
    a FIFO blocks until a writer comes, so a reader would hang).

    Reasons: ``"dangling symlink to '<target>'"``, ``"symlink loop (...)"``, ``"not a regular file
    (FIFO)"`` (or socket, character device, block device, directory), or the error of ``stat``.
    """
    try:
        mode = path.stat().st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop (too many levels of symbolic links)"
        if isinstance(e, (FileNotFoundError, NotADirectoryError)) and path.is_symlink():
            return f"dangling symlink to '{os.readlink(path)}'"
        return f"{type(e).__name__}: {e.strerror or e}"
    if stat.S_ISREG(mode):
        return None
    return f"not a regular file ({next((kind for test, kind in _FILE_KINDS if test(mode)), 'unknown kind')})"


def list_files(
    root: Path, suffixes: tuple[str, ...], skipped: SkippedFiles, exclude: tuple[str, ...] = ()
) -> list[Path]:
    """Regular files under ``root`` (recursive, sorted) whose lower-cased suffix is in ``suffixes`` and
    whose lower-cased name ends with none of ``exclude`` (e.g. ``(".mask.png",)``).

    Symlinked folders are followed, each folder scanned once. Nothing is left out unnamed: recorded in
    ``skipped`` (paths relative to ``root``) with the reason are

    * paths with such a name that are no regular file: FIFOs, sockets, devices (never opened);
    * every dangling symlink and symlink loop, whatever its name (a dangling link may have been a
      whole class folder);
    * symlinks to a folder already scanned: ``"symlink loop: leads back to '<folder>'"`` when the
      folder holds the link, else ``"symlink to a folder already scanned as '<folder>'"``;
    * folders that cannot be listed.
    """
    scanned = {_folder_key(root): Path(".")}  # (device, inode) of each folder -> its path relative to root
    files: list[Path] = []
    folders, links = [root], []  # real folders are scanned before links, so a link never hides its target
    while folders or links:
        folder = folders.pop() if folders else links.pop(0)
        if folder is not root:
            first = scanned.setdefault(_folder_key(folder), folder.relative_to(root))
            if first != folder.relative_to(root):
                skipped.add(folder.relative_to(root), _revisit_reason(folder, first))
                continue
        try:
            with os.scandir(folder) as entries:
                paths = sorted(Path(entry.path) for entry in entries)
        except OSError as e:
            skipped.add(folder.relative_to(root), e)
            continue
        for path in paths:
            if _is_dir(path):
                (links if path.is_symlink() else folders).append(path)
                continue
            problem = path_problem(path)
            wanted = path.suffix.lower() in suffixes and not path.name.lower().endswith(exclude)
            if problem is None and wanted:
                files.append(path)
            elif problem is not None and (wanted or problem.startswith(BROKEN_LINK)):
                skipped.add(path.relative_to(root), problem)
    return sorted(files)


def _is_dir(path: Path) -> bool:
    """Whether ``path`` is a folder or a link to one (``False`` when ``stat`` fails: :func:`path_problem` says why)."""
    try:
        return stat.S_ISDIR(path.stat().st_mode)
    except OSError:
        return False


def _folder_key(folder: Path) -> tuple[int, int]:
    info = folder.stat()
    return info.st_dev, info.st_ino


def _revisit_reason(link: Path, first: Path) -> str:
    target, parent = link.resolve(), link.parent.resolve()
    if target == parent or target in parent.parents:
        return f"symlink loop: leads back to '{first}'"
    return f"symlink to a folder already scanned as '{first}'"


def read_sidecar_text(path: Path, root: Path, skipped: SkippedFiles) -> str | None:
    """The stripped UTF-8 text of the sidecar ``path`` (e.g. a caption beside a data file), or ``None``
    when there is none.

    A sidecar that exists but cannot be used is recorded in ``skipped`` (relative to ``root``) and
    ``None`` returned, so its item keeps the default caption: text that is not UTF-8 (the reason names
    the first bad byte and its position), a FIFO or other non-regular file (never opened), a read error.
    Dangling links and loops return ``None`` unrecorded: :func:`list_files` counts them.
    """
    if not os.path.lexists(path):
        return None
    problem = path_problem(path)
    if problem is not None:
        if not problem.startswith(BROKEN_LINK):
            skipped.add(path.relative_to(root), problem)
        return None
    try:
        return path.read_bytes().decode("utf-8-sig").strip()
    except UnicodeDecodeError as e:
        skipped.add(path.relative_to(root), f"not UTF-8 text: byte 0x{e.object[e.start]:02x} at position {e.start}; "
                                            "the default caption is used")
    except OSError as e:
        skipped.add(path.relative_to(root), e)
    return None
