"""Stable Diffusion VAE interop: diffusers ``AutoencoderKL`` folders <-> mmldm's conv + kl autoencoder.

Parity against diffusers on the same (randomly initialized) weights; diffusers is a test-only dependency.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mmldm.export import ExportError
from mmldm.latents import LatentStats
from mmldm.nn import Downsample
from mmldm.pipeline import LatentDiffusion
from mmldm.plugins import registry
from mmldm_autoencoders.diffusers_format import (
    diffusers_latent_shape,
    is_diffusers_vae,
    load_diffusers_vae,
    phase1_from_diffusers,
    save_diffusers_vae,
)

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")
ATOL = 1e-5


def make_vae(widths=(32, 64), layers=1, groups=8, seed=0, **config) -> "diffusers.AutoencoderKL":
    """A tiny ``AutoencoderKL`` whose every tensor (norms and biases too) is randomized."""
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(
        block_out_channels=widths, down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths), layers_per_block=layers, latent_channels=4,
        norm_num_groups=groups, sample_size=32, **config,
    )
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return vae.eval()


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd_vae")
    vae = make_vae()
    vae.save_pretrained(path)
    return path, vae


def _diff(ref: torch.Tensor, ours: torch.Tensor) -> float:
    """Max absolute difference, relative to the reference's magnitude when that exceeds 1 (float32 rounding)."""
    return ((ref - ours).abs().max() / ref.abs().max().clamp_min(1.0)).item()


def max_diffs(vae, autoencoder, x: torch.Tensor) -> dict[str, float]:
    """Differences of posterior mean/std and decoding between diffusers and mmldm on ``x``."""
    with torch.no_grad():
        ref, ours = vae.encode(x).latent_dist, autoencoder.encode(x)
        z = ref.sample(generator=torch.Generator().manual_seed(0))
        return {"mean": _diff(ref.mean, ours.mean), "std": _diff(ref.std, ours.std),
                "decode": _diff(vae.decode(z).sample, autoencoder.decode(z))}


def test_parity_with_diffusers(vae_dir):
    path, vae = vae_dir
    autoencoder, stats, cfg = load_diffusers_vae(path)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    diffs = max_diffs(vae, autoencoder, x)
    assert max(diffs.values()) < ATOL, diffs
    assert (cfg.channels, cfg.channel_mult, cfg.num_res_blocks, cfg.norm_groups) == (32, [1, 2], 1, 8)
    assert autoencoder.latent_shape((3, 32, 32)) == (4, 16, 16)


def test_scaling_factor_is_the_latent_std(vae_dir):
    path, _ = vae_dir
    _, stats, _ = load_diffusers_vae(path)
    z = torch.randn(2, 4, 8, 8)
    assert stats.global_scale and torch.allclose(stats.normalize(z), z * 0.18215, atol=1e-6)
    assert torch.allclose(stats.denormalize(stats.normalize(z)), z, atol=1e-6)


def rewrite_config(src, dst, **changes):
    """Copy a diffusers folder with ``config.json`` fields changed (``None`` deletes a field)."""
    dst.mkdir()
    data = json.loads((src / "config.json").read_text())
    data.update(changes)
    (dst / "config.json").write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    (dst / "diffusion_pytorch_model.safetensors").write_bytes((src / "diffusion_pytorch_model.safetensors").read_bytes())
    return dst


def test_shift_factor_and_per_channel_statistics(vae_dir, tmp_path):
    path, _ = vae_dir
    z = torch.randn(2, 4, 8, 8)
    _, stats, _ = load_diffusers_vae(rewrite_config(path, tmp_path / "sd3", scaling_factor=1.5, shift_factor=0.25))
    assert torch.allclose(stats.normalize(z), (z - 0.25) * 1.5, atol=1e-6)  # SD3/FLUX convention
    mean, std = [0.1, -0.2, 0.3, 0.0], [0.5, 1.0, 2.0, 4.0]
    _, stats, _ = load_diffusers_vae(rewrite_config(path, tmp_path / "pc", scaling_factor=0.5, latents_mean=mean,
                                                    latents_std=std))
    m, s = torch.tensor(mean).view(1, 4, 1, 1), torch.tensor(std).view(1, 4, 1, 1)
    assert torch.allclose(stats.normalize(z), (z - m) * 0.5 / s, atol=1e-6)  # SDXL-pipeline convention


def test_round_trip_through_a_diffusers_folder(vae_dir, tmp_path):
    path, vae = vae_dir
    autoencoder, stats, _ = load_diffusers_vae(path)
    save_diffusers_vae(autoencoder, stats, tmp_path / "out", sample_size=32)
    reloaded = diffusers.AutoencoderKL.from_pretrained(tmp_path / "out").eval()
    assert reloaded.config.scaling_factor == pytest.approx(0.18215) and reloaded.config.shift_factor is None
    ref, new = vae.state_dict(), reloaded.state_dict()
    assert ref.keys() == new.keys() and all(torch.equal(ref[k], new[k]) for k in ref)
    again, stats2, _ = load_diffusers_vae(tmp_path / "out")
    assert stats2.mean == stats.mean and stats2.std == pytest.approx(stats.std)
    assert max(max_diffs(reloaded, again, torch.rand(1, 3, 32, 32) * 2 - 1).values()) < ATOL


