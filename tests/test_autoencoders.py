"""Contract and behaviour tests of phase 1: autoencoders, regularizers, latent statistics, losses.

The built-in autoencoders and regularizers subclass the contracts of
:mod:`mmldm.testing` (the same bases third-party plugins use) and add their own checks.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from mmldm.distributions import DeterministicLatent, DiagonalGaussian
from mmldm.interfaces import Autoencoder
from mmldm.latents import LatentStats
from mmldm.plugins import registry
from mmldm.testing import AutoencoderContract, RegularizerContract
from mmldm.training.phase1 import AutoencoderModule
from mmldm_autoencoders.config import AERegularizerConfig, AutoencoderLossConfig, ConvAutoencoderConfig
from mmldm_autoencoders.discriminator import PatchDiscriminator
from mmldm_autoencoders.losses import AutoencoderLoss, build_loss

TINY = {"name": "conv", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "latent_channels": 3}


def build_conv(dims: int, regularizer: dict, in_channels: int = 2, **overrides) -> Autoencoder:
    """Autoencoder ``conv`` with ``regularizer``, both built by registry name."""
    reg = registry().build("regularizer", regularizer, latent_channels=overrides.get("latent_channels", 3))
    return registry().build("autoencoder", {**TINY, **overrides}, dims=dims, in_channels=in_channels, regularizer=reg)


class TestConvKL(AutoencoderContract):
    def build(self, dims):
        return build_conv(dims, {"name": "kl"}, self.in_channels)

    def test_latent_channel_mismatch_names_both(self):
        reg = registry().build("regularizer", {"name": "kl"}, latent_channels=2)
        with pytest.raises(ValueError, match="latent_channels=3.*latent_channels=2"):
            registry().build("autoencoder", TINY, dims=1, in_channels=1, regularizer=reg)

    def test_f_from_channel_mult(self):
        model = build_conv(2, {"name": "kl"}, channel_mult=[1, 1, 2, 2])
        assert model.downsample_factor == 8 and model.latent_shape((2, 16, 32)) == (3, 2, 4)


class TestConvVQ(AutoencoderContract):
    def build(self, dims):
        return build_conv(dims, {"name": "vq", "codebook_size": 16}, self.in_channels)


class TestConvVQInDecoder(AutoencoderContract):
    def build(self, dims):
        return build_conv(dims, {"name": "vq", "codebook_size": 16, "quantize_in_decoder": True}, self.in_channels)

    def test_diffusion_sees_unquantized_latent(self):
        model = self.build(1).eval()
        z = model.encode(self.data(1)).mode()
        q = model.regularizer.quantize(z)
        assert not torch.allclose(z, q)
        torch.testing.assert_close(model.decode(z), model.decoder(q))


class TestConvAE(AutoencoderContract):
    def build(self, dims):
        return build_conv(dims, {"name": "ae", "bound": "tanh"}, self.in_channels, attention=False, downsample="pool")


class TestKLRegularizer(RegularizerContract):
    def build(self):
        return registry().build("regularizer", {"name": "kl", "kl_weight": 0.5}, latent_channels=self.latent_channels)

    def test_loss_is_weighted_batch_mean_of_summed_kl(self):
        reg = self.build()
        h = self.features(reg, 2)
        mean, logvar = h.detach().chunk(2, dim=1)
        ref = torch.distributions.kl_divergence(
            torch.distributions.Normal(mean, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
        ).sum(dim=(1, 2, 3))
        torch.testing.assert_close(reg.distribution(h).kl(), ref)
        torch.testing.assert_close(reg(h).loss, 0.5 * ref.mean())

    def test_eval_uses_the_mean(self):
        reg = self.build().eval()
        h = self.features(reg, 1)
        torch.testing.assert_close(reg(h).z, h.chunk(2, dim=1)[0])


class TestVQRegularizer(RegularizerContract):
    def build(self, **kw):
        cfg = {"name": "vq", "codebook_size": 8, **kw}
        return registry().build("regularizer", cfg, latent_channels=self.latent_channels)

    def test_straight_through_gradient_and_perplexity(self):
        reg = self.build()
        h = self.features(reg, 2)
        out = reg(h)
        w = torch.randn_like(out.z)
        (out.z * w).sum().backward()
        torch.testing.assert_close(h.grad, w)  # the decoder gradient passes the quantizer unchanged
        torch.testing.assert_close(out.z.detach(), reg.quantize(h.detach()))
        assert 1.0 <= out.logs["vq_perplexity"] <= 8.0 + 1e-5

    def test_perplexity_bounds(self):
        stats = self.build().code_stats
        assert stats(torch.tensor([5.0, 0, 0, 0]))["vq_perplexity"] == pytest.approx(1.0)
        assert stats(torch.ones(4))["vq_perplexity"] == pytest.approx(4.0)

    def test_codes_to_latent_and_projection(self):
        reg = self.build(codebook_dim=2)
        h = self.features(reg, 2).detach()
        _, _, idx = reg.lookup(h)
        torch.testing.assert_close(reg.codes_to_latent(idx), reg.quantize(h))

    def test_ema_updates_only_in_training(self):
        reg = self.build(ema=True)
        h = self.features(reg, 2).detach()
        before = reg.codebook.weight.clone()
        reg.eval()(h)
        torch.testing.assert_close(reg.codebook.weight, before)
        reg.train()(h)
        assert not torch.allclose(reg.codebook.weight, before)
        assert not reg.codebook.weight.requires_grad

    def test_dead_codes_restart_from_encoder_outputs(self):
        reg = self.build(dead_code_threshold=1.0)
        h = self.features(reg, 1).detach()
        with torch.no_grad():
            reg.codebook.weight[3] = 100.0  # far away: never chosen
        reg.train()(h)
        e = h.transpose(1, 2).reshape(-1, self.latent_channels)
        assert torch.cdist(reg.codebook.weight[3:4], e).min() < 1e-6


class TestAERegularizer(RegularizerContract):
    def build(self, **kw):
        cfg = {"name": "ae", **kw}
        return registry().build("regularizer", cfg, latent_channels=self.latent_channels)

    @pytest.mark.parametrize("bound", ["tanh", "clamp"])
    def test_bound_is_respected(self, bound):
        h = 10 * torch.randn(2, self.latent_channels, 16)
        assert self.build(bound=bound).distribution(h).mode().abs().max() <= 1.0

    def test_variance_pull_and_noise(self):
        reg = self.build(variance_weight=2.0, noise_std=0.1)
        h = torch.randn(64, self.latent_channels, 32)
        h = (h - h.mean(dim=(0, 2), keepdim=True)) / h.std(dim=(0, 2), keepdim=True, correction=0)
        out = reg.train()(h)
        assert out.loss < 1e-8 and not torch.allclose(out.z, h)
        out = reg.eval()(3 * h)
        assert out.loss == pytest.approx(2.0 * self.latent_channels * 64.0) and torch.equal(out.z, 3 * h)

    def test_bad_bound_names_key_and_choices(self):
        with pytest.raises(ValueError, match=r"regularizer\.bound='sigmoid'.*none, tanh, clamp"):
            AERegularizerConfig(name="ae", bound="sigmoid")


def test_diagonal_gaussian_matches_torch():
    mean, logvar = torch.randn(3, 2, 5), torch.randn(3, 2, 5)
    q, p = DiagonalGaussian(mean, logvar), DiagonalGaussian(torch.randn(3, 2, 5), torch.randn(3, 2, 5))
    tq = torch.distributions.Normal(mean, q.std)
    tp = torch.distributions.Normal(p.mean, p.std)
    torch.testing.assert_close(q.kl(p), torch.distributions.kl_divergence(tq, tp).sum(dim=(1, 2)))
    z = torch.randn(3, 2, 5)
    torch.testing.assert_close(q.nll(z), -tq.log_prob(z).sum(dim=(1, 2)))
    a, b = q.sample(torch.Generator().manual_seed(0)), q.sample(torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, q.mode())
    assert DiagonalGaussian(mean, torch.full_like(mean, 100.0)).logvar.max() == 20.0
    d = DeterministicLatent(z)
    assert d.sample() is z and d.mode() is z and torch.equal(d.kl(), torch.zeros(3))


class _AffineEncoder(nn.Module):
    """A stand-in autoencoder whose latent is ``x * scale + shift`` (for LatentStats)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.1, 3.0, 1.0]).view(1, 3, 1, 1))
        self.shift = torch.tensor([1000.0, -2.0, 0.0]).view(1, 3, 1, 1)

    def encode(self, x):
        return DeterministicLatent(x * self.scale + self.shift)


