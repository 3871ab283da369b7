"""Held-out attribute combinations (``modality.holdout``) and the per-attribute judges of scenes and spoken
digits that score text conditioning on them (``benchmarks.text_composition``)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from benchmarks import text_composition
from mmldm.configuration import ConfigProblem, validate
from mmldm_audio.config import AudioConfig
from mmldm_audio.metrics import clip_attributes, clip_names, clip_statistics, train_speaker_judge
from mmldm_audio.modality import AudioModality
from mmldm_image.config import ImageConfig
from mmldm_image.metrics import expected_areas, judge_attributes, segment_shape
from mmldm_image.modality import ImageModality
from mmldm_image.shapes import ATTRIBUTES, COLOURS, PLACES, PLACE_WORDS, SIZES, background, render_scene, shape_coverage

PAIRS = ["star:red", "circle:blue", "ring:left", "large:magenta"]


def scenes(**kw) -> ImageModality:
    return ImageModality(ImageConfig(name="image", **kw))


def audio(**kw) -> AudioModality:
    return AudioModality(AudioConfig(name="audio", **kw))


# ---------------------------------------------------------------------------- scenes: attributes and split
def test_scene_attributes_are_the_caption_words():
    for i in range(50):
        s = render_scene(0, i, 32)
        a = s.attributes
        assert set(a) == set(ATTRIBUTES) and all(a[k] in ATTRIBUTES[k] for k in a)
        assert s.caption == f"a {a['size']} {a['colour']} {a['shape']} {PLACES[PLACE_WORDS.index(a['place'])]}"


def test_holdout_split_holds_out_exactly_the_pairs_and_keeps_every_word():
    m = scenes(num_samples=2000, holdout=PAIRS)
    train, val = m.dataset("train"), m.dataset("val")
    assert len(train) + len(val) == 2000 and 100 < len(val) < 600

    def held(a):
        return (a["shape"], a["colour"]) in {("star", "red"), ("circle", "blue")} or \
            (a["shape"], a["place"]) == ("ring", "left") or (a["size"], a["colour"]) == ("large", "magenta")

    assert all(held(a) for a in val.attributes) and not any(held(a) for a in train.attributes)
    # every pair is represented among the held-out scenes
    assert {p for p in PAIRS for a in val.attributes if set(p.split(":")) <= set(a.values())} == set(PAIRS)
    # every word keeps training scenes, so held-out captions are new sentences of known words
    assert {w for a in train.attributes for w in a.values()} == {w for words in ATTRIBUTES.values() for w in words}
    train_words = {w for t in train.texts for w in t.split()}
    assert all(set(t.split()) <= train_words for t in val.texts)
    assert not set(val.texts) & set(train.texts)
    # the items carry the captions of their attributes, and the scenes' own pixels
    item = val[0]
    assert item["cond"]["text"] == val.texts[0] and item["x"].shape == (3, 32, 32)
    # without a holdout the split is the val_fraction tail, as before
    plain = scenes(num_samples=50, val_fraction=0.2)
    assert (len(plain.dataset("train")), len(plain.dataset("val"))) == (40, 10)


@pytest.mark.parametrize("holdout, kw, message", [
    (["star:purple"], {}, r"modality.holdout: 'star:purple' names 'purple', which is no scene word \(shapes: circle"),
    (["star"], {}, r"modality.holdout: 'star' is not a pair '<word>:<word>'"),
    (["star:circle"], {}, r"modality.holdout: 'star:circle' joins two shapes"),
    (["star:left", "star:middle", "star:right"], {},
     r"modality.holdout: 'star:right' would leave no training scene with the shape 'star'"),
    (["red:small", "red:medium", "red:large"], {}, r"'red:large' would leave no training scene with the colour 'red'"),
    (["ring:left"], {"flip": True}, r"modality.flip=true with modality.holdout pair 'ring:left'"),
    (["star:red"], {"source": "digits"}, r"modality.holdout=\['star:red'\] needs modality.source=shapes"),
])
def test_bad_scene_holdout_names_the_key_and_value(holdout, kw, message):
    with pytest.raises(ValueError, match=message):
        ImageConfig(name="image", holdout=holdout, **kw)


def test_bad_scene_holdout_fails_on_the_command_line_and_on_too_few_scenes():
    with pytest.raises(ConfigProblem, match=r"modality.holdout: 'star:purple' names 'purple'"):
        validate(["modality=image", "modality.holdout=[star:purple]"])
    assert list(validate(["modality=image", "modality.holdout=[star:red,ring:left]"]).config.modality.holdout) == \
        ["star:red", "ring:left"]
    with pytest.raises(ValueError, match=r"none of the modality.num_samples=3 scenes has a held-out pair"):
        scenes(num_samples=3, holdout=["star:red"]).dataset("train")
    with pytest.raises(ValueError, match=r"with modality.num_samples=12 no training scene has the shape 'circle'"):
        scenes(num_samples=12, holdout=["large:left"]).dataset("val")


# ---------------------------------------------------------------------------- scenes: judges
def test_scene_judges_read_real_scenes():
    """Colour, size (given the shape) and place of 200 real scenes: measured 100% on 7,000 scenes."""
    hits = {"colour": 0, "size": 0, "place": 0}
    ious = []
    for i in range(200):
        s = render_scene(3, i, 32)
        judged = judge_attributes(s.image, s.attributes["shape"])
        for key in hits:
            hits[key] += judged[key] == s.attributes[key]
        mask = segment_shape(s.image).mask
        ious.append((mask & (s.mask > 0)).sum() / (mask | (s.mask > 0)).sum())
    assert all(v >= 198 for v in hits.values()), hits
    assert np.mean(ious) > 0.95


def test_expected_areas_grow_with_size_and_depend_on_the_shape():
    circle, star = expected_areas("circle", 32), expected_areas("star", 32)
    assert circle["small"] < circle["medium"] < circle["large"]
    assert circle["large"] == pytest.approx(np.pi * (SIZES["large"] * 32) ** 2, rel=0.05)
    assert star["large"] < 0.5 * circle["large"]  # why the size judge needs the shape


def _scene(colour: str, size_word: str, cx: float, seed: int = 0, shape: str = "hexagon") -> np.ndarray:
    """A 32x32 scene drawn with the renderer's own parts, at a chosen colour, size and centre."""
    rng = np.random.default_rng(seed)
    alpha = shape_coverage(shape, 32, cx, 16.0, SIZES[size_word] * 32, 0.3)[..., None]
    return np.round(background(rng, 32) * (1 - alpha) + np.asarray(COLOURS[colour]) * alpha).astype(np.uint8)