def test_mmldm_trained_model_exports(tmp_path):
    """An mmldm conv autoencoder in the SD layout (no q/k/v bias: exported as zeros) with per-channel stats."""
    cfg = {"name": "conv", "channels": 8, "channel_mult": [1, 2], "latent_channels": 3, "norm_groups": 4,
           "attention_norm_groups": 4, "downsample_padding": "asymmetric", "quant_conv": True}
    reg = registry().build("regularizer", {"name": "kl"}, latent_channels=3)
    autoencoder = registry().build("autoencoder", cfg, dims=2, in_channels=1, regularizer=reg).eval()
    with torch.no_grad():
        for p in autoencoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    stats = LatentStats([0.5, 0.0, -1.0], [2.0, 1.0, 0.5])
    save_diffusers_vae(autoencoder, stats, tmp_path)
    vae = diffusers.AutoencoderKL.from_pretrained(tmp_path).eval()
    assert vae.config.latents_mean == [0.5, 0.0, -1.0] and vae.post_quant_conv is None
    assert max(max_diffs(vae, autoencoder, torch.rand(2, 1, 16, 16) * 2 - 1).values()) < ATOL
    _, back, _ = load_diffusers_vae(tmp_path)
    assert back.mean == stats.mean and back.std == pytest.approx(stats.std)


def test_sd_like_four_levels_f8(tmp_path):
    vae = make_vae(widths=(8, 16, 16, 16), layers=2, groups=4, seed=1)
    vae.save_pretrained(tmp_path)
    autoencoder, _, cfg = load_diffusers_vae(tmp_path)
    assert cfg.channel_mult == [1, 2, 2, 2] and autoencoder.downsample_factor == 8
    x = torch.rand(1, 3, 32, 24) * 2 - 1
    assert autoencoder.encode(x).mean.shape == (1, 4, 4, 3)
    diffs = max_diffs(vae, autoencoder, x)
    assert max(diffs.values()) < ATOL, diffs


def test_pipeline_folder_and_legacy_attention_names(vae_dir, tmp_path):
    """A pipeline folder's vae/ is found; attention tensors named query/key/value/proj_attn load too."""
    from safetensors.torch import load_file, save_file

    path, vae = vae_dir
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    tensors = {}
    for k, v in load_file(str(path / "diffusion_pytorch_model.safetensors")).items():
        for new, old in legacy.items():
            k = k.replace(f".{new}.", f".{old}.")
        tensors[k] = v
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text((path / "config.json").read_text())
    save_file(tensors, str(tmp_path / "vae" / "diffusion_pytorch_model.safetensors"))
    assert is_diffusers_vae(tmp_path) and not is_diffusers_vae(tmp_path / "missing")
    autoencoder, _, _ = load_diffusers_vae(tmp_path)
    assert max(max_diffs(vae, autoencoder, torch.rand(1, 3, 16, 16) * 2 - 1).values()) < ATOL


def test_errors_name_the_file_and_key(vae_dir, tmp_path):
    path, _ = vae_dir
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(ExportError, match=r"weights file not found: .*bare/diffusion_pytorch_model\.safetensors"):
        load_diffusers_vae(bare)
    unet = rewrite_config(path, tmp_path / "unet", _class_name="UNet2DConditionModel")
    with pytest.raises(ExportError, match=r"unet/config\.json: _class_name='UNet2DConditionModel'.*AutoencoderKL"):
        load_diffusers_vae(unet)
    with pytest.raises(ExportError, match=r"gelu/config\.json: act_fn='gelu'"):
        load_diffusers_vae(rewrite_config(path, tmp_path / "gelu", act_fn="gelu"))
    with pytest.raises(ExportError, match=r"nolayers/config\.json lacks the field 'layers_per_block'"):
        load_diffusers_vae(rewrite_config(path, tmp_path / "nolayers", layers_per_block=None))
    with pytest.raises(ExportError, match=r"wide/diffusion_pytorch_model\.safetensors: tensor encoder\.conv_in\.weight "
                                          r"has shape \(32, 3, 3, 3\).*\(48, 3, 3, 3\)"):
        load_diffusers_vae(rewrite_config(path, tmp_path / "wide", block_out_channels=[48, 96], norm_num_groups=16))
    with pytest.raises(ExportError, match="config.json not found"):
        load_diffusers_vae(tmp_path / "nowhere")