def test_latent_stats_match_torch_over_batches():
    g = torch.Generator().manual_seed(0)
    batches = [{"x": torch.randn(4, 3, 5, 6, generator=g)} for _ in range(6)]
    enc = _AffineEncoder()
    stats = LatentStats.measure(enc, batches, max_batches=5)
    z = torch.cat([enc.encode(b["x"]).mode() for b in batches[:5]]).double()
    torch.testing.assert_close(torch.tensor(stats.mean, dtype=torch.float64), z.mean(dim=(0, 2, 3)), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.tensor(stats.std, dtype=torch.float64), z.transpose(0, 1).flatten(1).std(dim=1), rtol=1e-5, atol=0)
    zn = stats.normalize(z.float())
    torch.testing.assert_close(zn.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(stats.denormalize(zn), z.float(), rtol=1e-5, atol=1e-3)
    loaded = LatentStats.from_dict(OmegaConf.to_container(OmegaConf.create(OmegaConf.to_yaml(stats.to_dict()))))
    assert loaded == stats
    pooled = LatentStats.measure(enc, batches[:5], global_scale=True)
    assert pooled.global_scale and pooled.std == [pytest.approx(z.std().item(), rel=1e-5)] * 3
    with pytest.raises(ValueError, match="3 channels"):
        stats.normalize(torch.zeros(1, 4, 2))


def test_latent_stats_of_kl_samples():
    model = build_conv(1, {"name": "kl"}).train()
    x = torch.rand(8, 2, 16)
    stats = LatentStats.measure(model, [x], use_samples=True, generator=torch.Generator().manual_seed(0))
    assert model.training  # measure restores the mode it found
    with torch.no_grad():
        z = model.eval().encode(x).sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.tensor(stats.std, dtype=torch.float64), z.transpose(0, 1).flatten(1).std(dim=1).double(), rtol=1e-5, atol=0)
    assert stats.std != LatentStats.measure(model, [x], use_samples=False).std