def test_scene_judges_follow_an_altered_scene():
    """A deliberately altered scene is judged as it looks, not as captioned: the judges read pixels."""
    s = render_scene(0, 1, 32)
    a = s.attributes
    other = "cyan" if a["colour"] != "cyan" else "red"
    recoloured = s.image.copy()
    recoloured[s.mask > 0] = COLOURS[other]
    assert judge_attributes(s.image, a["shape"])["colour"] == a["colour"]
    assert judge_attributes(recoloured, a["shape"])["colour"] == other
    mirrored = judge_attributes(s.image[:, ::-1], a["shape"])["place"]
    assert mirrored == {"left": "right", "middle": "middle", "right": "left"}[a["place"]]
    for seed in range(3):
        assert judge_attributes(_scene("green", "small", 6.0, seed), "hexagon") == \
            {"colour": "green", "size": "small", "place": "left"}
        assert judge_attributes(_scene("orange", "large", 22.5, seed), "hexagon") == \
            {"colour": "orange", "size": "large", "place": "right"}
    flat = np.full((32, 32, 3), 90, np.uint8)
    assert judge_attributes(flat, "circle") == {"colour": None, "size": None, "place": None}


# ---------------------------------------------------------------------------- FSDD: captions, holdout, speakers
@pytest.fixture
def fsdd_grid(tmp_path, fsdd):
    """Digits 0-2 of george, jackson and theo (index 0): nine real recordings."""
    names = [f"{d}_{s}_0.wav" for d in range(3) for s in ("george", "jackson", "theo")]
    for name in names:
        (tmp_path / name).symlink_to(fsdd / name)
    return tmp_path, names


