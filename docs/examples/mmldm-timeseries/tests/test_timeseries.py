"""Tests of the timeseries plugin: mmldm's modality contract plus checks of its own.

Run them with the plugin installed: ``pytest tests``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmldm.testing import ModalityContract
from mmldm_timeseries.config import TimeSeriesConfig
from mmldm_timeseries.modality import TimeSeriesModality, dominant_cycles


def tiny(**overrides) -> TimeSeriesModality:  # type: ignore[no-untyped-def]
    return TimeSeriesModality(TimeSeriesConfig(name="timeseries", num_samples=24, **overrides))


class TestTimeSeriesModality(ModalityContract):
    """Every check mmldm asks of a modality: layout, items, save, metrics, state."""

    def build(self) -> TimeSeriesModality:
        return tiny()


class TestTwoChannels(ModalityContract):
    def build(self) -> TimeSeriesModality:
        return tiny(channels=2, length=32, max_cycles=12.0)


def test_the_class_is_the_band_of_the_dominant_frequency():
    modality = tiny(num_classes=3)
    data = modality.dataset("train")
    x = torch.stack([data[i]["x"] for i in range(len(data))])
    labels = torch.tensor([data[i]["cond"]["class"] for i in range(len(data))])
    assert set(labels.tolist()) == {0, 1, 2}
    assert torch.equal(modality.band(x), labels)
    assert modality.generation_metrics(x, x, labels)["band_accuracy"] == 1.0


def test_dominant_frequency_of_a_pure_tone():
    t = torch.arange(64) / 64
    tone = torch.sin(2 * torch.pi * 5.5 * t)[None, None]
    assert dominant_cycles(tone).item() == pytest.approx(5.5, abs=1 / 8)


def test_splits_partition_the_series():
    modality = tiny()
    train, val = modality.dataset("train"), modality.dataset("val")
    assert len(train) + len(val) == 24 and len(val) >= 1
    assert not any(torch.equal(val[0]["x"], train[i]["x"]) for i in range(len(train)))


def test_csv_reads_back_to_the_samples(tmp_path):
    modality = tiny(channels=2, length=32, max_cycles=12.0)
    x = torch.stack([modality.dataset("train")[i]["x"] for i in range(3)])
    paths = modality.save(x, tmp_path, prefix="s")
    table = np.loadtxt(tmp_path / "s_0001.csv", delimiter=",", skiprows=1)
    assert (tmp_path / "s_0001.csv").read_text().splitlines()[0] == "t,ch0,ch1"
    np.testing.assert_allclose(table[:, 1:].T, x[1].numpy(), atol=1e-5)
    assert {p.suffix for p in paths} == {".csv", ".png"} and (tmp_path / "s_grid.png").is_file()


def test_bad_band_names_the_values():
    with pytest.raises(ValueError, match=r"max_cycles \(40.0\) < length / 2 \(32.0"):
        tiny(max_cycles=40.0)