def test_reconstruction_losses():
    x, y = torch.rand(2, 1, 4, 4).round(), torch.randn(2, 1, 4, 4)
    cases = {"l1": (x - y).abs().sum() / 2, "l2": (x - y).pow(2).sum() / 2,
             "bce": F.binary_cross_entropy_with_logits(y, x, reduction="sum") / 2}
    for kind, ref in cases.items():
        loss = build_loss(AutoencoderLossConfig(reconstruction=kind), dims=2, in_channels=1)
        torch.testing.assert_close(loss.reconstruction_loss(x, y), ref)
    dice = build_loss(AutoencoderLossConfig(reconstruction="dice"), dims=2, in_channels=1)
    assert dice.reconstruction_loss(x, 50 * (2 * x - 1)) < 0.1
    with pytest.raises(ValueError, match=r"reconstruction=bce expects targets in \[0, 1\]"):
        build_loss(AutoencoderLossConfig(reconstruction="bce"), dims=2, in_channels=1).reconstruction_loss(y, y)
    with pytest.raises(ValueError, match="loss.reconstruction='mse'.*l1, l2"):
        AutoencoderLossConfig(reconstruction="mse")


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_patch_discriminator_shapes(dims):
    d = PatchDiscriminator(dims, 2, channels=4, layers=2)
    assert d(torch.randn(2, 2, *([16] * dims))).shape == (2, 1, *([2] * dims))
    with pytest.raises(ValueError, match=">= 12"):
        d(torch.randn(1, 2, *([8] * dims)))


