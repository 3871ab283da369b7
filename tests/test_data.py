"""The shared train/val split and skipped-file report of :mod:`mmldm.data`."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

from mmldm.data import SkippedFiles, split_indices


@pytest.mark.parametrize("n,fraction,n_val", [(50, 0.2, 10), (10, 0.01, 1), (2, 0.9, 1), (1, 0.5, 0), (7, 0.0, 0)])
def test_split_sizes_partition_and_determinism(n, fraction, n_val):
    val, train = (split_indices(n, fraction, s, seed=3) for s in ("val", "train"))
    assert len(val) == n_val and len(train) == n - n_val
    assert sorted([*val, *train]) == list(range(n))
    assert np.array_equal(val, split_indices(n, fraction, "val", seed=3))


def test_val_is_the_tail_of_the_seeded_order():
    order = np.random.default_rng(5).permutation(20)
    assert np.array_equal(split_indices(20, 0.25, "val", seed=5), order[15:])
    assert np.array_equal(split_indices(20, 0.25, "train", seed=5), order[:15])
    assert not np.array_equal(split_indices(20, 0.25, "val", seed=6), order[15:])
    assert split_indices(20, 0.25, "val", shuffle=False).tolist() == list(range(15, 20))


def test_split_errors_name_the_value():
    with pytest.raises(ValueError, match="unknown split 'test': expected one of train, val"):
        split_indices(4, 0.5, "test")
    with pytest.raises(ValueError, match=r"val_fraction=1.0 must be in \[0, 1\)"):
        split_indices(4, 1.0, "val")


def test_skipped_files_one_warning_naming_each(caplog):
    skipped = SkippedFiles()
    logger = logging.getLogger("mmldm.test_data")
    skipped.warn(logger, "nothing")
    assert not caplog.records
    skipped.add("a/broken.png", OSError("truncated"))
    skipped.add("b.wav", ValueError())
    skipped.add("c.obj", "not a mesh")
    assert skipped.count == 3 and skipped.paths == ["a/broken.png", "b.wav", "c.obj"]
    skipped.warn(logger, "folder /data")
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.getMessage() == (
        "folder /data: skipped 3 unreadable file(s): a/broken.png (OSError: truncated); b.wav (ValueError); "
        "c.obj (not a mesh)"
    )


def test_imports_without_torch():
    code = "import sys, mmldm.data; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