def test_fsdd_digit_speaker_captions_and_pair_holdout(fsdd_grid):
    root, names = fsdd_grid
    m = audio(source="folder", root=str(root), caption="digit_speaker", holdout=["0:george", "1:jackson"])
    val, train = m.waveforms("val"), m.waveforms("train")
    assert sorted(val.names) == ["0_george_0.wav", "1_jackson_0.wav"] and len(train.names) == 7
    assert sorted(val.texts) == ["one, spoken by jackson", "zero, spoken by george"]
    assert "two, spoken by theo" in train.texts and not set(val.texts) & set(train.texts)
    assert clip_attributes(m.dataset("val")) == [{"digit": "0", "speaker": "george"}, {"digit": "1", "speaker": "jackson"}]
    assert m.dataset("train")[0]["cond"]["text"] == "zero, spoken by jackson"
    plain = audio(source="folder", root=str(root), val_fraction=0.0)  # the default caption is unchanged
    assert set(plain.waveforms("train").texts) == {"a recording of 0", "a recording of 1", "a recording of 2"}


def test_fsdd_judges_learn_from_even_takes_of_held_out_pairs_and_are_measured_on_odd_ones(tmp_path, fsdd):
    from torch.utils.data import ConcatDataset, Subset

    for name in [f"{d}_{s}_{t}.wav" for d in range(2) for s in ("george", "jackson") for t in range(3)]:
        (tmp_path / name).symlink_to(fsdd / name)
    m = audio(source="folder", root=str(tmp_path), caption="digit_speaker", holdout=["0:george"])
    train, val = m.dataset("train"), m.dataset("val")
    taught, kept = text_composition.fsdd_judge_split(val)
    names = clip_names(val)
    assert sorted(names) == ["0_george_0.wav", "0_george_1.wav", "0_george_2.wav"]
    assert sorted(names[i] for i in taught) == ["0_george_0.wav", "0_george_2.wav"] and [names[i] for i in kept] == ["0_george_1.wav"]
    learn = ConcatDataset([train, Subset(val, taught)])  # what the judges learn from: names and attributes follow
    assert clip_names(learn) == clip_names(train) + [names[i] for i in taught] and len(learn) == 11
    assert clip_attributes(Subset(val, kept)) == [{"digit": "0", "speaker": "george"}]
    with pytest.raises(ValueError, match="need the clips' file names"):
        clip_names([{"x": None}])


@pytest.mark.parametrize("holdout, message", [
    (["7:george"], r"modality.holdout: '7:george' names the digit '7', which no file under .* has \(digits: 0, 1, 2\)"),
    (["0:bob"], r"'0:bob' names the speaker 'bob', which no file .* \(speakers: george, jackson, theo\)"),
    (["0:george", "0:jackson", "0:theo"], r"'0:theo' would leave no training file of the digit '0'"),
    (["0:george", "1:george", "2:george"], r"'2:george' would leave no training file of the speaker 'george'"),
])
def test_bad_fsdd_pairs_name_the_key_and_value(fsdd_grid, holdout, message):
    root, _ = fsdd_grid
    with pytest.raises(ValueError, match=message):
        audio(source="folder", root=str(root), holdout=holdout).waveforms("train")


