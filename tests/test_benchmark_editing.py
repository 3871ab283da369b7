"""The editing benchmark's own functions: masks, the interpolation baseline, statistics and the report."""

from __future__ import annotations

import json
import math

import pytest
import torch

editing = pytest.importorskip("benchmarks.editing")


def _ball(r: int = 16, radius: float = 5.0, centre: tuple[float, float, float] = (6.0, 8.0, 9.0)) -> torch.Tensor:
    idx = torch.stack(torch.meshgrid(*[torch.arange(r, dtype=torch.float32)] * 3, indexing="ij"), -1)
    return ((idx - torch.tensor(centre)).norm(dim=-1) <= radius).float()


def test_plane_mask_removes_about_half_and_is_deterministic() -> None:
    ball = _ball()
    shares = []
    for seed in range(20):
        mask = editing.plane_mask(ball, seed)
        assert mask.shape == ball.shape and set(mask.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(mask, editing.plane_mask(ball, seed))  # deterministic by seed
        shares.append(float((mask * ball).sum() / ball.sum()))
    # a plane through the centroid of a ball halves it (up to voxels on the plane)
    assert all(0.35 < s < 0.65 for s in shares), shares
    assert not torch.equal(editing.plane_mask(ball, 0), editing.plane_mask(ball, 1))
    # both sides get removed across seeds: the removed half's centroid lies on either side of the ball's centre
    idx = torch.stack(torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij"), -1)
    signs = set()
    for seed in range(20):
        m = editing.plane_mask(ball, seed).bool() & ball.bool()
        signs.add(bool((idx[m].mean(0) - torch.tensor([6.0, 8.0, 9.0]))[0] > 0))
    assert signs == {True, False}


def test_plane_mask_of_an_empty_grid_cuts_through_the_centre() -> None:
    mask = editing.plane_mask(torch.zeros(8, 8, 8), 3)
    assert 0.3 < float(mask.mean()) < 0.7


def test_gap_frames_and_time_mask() -> None:
    # FSDD: 8 kHz, hop 128 -> 62.5 frames/s; 0.25 s -> 16 frames, centred in 64
    assert editing.gap_frames(64, 8000, 128) == (24, 40)
    assert editing.gap_frames(64, 16000, 256, 0.5) == (16, 47)  # 31.25 frames -> 31
    mask = editing.time_mask((1, 8, 64), 24, 40)
    assert mask.shape == (1, 8, 64)
    assert mask[..., 24:40].eq(1).all() and mask[..., :24].eq(0).all() and mask[..., 40:].eq(0).all()
    with pytest.raises(ValueError):
        editing.gap_frames(8, 8000, 128, 1.0)


def test_interpolation_is_exact_on_a_linear_ramp() -> None:
    t = torch.arange(64, dtype=torch.float64)
    ramp = torch.stack([0.5 * t - 3, -2.0 * t + 1, 0 * t + 7])[None]  # [1, 3 bins, 64 frames]
    holed = ramp.clone()
    holed[..., 24:40] = -11.5  # silence in the gap
    filled = editing.interpolate_gap(holed, 24, 40)
    assert torch.allclose(filled, ramp)
    assert torch.equal(filled[..., :24], holed[..., :24]) and torch.equal(filled[..., 40:], holed[..., 40:])


def test_lower_half_mask_and_iou() -> None:
    m = editing.lower_half_mask((1, 32, 32))
    assert m.shape == (1, 32, 32) and m[:, :16].eq(0).all() and m[:, 16:].eq(1).all()
    a = torch.zeros(2, 1, 4, 4, 4)
    b = torch.zeros(2, 1, 4, 4, 4)
    a[0, 0, :2] = 1
    b[0, 0, :1] = 1
    assert editing.iou(a, b).tolist() == [0.5, 1.0]  # both empty: 1


def test_partial_input_removes_the_benchmarks_part() -> None:
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    partial, mask = editing.partial_input("mnist", None, x)
    assert mask.shape == (3, 1, 28, 28) and mask[:, :, 14:].eq(1).all() and mask[:, :, :14].eq(0).all()
    assert torch.equal(partial[:, :, :14], x[:, :, :14]) and partial[:, :, 14:].eq(editing.BACKGROUND).all()
    data = editing.PartialDataset([{"x": x[i], "cond": {"class": i}} for i in range(3)], "mnist", None)
    assert len(data) == 3 and data[2]["cond"] == {"class": 2} and torch.equal(data[2]["x"], partial[2])
    with pytest.raises(ValueError, match="no partial input of the 'cloud' data"):
        editing.partial_input("cloud", None, x)


def test_voxel_partial_input_cuts_each_grid_by_its_seeds_plane() -> None:
    class Grids:  # the voxel modality's finalize: occupancy 0/1
        def finalize(self, x: torch.Tensor) -> torch.Tensor:
            return (x > 0.5).float()

    x = torch.zeros(2, 1, 8, 8, 8)
    x[:, :, 2:6, 2:6, 2:6] = 1
    partial, mask = editing.partial_input("voxel", Grids(), x, [3, 4])
    assert mask.shape == (2, 1, 8, 8, 8)
    assert torch.equal(mask[0, 0], editing.plane_mask(x[0, 0], 3)) and torch.equal(mask[1, 0], editing.plane_mask(x[1, 0], 4))
    assert torch.equal(partial, x * (1 - mask)) and 0 < float(partial.sum()) < float(x.sum())
    data = editing.PartialDataset([{"x": x[i], "cond": {"class": i}} for i in range(2)], "voxel", Grids())
    expected = x[1, 0] * (1 - editing.plane_mask(x[1, 0], editing.PARTIAL_SEED + 1))
    assert torch.equal(data[1]["x"][0], expected) and data[1]["cond"] == {"class": 1}
    # a saved reference classifier of other cuts does not match the voxel recipe, mnist and fsdd keep theirs
    assert str(editing.PARTIAL_SEED) in editing.partial_variant("voxel") and editing.partial_variant("mnist") == "partial input"
    with pytest.raises(ValueError, match="one plane seed per item: 2 items, 1 seeds"):
        editing.partial_input("voxel", Grids(), x, [3])


def test_mean_interval_is_a_t_interval() -> None:
    m = editing.mean_interval([1.0, 2.0, 3.0, 4.0])
    assert m["n"] == 4 and m["mean"] == 2.5
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2  # t(0.975, 3) * sd / sqrt(n)
    assert m["low"] == pytest.approx(2.5 - half) and m["high"] == pytest.approx(2.5 + half)
    assert "n=4" in editing.format_mean(m)


def _results(task: str) -> dict:
    mean = editing.mean_interval([0.5, 0.6, 0.7])
    judge = editing.share(torch.tensor([True, True, False, True]))
    base = {"settings": {"task": task, "n": 3, "seed": 0, "sampler": "dpmpp_2m", "steps": 25,
                         "budget": ["phase1.max_steps=1"], "note": None, "overrides": ["modality=x"]},
            "training": {"wall_seconds": 60.0, "diffusion_steps": 10, "autoencoder_reconstruction": {"iou": 0.9}},
            "judge": {"val_accuracy": 0.98, "epochs": 20}, "real": {"judge": judge}, "headline": "a",
            "targets": {"target one": True, "target two": False}}
    if editing.TASKS[task].base != "voxel":
        base["partial_reference"] = {"accuracy": judge, "p_true": mean, "classifier": {"val_accuracy": 0.947}}
    base_task = editing.TASKS[task].base
    if base_task == "voxel":
        row = {"iou": mean, "iou_removed_half": mean, "judge": judge, "seconds": 1.0}
        base.update(removed_share=mean, best_baseline="b", methods={"b": {**row, "seconds": None},
                                                                     "a": {**row, "gain_over_best_baseline": mean}})
    elif base_task == "mnist":
        base.update(picture_rows=["masked input", "a", "ground truth"],
                    methods={"a": {"judge": judge, "seconds": 2.0, "l1_removed_half": mean}})
    else:
        row = {"logmel_l1_gap": mean, "spectral_convergence_gap": mean, "judge": judge, "seconds": 3.0}
        base.update(gap={"start": 24, "stop": 40, "frames": 16, "seconds": 0.256, "frame_rate": 62.5, "clip_frames": 64},
                    interpolation="i", methods={"i": {**row, "seconds": None},
                                                "a": {**row, "l1_minus_interpolation": mean,
                                                      "judge_minus_uncut": {"value": -0.02, "ci": [-0.06, 0.03]}}})
    return base


@pytest.mark.parametrize("task", sorted(editing.TASKS))
def test_report_formats_every_task(task: str) -> None:
    text = editing.report(_results(task))
    trained = task.endswith("_trained")
    assert text.startswith("# Inpainting" if trained else "# Training-free inpainting")
    if trained:  # a trained task trains with the inpainting conditioner and judges with its data's saved judge
        assert "conditioner=class_inpaint" in editing.TASKS[task].budget
        assert editing.TASKS[task].judge_from == editing.TASKS[task].base
    assert "75.0% (3/4, 95% CI" in text  # shares carry n and the Wilson interval
    assert "(n=3, 95% CI" in text  # means carry n and the t interval
    assert "target one: **met**" in text and "target two: **not met**" in text
    if editing.TASKS[task].base != "voxel":  # what the kept part says about the class, beside the targets
        assert "of these partial inputs (94.7% of the held-out set's)" in text
    if task.startswith("fsdd"):
        assert "frames 24-39 of 64" in text and "-2.0 points" in text


def test_held_out_items_after_skip() -> None:
    """``--skip K --n N`` completes held-out items K..K+N-1, so settings can be chosen on items a report of the
    first K never completes; the report says which items it completed."""
    args = editing.parse_args(["--task", "mnist", "--skip", "3", "--n", "2"])
    assert editing.held_out(args, editing.TASKS["mnist"], list(range(10))).tolist() == [3, 4]
    args = editing.parse_args(["--task", "mnist", "--n", "4"])
    assert editing.held_out(args, editing.TASKS["mnist"], list(range(10))).tolist() == [0, 1, 2, 3]
    results = _results("mnist")
    results["settings"]["skip"] = 800
    assert "held-out items (those after the first 800)" in editing.report(results)
    with pytest.raises(SystemExit, match=r"--skip -1: expected a number of held-out items >= 0"):
        editing.main(["--task", "mnist", "--skip", "-1"])


def test_add_merges_settings_into_the_saved_report_of_the_same_items(tmp_path) -> None:
    """``--add --settings S`` completes only S, on the saved report's items and seed, and adds its rows (the
    inferred-class share included) beside the saved ones; the headline moves only to the task's own headline."""
    import json

    saved = _results("mnist")
    saved["settings"]["completion_settings"] = [{"name": "a"}]
    (tmp_path / "results.json").write_text(json.dumps(saved))
    with pytest.raises(SystemExit, match="--add: name the settings to add with --settings"):
        editing.check_add(editing.parse_args(["--task", "mnist", "--add", "--reuse"]), tmp_path)
    with pytest.raises(SystemExit, match="--add: the rows added must come from the saved report's model: give --reuse"):
        editing.check_add(editing.parse_args(["--task", "mnist", "--add", "--settings", "x", "--n", "3"]), tmp_path)
    with pytest.raises(SystemExit, match=r"completed task mnist, n=3, skip=0, seed=0; this run asks for task mnist, "
                                         r"n=1000, skip=0, seed=0: give the same --n, --skip and --seed"):
        editing.check_add(editing.parse_args(["--task", "mnist", "--add", "--reuse", "--settings", "x"]), tmp_path)
    with pytest.raises(SystemExit, match="does not exist; run the report without --add first"):
        editing.check_add(editing.parse_args(["--task", "mnist", "--add", "--reuse", "--settings", "x"]),
                          tmp_path / "none")
    args = editing.parse_args(["--task", "mnist", "--add", "--reuse", "--settings", "x", "--n", "3"])
    assert editing.check_add(args, tmp_path) == saved and editing.picture_name(args) == "examples_added1.png"
    # the rows must come from the saved report's model and judge: a retrained run is refused
    same = json.loads(json.dumps(saved))
    editing.check_same_model(saved, same)
    retrained = json.loads(json.dumps(same))
    retrained["training"]["wall_seconds"] = 61.0
    with pytest.raises(SystemExit, match=r"--add: not the saved report's training record: the rows added would "
                                         r"come from another model or judge"):
        editing.check_same_model(saved, retrained)
    other_judge = json.loads(json.dumps(same))
    other_judge["judge"]["val_accuracy"] = 0.5
    with pytest.raises(SystemExit, match="not the saved report's judge:"):
        editing.check_same_model(saved, other_judge)
    head = editing.TASKS["mnist"].settings[0]
    assert head.class_inferred and not head.class_given
    new = {"settings": {"completion_settings": [{"name": head.name}], "note": None},
           "methods": {head.name: {**saved["methods"]["a"], "inferred_class": editing.share(torch.tensor([1, 1, 0]) > 0)}},
           "headline": head.name, "targets": {"target one": False}, "picture_rows": ["masked input", head.name]}
    merged = editing.merge_added(json.loads(json.dumps(saved)), new, editing.TASKS["mnist"], "examples_added1.png")
    assert list(merged["methods"]) == ["a", head.name] and merged["headline"] == head.name
    assert [c["name"] for c in merged["settings"]["completion_settings"]] == ["a", head.name]
    text = editing.report(merged)
    # a saved setting without its own levels was inferred at classify's default, 64
    assert f"- {head.name} (64 noise levels): 66.7% (2/3, 95% CI" in text and "target one: **not met**" in text
    merged["settings"]["completion_settings"][-1]["levels"] = 128
    assert f"- {head.name} (128 noise levels): 66.7%" in editing.report(merged)
    assert f"Added later with `--add` (same model, judge, items and seeds): {head.name}. Picture: " \
           "`examples_added1.png`" in text
    other = {**new, "headline": "b", "targets": {"x": True}}
    kept = editing.merge_added(json.loads(json.dumps(saved)), other, editing.TASKS["mnist"], "p.png")
    assert kept["headline"] == "a" and kept["targets"] == saved["targets"]


def test_complete_infers_the_class_at_the_settings_noise_levels_then_guides_by_it() -> None:
    """A setting that infers the class asks ``classify`` with its own ``levels`` (the ``mnist_long`` task's headline
    asks for 128) and the same seed as the completion, then completes with the most likely class as the condition."""
    calls: list[tuple[str, dict]] = []

    class Pipe:
        def classify(self, x, mask, **kw):
            calls.append(("classify", kw))
            return torch.log_softmax(torch.tensor([[0.0, 5.0, 1.0]]).expand(len(x), 3), -1)

        def inpaint(self, x, mask, cond, **kw):
            calls.append(("inpaint", {"cond": cond, **kw}))
            return x + 1

    head = editing.TASKS["mnist_long"].settings[0]
    assert head.class_inferred and head.levels == 128 and editing.TASKS["mnist_long"].judge_from == "mnist"
    assert "diffusion.max_steps=4500" in editing.TASKS["mnist_long"].budget
    x = torch.zeros(3, 1, 4, 4)
    out, inferred = editing.complete(Pipe(), x, torch.ones_like(x), torch.tensor([1, 1, 2]), head, seed=7, batch=2)
    assert torch.equal(out, x + 1) and inferred.tolist() == [1, 1, 1]
    assert [c[0] for c in calls] == ["classify", "inpaint", "classify", "inpaint"]
    assert [c[1]["levels"] for c in calls if c[0] == "classify"] == [128, 128]
    assert [c[1]["seed"] for c in calls] == [7, 7, 8, 8]
    assert calls[1][1]["cond"]["class"].tolist() == [1, 1] and calls[1][1]["guidance"] == 3.0
    assert editing.Setting("default").levels == 64  # LatentDiffusion.classify's default


def test_training_record_states_the_set_overrides_that_changed_the_model(tmp_path, monkeypatch) -> None:
    """``--set`` beside the task's step budget (e.g. ``diffusion.max_steps=4500``) is recorded in ``training.json``,
    so a later ``--reuse`` report states the budget the model was trained with, not the task's default."""
    monkeypatch.setattr(editing.generation, "compose_config", lambda args: args)
    monkeypatch.setattr(editing.generation, "train_model", lambda cfg, run_dir: {"wall_seconds": 1.0})
    args = editing.parse_args(["--task", "mnist", "--set", "diffusion.max_steps=4500"])
    editing.train(args, tmp_path)
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["budget"] == ["phase1.max_steps=700", "diffusion.max_steps=1500", "diffusion.max_steps=4500"]