def test_export_refuses_what_diffusers_cannot_express(tmp_path):
    reg = registry().build("regularizer", {"name": "kl"}, latent_channels=3)
    tiny = {"name": "conv", "channels": 8, "channel_mult": [1, 2], "latent_channels": 3, "norm_groups": 4}
    symmetric = registry().build("autoencoder", tiny, dims=2, in_channels=1, regularizer=reg)
    with pytest.raises(ValueError, match="downsample_padding='symmetric'"):
        save_diffusers_vae(symmetric, LatentStats.identity(3), tmp_path)
    voxel = registry().build("autoencoder", {**tiny, "downsample_padding": "asymmetric", "attention": False},
                             dims=3, in_channels=1, regularizer=reg)
    with pytest.raises(ValueError, match="dims=3"):
        save_diffusers_vae(voxel, LatentStats.identity(3), tmp_path)


def test_phase1_from_diffusers_exports_a_plain_mmldm_model(vae_dir, tmp_path):
    path, vae = vae_dir
    modality_cfg = {"name": "image", "source": "shapes", "size": 32, "num_samples": 8}
    assert diffusers_latent_shape(path, (3, 32, 32)) == (4, 16, 16)
    with pytest.raises(ValueError, match="in_channels=3"):
        diffusers_latent_shape(path, (1, 32, 32))
    pipe = phase1_from_diffusers(path, modality_cfg)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    assert torch.allclose(pipe.encode(x), expected, atol=ATOL)
    reloaded = LatentDiffusion.from_pretrained(pipe.save_pretrained(tmp_path / "export"))
    assert reloaded.config["autoencoder"]["downsample_padding"] == "asymmetric"
    assert torch.allclose(reloaded.encode(x), pipe.encode(x), atol=1e-6)


def test_defaults_keep_the_weights_layout_and_asymmetric_padding_matches_f_pad():
    reg = registry().build("regularizer", {"name": "kl"}, latent_channels=3)
    model = registry().build("autoencoder", {"name": "conv", "channels": 8, "channel_mult": [1, 2], "latent_channels": 3},
                             dims=2, in_channels=1, regularizer=reg)
    keys = model.state_dict().keys()
    assert not [k for k in keys if "quant_conv" in k or k.endswith(("to_q.bias", "to_k.bias", "to_v.bias"))]
    down = Downsample(3, 2, padding="asymmetric")
    x = torch.randn(1, 2, 5, 6, 7)
    assert torch.allclose(down(x), F.conv3d(F.pad(x, (0, 1, 0, 1, 0, 1)), down.op.weight, down.op.bias, stride=2))
    with pytest.raises(ValueError, match="padding='same'"):
        Downsample(2, 4, padding="same")


def test_mmldm_train_runs_phase2_on_a_diffusers_vae(vae_dir, tmp_path):
    """``mmldm train stage=diffusion phase1.checkpoint=<diffusers folder>``: the plugin hook loads the VAE,
    phase 2 trains on its latents and the export is a plain mmldm model encoding like the VAE."""
    from .conftest import run_cli

    path, vae = vae_dir
    run = tmp_path / "run"
    common = ["modality=image", "modality.source=shapes", "modality.size=32", "modality.num_samples=16",
              "trainer.enable_progress_bar=false", "trainer.limit_val_batches=1", "data.batch_size=4",
              "data.stats_batches=2", "sample.num_samples=2", "sampler.steps=2", "denoiser.model_channels=16"]
    out = run_cli("train", *common, "stage=diffusion", f"phase1.checkpoint={path}", "diffusion.max_steps=2",
                  f"hydra.run.dir={run}", env_extra={"MMLDM_CACHE": str(tmp_path / "cache")}, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    pipe = LatentDiffusion.from_pretrained(run / "export")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    assert torch.allclose(pipe.encode(x), expected, atol=ATOL)
    assert len(list((run / "samples").glob("sample_0*.png"))) == 2

    gray = run_cli("train", *common, "modality.channels=1", "stage=diffusion", f"phase1.checkpoint={path}",
                   f"hydra.run.dir={tmp_path / 'gray'}", cwd=tmp_path)
    assert gray.returncode != 0 and "config.json encodes in_channels=3" in gray.stderr


def test_the_autoencoder_plugin_answers_the_phase1_hooks_only_for_diffusers_folders(vae_dir, tmp_path):
    from mmldm.plugins import plugins

    path, vae = vae_dir
    hook = plugins().manager.hook
    assert hook.mmldm_phase1_latent_shape(path=str(path), sample_shape=(3, 32, 32)) == (4, 16, 16)
    assert hook.mmldm_phase1_latent_shape(path=str(tmp_path), sample_shape=(3, 32, 32)) is None  # not a VAE folder
    modality_cfg = {"name": "image", "source": "shapes", "size": 32, "num_samples": 8}
    pipe = hook.mmldm_load_phase1(path=str(path), modality_cfg=modality_cfg)
    assert pipe.denoiser is None and pipe.latent_shape == (4, 16, 16)
    assert abs(pipe.stats.std[0] * vae.config.scaling_factor - 1) < 1e-6
    assert hook.mmldm_load_phase1(path=str(tmp_path), modality_cfg=modality_cfg) is None