def test_gan_terms_give_each_network_its_own_gradient():
    torch.manual_seed(0)
    model = build_conv(1, {"name": "kl"}, in_channels=1)
    loss = AutoencoderLoss(AutoencoderLossConfig(disc_weight=0.5, disc_start=0, disc_layers=2, disc_channels=4),
                           dims=1, in_channels=1)
    x = torch.rand(4, 1, 16)
    out = model(x)
    rec = loss.reconstruction_loss(x, out.reconstruction)
    g = loss.g_loss_fn(loss.discriminator(out.reconstruction))
    gr, gg = (torch.autograd.grad(t, model.last_layer, retain_graph=True)[0].norm() for t in (rec, g))
    total, logs = loss(x, out, step=0, last_layer=model.last_layer)
    assert logs["d_weight"] == pytest.approx((0.5 * gr / (gg + 1e-4)).item(), rel=1e-4)
    loss.discriminator.zero_grad()
    total.backward()
    disc_grads = [p.grad.clone() for p in loss.discriminator.parameters()]
    ref_d = loss.d_loss_fn(loss.discriminator(x), loss.discriminator(out.reconstruction.detach()))
    ref = torch.autograd.grad(ref_d, list(loss.discriminator.parameters()))
    for a, b in zip(disc_grads, ref):
        torch.testing.assert_close(a, b)
    assert loss(x, model(x), step=-1)[1].keys().isdisjoint({"d_loss", "g_loss"})  # before disc_start


def _fit(disc_weight: float, steps: int = 30):
    torch.manual_seed(0)
    t = torch.linspace(0, 1, 32)
    x = torch.stack([torch.sin(2 * torch.pi * (k % 4 + 1) * t + k) for k in range(32)]).unsqueeze(1)
    loader = DataLoader([{"x": xi, "cond": {}} for xi in x], batch_size=8, shuffle=True)
    model = build_conv(1, {"name": "kl"}, in_channels=1, channels=16, attention=False)
    cfg = AutoencoderLossConfig(disc_weight=disc_weight, disc_start=0, disc_layers=2, disc_channels=8)
    module = AutoencoderModule(model, build_loss(cfg, dims=1, in_channels=1), lr=3e-3, warmup_steps=5)

    @torch.no_grad()
    def rec() -> float:
        value = module.loss_fn.reconstruction_loss(x, model.eval().decode(model.encode(x).mode())).item()
        model.train()
        return value

    before = rec()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, loader, DataLoader([{"x": xi, "cond": {}} for xi in x[:8]], batch_size=8))
    return module, trainer, before, rec()


@pytest.mark.parametrize("disc_weight", [0.0, 0.5], ids=["no_gan", "gan"])
def test_lightning_fit_decreases_loss(disc_weight):
    module, trainer, before, after = _fit(disc_weight)
    assert after < 0.7 * before
    assert trainer.global_step == 30
    assert module.last_val["reconstruction"].shape == module.last_val["x"].shape == (8, 1, 32)
    assert ("train/d_loss" in trainer.callback_metrics) == (disc_weight > 0)
    assert "val/rec" in trainer.callback_metrics


def test_phase1_module_rejects_a_loss_config():
    model = build_conv(1, {"name": "kl"})
    with pytest.raises(TypeError, match="build_loss"):
        AutoencoderModule(model, AutoencoderLossConfig())
    with pytest.raises(ValueError, match="schedule='linear'"):
        AutoencoderModule(model, build_loss(AutoencoderLossConfig(), dims=1, in_channels=2), schedule="linear")


def test_conv_config_validation():
    with pytest.raises(ValueError, match="autoencoder.downsample='max'"):
        ConvAutoencoderConfig(name="conv", downsample="max")
    with pytest.raises(ValueError, match="channel_mult"):
        ConvAutoencoderConfig(name="conv", channel_mult=[])