def test_bad_fsdd_options_fail_before_reading(fsdd_grid):
    root, _ = fsdd_grid
    with pytest.raises(ValueError, match=r"modality.holdout: '7-george' is not a pair '<digit>:<speaker>'"):
        AudioConfig(name="audio", source="folder", root=str(root), holdout=["7-george"])
    with pytest.raises(ValueError, match=r"modality.holdout=\['0:george'\] and modality.val_pattern='_theo_'"):
        AudioConfig(name="audio", source="folder", root=str(root), holdout=["0:george"], val_pattern="_theo_")
    with pytest.raises(ValueError, match=r"modality.caption=digit_speaker needs modality.source=folder"):
        AudioConfig(name="audio", caption="digit_speaker")
    (root / "3_hello.wav").symlink_to(root / "0_george_0.wav")
    with pytest.raises(ValueError, match=r"file name '3_hello.wav' is not '<digit>_<speaker>_<index>.wav'"):
        audio(source="folder", root=str(root), caption="digit_speaker").waveforms("train")


def test_clip_statistics_use_the_voiced_frames():
    logmel = torch.full((1, 4, 10), -10.0)
    logmel[0, :, 2:5] = torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None]  # three loud frames
    stats = clip_statistics(logmel)
    assert stats.shape == (1, 8)
    assert torch.allclose(stats[0, :4], torch.tensor([1.0, 2.0, 3.0, 4.0])) and torch.allclose(stats[0, 4:], torch.zeros(4))


def test_speaker_judge_names_the_speakers_of_held_out_pairs(fsdd):
    """Fitted on FSDD without 10 (digit, speaker) pairs, it names the speakers of those pairs' 500 clips
    (measured 99.0%)."""
    m = audio(source="folder", root=str(fsdd), sample_rate=8000, n_fft=512, hop_length=128, peak_level=0.5,
              caption="digit_speaker", holdout=text_composition.FSDD_HOLDOUT)
    train, val = m.dataset("train"), m.dataset("val")
    assert (len(train), len(val)) == (2000, 500)
    judge, report = train_speaker_judge(m, train, val)
    assert judge.speakers == ["george", "jackson", "lucas", "nicolas", "theo"]
    assert report["val_accuracy_n"] == 500 and report["val_accuracy"] >= 0.95, report


# ---------------------------------------------------------------------------- the benchmark
def test_benchmark_scores_attributes_with_n_and_intervals():
    expected = [{"shape": "star", "colour": "red"}] * 4
    predicted = [{"shape": "star", "colour": "red"}, {"shape": "star", "colour": "blue"},
                 {"shape": "ring", "colour": "red"}, {"shape": "star", "colour": None}]
    s = text_composition.score(predicted, expected, ("shape", "colour"))
    assert (s["shape"]["accuracy"], s["colour"]["accuracy"], s["all"]["accuracy"]) == (0.75, 0.5, 0.25)
    assert s["all"]["accuracy_n"] == 4 and 0 < s["all"]["accuracy_ci"][0] < 0.25 < s["all"]["accuracy_ci"][1]
    assert text_composition.pair_of({"digit": "7", "speaker": "lucas"}, text_composition.FSDD_HOLDOUT) == "7:lucas"
    assert text_composition.pair_of({"shape": "ring", "colour": "red", "size": "small", "place": "left"},
                                    text_composition.SCENE_HOLDOUT) == "ring:left"
    assert text_composition.pick(10, 20, 0) == list(range(10))


def test_benchmark_composes_both_tasks(fsdd):
    for task in ("scenes", "fsdd"):
        args = text_composition.parse_args(["--task", task, "--quick", "--data", str(fsdd.parent)])
        cfg = text_composition.compose_config(args)
        assert cfg.conditioner.name == "text" and list(cfg.modality.holdout) == text_composition.TASKS[task].holdout
        assert (cfg.phase1.max_minutes, cfg.diffusion.max_minutes) == (0.1, 0.1)
    assert (cfg.modality.caption, cfg.modality.val_pattern, cfg.modality.root) == ("digit_speaker", None, str(fsdd))


