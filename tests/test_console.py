"""What a run prints and shows: the demo's output (one line per event, no warnings or advertisements), the
step progress bar, titled sample grids, the EMA copy in eval mode."""

from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmldm.preview import save_samples, tile, titles

REPO = Path(__file__).resolve().parents[1]
#: a tqdm refresh (progress bars are redrawn in place with carriage returns)
BAR = re.compile(r"\d+/[\d?]+ \|.*\[|\d+%\|")
STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\]")


def _lines(output: str) -> list[str]:
    """The output's lines without progress-bar redraws, timestamps removed."""
    lines = []
    for raw in output.splitlines():
        for piece in raw.split("\r"):
            piece = piece.rstrip()
            if piece and not BAR.search(piece):
                lines.append(STAMP.sub("", piece).strip())
    return lines


def test_the_demo_command_prints_one_line_per_event_and_no_warnings(tmp_path):
    # scripts/demo.sh at a tiny size: the same command, the same code path (env.sh finds .venv installed)
    run = tmp_path / "run"
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh"), "trainer.max_steps=3", "modality.num_shapes=40",
         "sample.num_samples=4", "data.batch_size=4", "data.stats_batches=1", f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "default"})  # warnings shown as a user would see them
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    lines = _lines(output)
    assert len(lines) <= 40, "\n".join(lines)
    assert not [line for line in lines if re.search(r"warn|deprecat", line, re.I)], "\n".join(lines)
    assert not [line for line in lines if "Tip:" in line or "litlogger" in line or "FLOPs" in line]
    duplicates = {line for line in lines if lines.count(line) > 1}
    assert not duplicates, duplicates
    assert any("phase 1 (autoencoder): autoencoder (ConvAutoencoder)" in line for line in lines)
    assert re.search(r"autoencoder: step 3/3 \|", output) and re.search(r"diffusion: step 3/3 \|", output)
    assert "Epoch" not in output
    grid = Image.open(run / "samples" / "sample_grid.png")
    assert grid.size[0] > 100


def test_titles_name_the_condition_of_each_sample():
    assert titles({"class": torch.tensor([0, 2, 5])}, 3, ["box", "sphere", "torus"]) == ["box", "torus", "5"]
    assert titles(None, 2) == ["unconditional", "unconditional"]
    assert titles({"text": ["a small red star on the left of the picture"], "class": torch.tensor([1])}, 1,
                  ["a", "b"]) == ["b: a small red star on the l..."]
    assert titles({"mask": torch.zeros(1, 1, 4, 4)}, 1) == ["mask"]


def test_tile_places_images_and_title_strips():
    images = np.stack([np.full((64, 64, 3), v, np.uint8) for v in (10, 20, 30, 40, 50)])
    plain = tile(images)
    assert plain.shape == (2 * 66 + 2, 3 * 66 + 2, 3)  # ceil(sqrt(5)) = 3 per row, 2 rows, 2-pixel gaps
    assert (plain[2:66, 68:132] == 20).all() and (plain[0] == 255).all()
    titled = tile(images, titles=["a", "b", "c", "d", "e"])
    assert titled.shape == (2 * (12 + 66) + 2, 3 * 66 + 2, 3)
    assert (titled[2 + 12 : 2 + 12 + 64, 2:66] == 10).all()
    assert (titled[2:14, 2:66] < 255).any()  # the title's ink
    small = tile(np.zeros((2, 28, 28, 1), np.uint8), titles=["0", "1"])
    assert small.shape[1] == 2 * (84 + 2) + 2  # 28-pixel tiles enlarged 3x so a title fits
    with pytest.raises(ValueError, match="tile got 1 titles for 5 images"):
        tile(images, titles=["a"])
    with pytest.raises(ValueError, match=r"tile expects uint8 images \[B, H, W, C\], got shape \(64, 64, 3\)"):
        tile(images[0])


def test_save_samples_titles_the_grid_and_keeps_older_modalities_working(tmp_path):
    class Legacy:
        class_names = ["zero", "one"]

        def __init__(self):
            self.calls = []

        def save(self, samples, directory, prefix="sample"):
            self.calls.append(prefix)
            return []

    class Titled(Legacy):
        def save(self, samples, directory, prefix="sample", titles=None):
            self.calls.append(titles)
            return []

    samples, cond = torch.zeros(2, 1, 4, 4), {"class": torch.tensor([1, 0])}
    legacy, titled = Legacy(), Titled()
    save_samples(legacy, samples, tmp_path, cond=cond)
    save_samples(titled, samples, tmp_path, cond=cond)
    assert legacy.calls == ["sample"] and titled.calls == [["one", "zero"]]


def test_quiet_console_routes_lightning_through_the_root_logger_and_drops_its_tips():
    from mmldm.training.console import quiet_console

    root = logging.getLogger()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    root.addHandler(handler)
    lightning = logging.getLogger("lightning")
    saved = list(lightning.handlers), lightning.propagate
    try:
        lightning.addHandler(logging.StreamHandler())
        quiet_console()
        assert not [h for h in lightning.handlers if type(h) is logging.StreamHandler] and lightning.propagate
        tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        tips.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
        tips.info("GPU available: False, used: False")  # repeated by every Trainer: the run logs its device itself
        tips.info("Using bfloat16 Automatic Mixed Precision (AMP)")
        assert [r.getMessage() for r in records] == ["Using bfloat16 Automatic Mixed Precision (AMP)"]
    finally:
        root.removeHandler(handler)
        lightning.handlers[:], lightning.propagate = saved


def test_the_ema_copy_stays_in_eval_mode_while_training():
    from mmldm.build import build_conditioners, build_denoiser, build_modality
    from mmldm.configuration import compose
    from mmldm.training.phase2 import DiffusionModule

    cfg = compose(["modality=image", "modality.source=digits", "denoiser.model_channels=16"])
    modality = build_modality(cfg.modality)
    conditioners = build_conditioners(cfg.conditioner, modality, (4, 8, 8))
    module = DiffusionModule.from_config(build_denoiser(cfg.denoiser, (4, 8, 8), conditioners), conditioners,
                                         (4, 8, 8), cfg.diffusion)
    module.train()
    assert module.model.training and not module.ema.training
    assert not any(m.training for m in module.ema.modules())