@pytest.mark.slow
def test_benchmark_quick_run_writes_the_report(tmp_path):
    """``--quick`` on scenes: ~30 s on an idle 2-core CPU."""
    out = tmp_path / "bench"
    results = text_composition.main(["--task", "scenes", "--quick", "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    held = saved["samples"]["held_out"]
    assert held["scores"]["all"]["accuracy_n"] == 8 and saved["samples"]["seen"]["scores"]["shape"]["accuracy_n"] == 4
    assert all(any(set(p.split(":")) <= set(e.values()) for p in text_composition.SCENE_HOLDOUT) for e in held["expected"])
    # the segmentation judges are exact on real scenes whatever the (1-epoch) shape judge does
    assert results["real"]["colour"]["accuracy"] == 1.0 and results["real"]["place"]["accuracy"] == 1.0
    text = (out / "results.md").read_text()
    assert "| items | shape | colour | size | place | all |" in text and re.search(r"real held-out items", text)
    assert saved["reconstructed"]["all"]["accuracy_n"] == 8  # the sampled items, through the autoencoder
    assert "| autoencoder reconstructions of the held-out items sampled (what phase 1 allows) |" in text
    assert (out / "samples" / "grid.png").is_file()


def test_every_study_variant_composes_and_replaces_the_tasks_key(fsdd):
    """``--study``: each ingredient's overrides compose on both tasks; a key it sets replaces the task's (Hydra
    refuses a key given twice), and the compute factor scales the phase-2 budget only."""
    assert text_composition.merge_overrides(["conditioner=text", "seed=1"], ["conditioner=text_pretrained"]) == [
        "seed=1", "conditioner=text_pretrained"]
    for task in ("scenes", "fsdd"):
        args = text_composition.parse_args(["--task", task, "--quick", "--data", str(fsdd.parent)])
        for name, ingredient in text_composition.INGREDIENTS.items():
            args.set = list(ingredient.overrides)
            cfg = text_composition.compose_config(args)
            assert list(cfg.modality.holdout) == text_composition.TASKS[task].holdout, name
            for override in ingredient.overrides:
                key, value = override.split("=", 1)
                if key == "conditioner":
                    assert cfg.conditioner.name == value, name
                elif key == "process":
                    assert cfg.diffusion.process.name == value, name
                else:
                    got = OmegaConf.select(cfg, key)
                    got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
                    assert got == yaml.safe_load(value), name
    assert text_composition.INGREDIENTS["twice the phase-2 compute"].compute == 2.0


def test_study_variants_are_picked_by_slug_and_an_unknown_one_is_named():
    names = list(text_composition.INGREDIENTS)
    picked = text_composition.study_variants(["default", "trainable_encoder_cross_attention_and_vector"])
    assert list(picked) == [names[0], "trainable encoder, cross-attention and vector"]
    assert list(text_composition.study_variants(None)) == names
    with pytest.raises(SystemExit, match=r"--variants: unknown \['vectr'\]; choices: .*'default'"):
        text_composition.study_variants(["vectr"])


def test_study_phase_two_composes_on_a_shared_autoencoder(fsdd):
    """Every variant's phase 2 runs on the one exported autoencoder (``stage=diffusion phase1.checkpoint=``)."""
    args = text_composition.parse_args(["--task", "fsdd", "--quick", "--data", str(fsdd.parent)])
    args.set = ["conditioner.outputs=[crossattn,vector]"]
    cfg = text_composition.compose_config(args, ["stage=diffusion", "phase1.checkpoint=/some/export"])
    assert cfg.stage.autoencoder is False and cfg.stage.diffusion is True
    assert cfg.phase1.checkpoint == "/some/export" and list(cfg.conditioner.outputs) == ["crossattn", "vector"]


def test_a_shared_autoencoder_of_other_data_settings_is_refused(tmp_path, fsdd):
    """Phase 2 reads its items through the exported modality: an ``--autoencoder`` trained with another holdout
    would train on the pairs the study calls held out, so it is refused, naming the key; the root may differ."""
    args = text_composition.parse_args(["--task", "fsdd", "--quick", "--data", str(fsdd.parent)])
    cfg = text_composition.compose_config(args)
    saved = {"modality": {**OmegaConf.to_container(cfg.modality, resolve=True), "root": "elsewhere"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    text_composition.check_autoencoder(tmp_path, cfg)  # same settings: accepted
    saved["modality"]["holdout"] = ["0:george"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(SystemExit, match=r"modality differs from the task's in holdout \(\['0:george'\] vs"):
        text_composition.check_autoencoder(tmp_path, cfg)
    with pytest.raises(SystemExit, match="no config.yaml there"):
        text_composition.check_autoencoder(tmp_path / "missing", cfg)


def test_a_saved_judge_is_reused_only_for_the_same_recipe(tmp_path):
    """``--reuse-judges``: the saved classifier comes back when the recipe matches; another recipe (or no
    flag) trains again and overwrites the file."""
    from mmldm.evaluation.classifier import FeatureClassifier

    args = text_composition.parse_args(["--task", "fsdd", "--quick", "--out", str(tmp_path), "--reuse-judges"])
    calls = []

    def train():
        calls.append(1)
        torch.manual_seed(len(calls))
        model = FeatureClassifier(dims=2, in_channels=1, num_classes=3)
        return model, {"val_accuracy": 0.5 + len(calls) / 10}

    first, report = text_composition.saved_judge(args, "digit", {"seed": 0}, train)
    assert (tmp_path / "judge_digit_quick.pt").is_file() and report["val_accuracy"] == 0.6
    again, report = text_composition.saved_judge(args, "digit", {"seed": 0}, train)
    assert len(calls) == 1 and report["val_accuracy"] == 0.6
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    _, report = text_composition.saved_judge(args, "digit", {"seed": 1}, train)
    assert len(calls) == 2 and report["val_accuracy"] == 0.7
    args.reuse_judges = False
    text_composition.saved_judge(args, "digit", {"seed": 1}, train)
    assert len(calls) == 3


@pytest.mark.slow
def test_study_compares_variants_on_the_same_judges(tmp_path, monkeypatch):
    """``--study --quick`` with two of the variants: one row per variant and guidance weight, one report."""
    monkeypatch.setattr(text_composition, "INGREDIENTS", {
        "default": text_composition.Ingredient(guidance=(1.0, 3.0)),
        "pooled vector": text_composition.Ingredient(("conditioner.outputs=[vector]",)),
        "no dropout": text_composition.Ingredient(("conditioner.dropout=0",), guidance=(1.0,))})
    out = tmp_path / "study"
    results = text_composition.main(["--task", "scenes", "--quick", "--study", "--compose", "--out", str(out)])
    # the variant without caption dropout never trained the null caption: no composed row (it needs that branch)
    assert [(r["variant"], r["guidance"], r["compose"]) for r in results["rows"]] == [
        ("default", 1.0, False), ("default", 1.0, True), ("default", 3.0, False), ("default", 3.0, True),
        ("pooled vector", 3.0, False), ("pooled vector", 3.0, True), ("no dropout", 1.0, False)]
    assert all(r["held_out"]["all"]["accuracy_n"] == 8 and r["phase2_steps"] for r in results["rows"])
    plain, composed = results["rows"][2], results["rows"][3]  # scene captions have no commas: one part each
    assert plain["held_out"] == composed["held_out"] and plain["seen"] == composed["seen"]
    text = (out / "results.md").read_text()
    assert "| pooled vector | 0.1 min" in text and "real held-out items (the judges)" in text
    assert "| 3, composed over the caption's parts |" in text and "Composable Diffusion" in text
    assert (out / "pooled_vector" / "judged_samples" / "grid.png").is_file()
