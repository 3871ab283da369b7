"""Contract tests every implementation of a component kind must pass, for plugin authors to reuse.

In the manner of diffusers' ``SchedulerCommonTest``: a plugin's test module
subclasses a contract, implements ``build`` and inherits every check::

    from mmldm.testing import AutoencoderContract

    class TestMyAutoencoder(AutoencoderContract):
        def build(self, dims):
            return MyAutoencoder(dims=dims, in_channels=self.in_channels, ...)

One contract per component kind, and what a subclass implements:

- ``AutoencoderContract``: ``build(dims)`` returning an ``Autoencoder``;
- ``RegularizerContract``: ``build()`` returning a ``Regularizer``;
- ``DenoiserContract``: ``build(**factory_kwargs)`` returning a ``Denoiser``;
- ``ConditionerContract``: ``build(dims)`` and ``condition(dims, batch, seed)``;
- ``ModalityContract``: ``build()`` returning a ``Modality``;
- ``SamplerContract``: ``build()`` returning the sampler function;
- ``ProcessContract``: ``build()`` returning a diffusion ``Process``.

Each test method taking a ``dims`` argument runs once per entry of
``dims_to_test`` (1, 2 and 3 by default; set it on the subclass to narrow
that). pytest finds the contracts' ``pytest_generate_tests`` method itself;
this module imports pytest only inside the checks that need it, so it is not
a runtime dependency of mmldm.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmldm.interfaces import Autoencoder, Conditioning, Modality, Regularizer


class DimsContract:
    """Base of the contracts: runs every test with a ``dims`` argument over :attr:`dims_to_test`."""

    dims_to_test: tuple[int, ...] = (1, 2, 3)

    def pytest_generate_tests(self, metafunc) -> None:  # type: ignore[no-untyped-def]
        """pytest hook (called per test of the class): parametrize ``dims`` as ``1d``, ``2d``, ..."""
        if "dims" in metafunc.fixturenames:
            metafunc.parametrize("dims", self.dims_to_test, ids=[f"{d}d" for d in self.dims_to_test])


class AutoencoderContract(DimsContract):
    """Checks every :class:`~mmldm.interfaces.Autoencoder` must pass. Subclass and implement :meth:`build`.

    Inputs are ``[2, in_channels, *([size] * dims)]`` uniform in [0, 1).
    """

    in_channels = 2
    size = 8  #: spatial size per axis, a multiple of the downsampling factor

    def build(self, dims: int) -> Autoencoder:
        """A fresh autoencoder for ``dims`` spatial axes and :attr:`in_channels` channels."""
        raise NotImplementedError

    def make(self, dims: int) -> Autoencoder:
        """:meth:`build` under ``torch.manual_seed(0)``."""
        torch.manual_seed(0)
        return self.build(dims)

    def data(self, dims: int, batch: int = 2) -> torch.Tensor:
        return torch.rand(batch, self.in_channels, *([self.size] * dims), generator=torch.Generator().manual_seed(1))

    def test_forward_shapes(self, dims):
        model, x = self.make(dims), self.data(dims)
        out = model(x)
        assert out.reconstruction.shape == x.shape
        assert out.z.shape == (2, *model.latent_shape(x.shape[1:]))
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        assert all(not v.requires_grad for v in out.logs.values())

    def test_latent_shape(self, dims):
        model = self.make(dims)
        f = model.downsample_factor
        expected = (model.latent_channels, *([self.size // f] * dims))
        assert model.latent_shape((self.in_channels, *([self.size] * dims))) == expected
        posterior = model.encode(self.data(dims))
        assert posterior.mode().shape == posterior.sample().shape == (2, *expected)
        assert posterior.kl().shape == (2,)

    def test_encode_decode_round_trip_shape(self, dims):
        model, x = self.make(dims), self.data(dims)
        assert model.decode(model.encode(x).mode()).shape == x.shape

    def test_posterior_declares_its_spread(self, dims):
        """``is_stochastic`` and ``std`` say how phase 2 reads the posterior (the latent cache stores
        ``mode()`` and ``std`` and draws ``mode() + std * eps``): a point mass samples its mode with zero std,
        a stochastic posterior draws around its mode with the std it declares."""
        with torch.no_grad():
            posterior = self.make(dims).encode(self.data(dims, batch=64))
            mode, std = posterior.mode(), posterior.std
            assert std.shape == mode.shape and torch.isfinite(std).all() and (std >= 0).all()
            draws = [posterior.sample(torch.Generator().manual_seed(s)) for s in (0, 1)]
        if not posterior.is_stochastic:
            assert torch.equal(std, torch.zeros_like(mode)) and all(torch.equal(d, mode) for d in draws)
            return
        assert not torch.equal(draws[0], draws[1]), "a stochastic posterior drew the same sample twice"
        eps = (draws[0] - mode) / std.clamp_min(1e-12)
        assert abs(float(eps.std()) - 1.0) < 0.1, "samples do not spread around mode() by the declared std"

    def test_last_layer_is_a_parameter_of_the_model(self, dims):
        """``last_layer`` (the adaptive GAN weight's reference) is ``None`` or one of the model's parameters."""
        model = self.make(dims)
        layer = model.last_layer
        assert layer is None or any(layer is p for p in model.parameters())

    def test_gradients_reach_encoder(self, dims):
        model, x = self.make(dims), self.data(dims)
        out = model(x)
        ((out.reconstruction - x).abs().sum() + out.loss).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None for g in grads[:2]), "first encoder parameters got no gradient"
        assert grads[0].abs().sum() > 0

    def test_state_dict_round_trip(self, dims):
        model, x = self.make(dims), self.data(dims)
        torch.manual_seed(123)
        other = self.build(dims)
        other.load_state_dict(model.state_dict())
        model.eval(), other.eval()
        with torch.no_grad():
            a = model.decode(model.encode(x).mode())
            b = other.decode(other.encode(x).mode())
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    def test_divisibility_error_names_both_numbers(self, dims):
        import pytest

        model = self.make(dims)
        f = model.downsample_factor
        bad = self.size + 1
        with pytest.raises(ValueError, match=rf"{bad}.*f={f}"):
            model.latent_shape((self.in_channels, *([bad] * dims)))
        with pytest.raises(ValueError, match=str(bad)):
            model.encode(torch.zeros(1, self.in_channels, *([bad] * dims)))


class RegularizerContract(DimsContract):
    """Checks every :class:`~mmldm.interfaces.Regularizer` must pass. Subclass and implement :meth:`build`.

    Encoder features are ``[4, latent_channels * encoder_channel_factor, *([4] * dims)]``.
    """

    latent_channels = 3

    def build(self) -> Regularizer:
        """A fresh regularizer for :attr:`latent_channels` latent channels."""
        raise NotImplementedError

    def features(self, reg: Regularizer, dims: int, batch: int = 4) -> torch.Tensor:
        c = self.latent_channels * reg.encoder_channel_factor
        return torch.randn(batch, c, *([4] * dims), generator=torch.Generator().manual_seed(0), requires_grad=True)

    def test_shapes(self, dims):
        reg = self.build()
        h = self.features(reg, dims)
        latent = (4, self.latent_channels, *([4] * dims))
        out = reg(h)
        assert out.z.shape == latent and out.loss.ndim == 0
        dist = reg.distribution(h)
        assert dist.sample().shape == dist.mode().shape == latent and dist.kl().shape == (4,)
        assert reg.decoder_input(dist.mode()).shape == latent
        assert all(v.ndim == 0 and not v.requires_grad for v in out.logs.values())

    def test_wrong_channels_raise(self):
        import pytest

        reg = self.build()
        with pytest.raises(ValueError, match=str(self.latent_channels)):
            reg.distribution(torch.zeros(1, self.latent_channels * reg.encoder_channel_factor + 1, 4))


def _perturbed(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Add ``N(0, scale^2)`` noise to every parameter (seeded), so zero-initialized output layers
    (``zero_module``) no longer hide whether an input reaches the output."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return model


class DenoiserContract(DimsContract):
    """Checks every :class:`~mmldm.interfaces.Denoiser` must pass. Subclass and implement :meth:`build`.

    Latents are ``[2, in_channels, *([size] * dims)]``; conditioning sizes are the
    class attributes below. A denoiser that does not take some conditioning kind
    narrows :attr:`conditioning_kinds`.
    """

    in_channels = 4
    size = 8  #: latent size per axis, divisible by the denoiser's total downsampling
    context_dim = 16  #: ``d_tau`` of the cross-attention tokens
    tokens = 3  #: ``M``, tokens per sample
    concat_channels = 2
    vector_dim = 8
    conditioning_kinds: tuple[str, ...] = ("crossattn", "concat", "vector")

    def build(self, **kwargs) -> torch.nn.Module:  # type: ignore[no-untyped-def]
        """A fresh denoiser built from the registry factory's keyword arguments
        (``dims, in_channels, out_channels, context_dim, concat_channels, vector_dim``)."""
        raise NotImplementedError

    def make(self, dims: int, kinds: tuple[str, ...] = ()) -> torch.nn.Module:
        """:meth:`build` under ``torch.manual_seed(0)`` for the conditioning ``kinds``, in eval mode."""
        torch.manual_seed(0)
        return self.build(
            dims=dims, in_channels=self.in_channels, out_channels=self.in_channels,
            context_dim=self.context_dim if "crossattn" in kinds else None,
            concat_channels=self.concat_channels if "concat" in kinds else 0,
            vector_dim=self.vector_dim if "vector" in kinds else None,
        ).eval()

    def inputs(self, dims: int, seed: int = 1, batch: int = 2):  # type: ignore[no-untyped-def]
        """``(z_t [B, c, *s], t [B], Conditioning with every kind)`` drawn from ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        spatial = [self.size] * dims
        z = torch.randn(batch, self.in_channels, *spatial, generator=gen)
        t = torch.rand(batch, generator=gen) * 999
        cond = Conditioning(
            crossattn=torch.randn(batch, self.tokens, self.context_dim, generator=gen),
            concat=torch.randn(batch, self.concat_channels, *spatial, generator=gen),
            vector=torch.randn(batch, self.vector_dim, generator=gen),
        )
        return z, t, cond

    def test_unconditional_shape(self, dims):
        z, t, _ = self.inputs(dims)
        with torch.no_grad():
            out = self.make(dims)(z, t, None)
        assert out.shape == z.shape and out.dtype == z.dtype and torch.isfinite(out).all()

    def test_each_conditioning_kind_reaches_the_output(self, dims):
        for kind in self.conditioning_kinds:
            model = _perturbed(self.make(dims, (kind,)))
            z, t, cond = self.inputs(dims)
            other = self.inputs(dims, seed=2)[2]
            with torch.no_grad():
                a = model(z, t, Conditioning(**{kind: getattr(cond, kind)}))
                b = model(z, t, Conditioning(**{kind: getattr(other, kind)}))
            assert a.shape == z.shape
            assert not torch.allclose(a, b), f"changing conditioning.{kind} does not change the output"

    def test_timestep_reaches_the_output(self, dims):
        model = _perturbed(self.make(dims))
        z, t, _ = self.inputs(dims)
        with torch.no_grad():
            assert not torch.allclose(model(z, t, None), model(z, (t + 300) % 1000, None))

    def test_samples_in_a_batch_are_independent(self, dims):
        """Guidance batches cond and uncond together: a sample must not see its neighbours."""
        model = _perturbed(self.make(dims, self.conditioning_kinds))
        z, t, cond = self.inputs(dims)
        with torch.no_grad():
            both = model(z, t, cond)
            first = model(z[:1], t[:1], Conditioning(**{k: v[:1] for k, v in cond.items()}))
        torch.testing.assert_close(both[:1], first, rtol=1e-4, atol=1e-5)

    def test_every_parameter_gets_a_gradient(self, dims):
        model = _perturbed(self.make(dims, self.conditioning_kinds)).train()
        z, t, cond = self.inputs(dims)
        model(z, t, cond).square().mean().backward()
        unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, f"parameters without gradient (unused in forward): {unused[:5]}"

    def test_state_dict_round_trip(self, dims):
        model, other = _perturbed(self.make(dims)), self.make(dims)
        other.load_state_dict(model.state_dict())
        z, t, _ = self.inputs(dims)
        with torch.no_grad():
            torch.testing.assert_close(model(z, t, None), other(z, t, None), rtol=0, atol=0)


class ConditionerContract(DimsContract):
    """Checks every :class:`~mmldm.interfaces.Conditioner` must pass. Subclass and implement
    :meth:`build` and :meth:`condition`.

    The conditioner is told the latent shape ``(latent_channels, *([latent_size] * dims))``
    (:meth:`~mmldm.interfaces.Conditioner.set_latent_shape`) before any call.
    """

    batch = 3
    latent_channels = 4
    latent_size = 4

    def build(self, dims: int):  # type: ignore[no-untyped-def]
        """A fresh conditioner, ready to use (fitted, when it learns from data)."""
        raise NotImplementedError

    def condition(self, dims: int, batch: int, seed: int) -> object:
        """The value of ``cond[key]`` for ``batch`` samples; different seeds give different values."""
        raise NotImplementedError

    def make(self, dims: int):  # type: ignore[no-untyped-def]
        """:meth:`build` under ``torch.manual_seed(0)``, told the latent shape, in eval mode."""
        torch.manual_seed(0)
        conditioner = self.build(dims)
        conditioner.set_latent_shape([self.latent_channels, *([self.latent_size] * dims)])
        return conditioner.eval()

    def check_layout(self, conditioner, conditioning, dims: int) -> None:  # type: ignore[no-untyped-def]
        """The parts set are the declared ``outputs``, with the declared sizes."""
        b = self.batch
        assert {k for k, _ in conditioning.items()} == set(conditioner.outputs)
        if conditioning.crossattn is not None:
            assert conditioning.crossattn.ndim == 3 and conditioning.crossattn.shape[::2] == (b, conditioner.context_dim)
        if conditioning.concat is not None:
            assert conditioning.concat.shape == (b, conditioner.concat_channels, *([self.latent_size] * dims))
        if conditioning.vector is not None:
            assert conditioning.vector.shape == (b, conditioner.vector_dim)

    def test_outputs_match_the_declaration(self, dims):
        conditioner = self.make(dims)
        with torch.no_grad():
            self.check_layout(conditioner, conditioner({conditioner.key: self.condition(dims, self.batch, 0)}, self.batch), dims)
            self.check_layout(conditioner, conditioner.null(self.batch), dims)

    def test_null_stacks_with_a_condition(self, dims):
        """Guidance runs cond and uncond in one batch: both must have the same parts and sizes."""
        conditioner = self.make(dims)
        with torch.no_grad():
            cond = conditioner({conditioner.key: self.condition(dims, self.batch, 0)}, self.batch)
            stacked = Conditioning.stack(cond, conditioner.null(self.batch))
        assert all(v.shape[0] == 2 * self.batch for _, v in stacked.items())

    def test_missing_key_means_null(self, dims):
        conditioner = self.make(dims)
        with torch.no_grad():
            a, b = conditioner({}, self.batch), conditioner.null(self.batch)
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):
            assert ka == kb
            torch.testing.assert_close(va, vb)

    def test_the_condition_changes_the_output(self, dims):
        conditioner = self.make(dims)
        with torch.no_grad():
            a = conditioner({conditioner.key: self.condition(dims, self.batch, 0)}, self.batch)
            b = conditioner({conditioner.key: self.condition(dims, self.batch, 1)}, self.batch)
        assert any(not torch.equal(va, vb) for (_, va), (_, vb) in zip(a.items(), b.items()))

    def test_wrong_batch_size_names_the_key(self, dims):
        import pytest

        conditioner = self.make(dims)
        with pytest.raises(ValueError, match=rf"cond\['{conditioner.key}'\]"):
            conditioner({conditioner.key: self.condition(dims, self.batch, 0)}, self.batch + 1)


class ModalityContract:
    """Checks every :class:`~mmldm.interfaces.Modality` must pass. Subclass and implement :meth:`build`
    (keep the data tiny: the checks read :attr:`num_items` items of each split)."""

    num_items = 4

    def build(self) -> Modality:
        """A fresh modality."""
        raise NotImplementedError

    def items(self, modality: Modality, split: str = "train") -> list[dict]:
        ds = modality.dataset(split)
        return [ds[i] for i in range(min(self.num_items, len(ds)))]

    def batch(self, modality: Modality) -> torch.Tensor:
        """``[n, *sample_shape]``: the first items of the train split."""
        return torch.stack([item["x"] for item in self.items(modality)])

    def test_sample_layout(self):
        m = self.build()
        assert m.name and m.dims in (1, 2, 3)
        assert len(m.sample_shape) == m.dims + 1 and m.sample_shape[0] == m.channels

    def test_items_follow_the_batch_contract(self):
        from torch.utils.data import default_collate

        m = self.build()
        for split in ("train", "val"):
            items = self.items(m, split)
            assert len(items) >= (2 if split == "train" else 1), f"split '{split}' is too small for these checks"
            for item in items:
                assert item["x"].shape == m.sample_shape and item["x"].is_floating_point()
                assert torch.isfinite(item["x"]).all() and isinstance(item["cond"], dict)
                if "class" in item["cond"]:
                    assert 0 <= int(item["cond"]["class"]) < m.num_classes
            assert default_collate(items)["x"].shape == (len(items), *m.sample_shape)

    def test_unknown_split_is_an_error(self):
        import pytest

        with pytest.raises(ValueError, match="nope"):
            self.build().dataset("nope")

    def test_save_writes_files(self, tmp_path):
        m = self.build()
        paths = [Path(p) for p in m.save(self.batch(m), tmp_path / "out", prefix="check")]
        assert paths and all(p.is_file() and p.stat().st_size > 0 for p in paths)
        assert all(p.parent == tmp_path / "out" and p.name.startswith("check") for p in paths)

    def test_reconstruction_metrics_tell_copies_from_others(self):
        m = self.build()
        x = self.batch(m)
        same, other = m.reconstruction_metrics(x, x), m.reconstruction_metrics(x, x.roll(1, dims=0))
        assert same and set(same) == set(other) and all(isinstance(v, float) for v in same.values())
        assert any(same[k] != other[k] for k in same)

    def test_postprocess_keeps_the_shape(self):
        m = self.build()
        x = self.batch(m)
        assert m.postprocess(x).shape == x.shape

    def test_finalize_keeps_the_shape_and_is_idempotent(self):
        m = self.build()
        x = m.postprocess(self.batch(m))
        final = m.finalize(x)
        assert final.shape == x.shape and final.dtype == x.dtype
        assert torch.equal(m.finalize(final), final)

    def test_state_dict_round_trip(self):
        from omegaconf import OmegaConf

        m = self.build()
        self.items(m)  # statistics measured on the data exist after first use
        state = OmegaConf.to_container(OmegaConf.create(m.state_dict()))  # plain data: fits config.yaml
        other = self.build()
        other.load_state_dict(state)
        assert OmegaConf.to_container(OmegaConf.create(other.state_dict())) == state


class SamplerContract(DimsContract):
    """Checks every sampler function must pass (the contract of :mod:`mmldm.diffusion.samplers`).
    Subclass and implement :meth:`build`, returning the function.

    The model is the exact denoiser of Gaussian data ``N(0, data_std^2)``,
    ``D(x, sigma) = x data_std^2 / (data_std^2 + sigma^2)``: a correct sampler
    turns noise into samples with that standard deviation.
    """

    data_std = 0.5
    steps = 50
    tolerance = 0.2  #: relative error allowed on the sample std (DDPM's fixed-small variance is ~12% low at 50 steps)

    def build(self):  # type: ignore[no-untyped-def]
        """The sampler function ``(model, x, sigmas, extra_args, callback, disable, generator, **opts)``."""
        raise NotImplementedError

    def sigmas(self) -> torch.Tensor:
        """Karras et al. 2022 spacing from 80 to 0.002, then 0."""
        ramp = torch.linspace(0, 1, self.steps, dtype=torch.float64)
        sigmas = (80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        return torch.cat([sigmas, sigmas.new_zeros(1)]).float()

    def gaussian(self, x: torch.Tensor, sigma: torch.Tensor, **extra) -> torch.Tensor:  # type: ignore[no-untyped-def]
        var = self.data_std**2
        return x * (var / (var + sigma**2)).reshape(-1, *([1] * (x.ndim - 1)))

    def draw(self, dims: int, seed: int = 0, **kwargs) -> torch.Tensor:  # type: ignore[no-untyped-def]
        gen = torch.Generator().manual_seed(seed)
        sigmas = self.sigmas()
        x = torch.randn(256, 2, *([4] * dims), generator=gen) * sigmas[0]
        return self.build()(self.gaussian, x, sigmas, disable=True, generator=gen, **kwargs)

    def test_gaussian_data_gets_its_standard_deviation(self, dims):
        out = self.draw(dims)
        assert out.shape == (256, 2, *([4] * dims)) and torch.isfinite(out).all()
        assert abs(float(out.std()) / self.data_std - 1) < self.tolerance
        assert abs(float(out.mean())) < self.tolerance * self.data_std

    def test_a_point_mass_is_reached_exactly(self, dims):
        target = torch.full((2, 1, *([4] * dims)), 0.3)
        x = torch.randn(target.shape, generator=torch.Generator().manual_seed(0)) * 80
        out = self.build()(lambda x, sigma: target, x, self.sigmas(), disable=True)
        torch.testing.assert_close(out, target, rtol=0, atol=1e-4)

    def test_seeded_runs_repeat_and_extra_args_reach_the_model(self, dims):
        seen: list[dict] = []
        torch.testing.assert_close(self.draw(dims, seed=3), self.draw(dims, seed=3), rtol=0, atol=0)
        self.build()(lambda x, sigma, **extra: seen.append(extra) or x * 0, torch.randn(1, 1, *([4] * dims)),
                     self.sigmas(), extra_args={"conditioning": "c"}, disable=True)
        assert seen and all(e == {"conditioning": "c"} for e in seen)

    def test_callback_sees_every_step(self, dims):
        steps: list[int] = []
        self.build()(self.gaussian, torch.randn(2, 1, *([4] * dims)) * 80, self.sigmas(),
                     callback=lambda info: steps.append(info["i"]), disable=True)
        assert steps == list(range(self.steps))


class ProcessContract(DimsContract):
    """Checks every diffusion process (:class:`mmldm.diffusion.process.Process`) must pass. Subclass and
    implement :meth:`build`.

    The training draw and the sampling view must describe one process: at the draw's noise level the
    preconditioning maps the network input and the regression target back to the clean latent
    (``c_skip x_t / c_in + c_out target == z0``, with the same ``c_noise``), so a network that learned the
    target is the denoiser the samplers need. Sigma grids descend to 0 and stay finite; the loss is the
    weighted MSE of the draw; the generator alone decides the draw.
    """

    #: noise levels above this are where a process may only approximate z0 (a zero-terminal-SNR step)
    exact_below: float = 4000.0

    def build(self):  # type: ignore[no-untyped-def]
        """A fresh process."""
        raise NotImplementedError

    def test_training_draw_and_sampling_view_agree(self, dims):
        process = self.build()
        z0 = torch.randn(64, 2, *[3] * dims, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        noised = process.noise(z0, torch.Generator().manual_seed(1))
        assert noised.x_t.shape == noised.target.shape == z0.shape
        assert noised.c_noise.shape == noised.weight.shape == noised.sigma.shape == (64,)
        assert all(torch.isfinite(v).all() for v in noised) and (noised.weight >= 0).all() and (noised.sigma >= 0).all()
        c_skip, c_out, c_in, c_noise = process.precondition(noised.sigma)
        view = lambda c: c.reshape(-1, *[1] * (z0.ndim - 1))  # noqa: E731
        rebuilt = view(c_skip) * noised.x_t / view(c_in) + view(c_out) * noised.target
        exact = noised.sigma < self.exact_below
        torch.testing.assert_close(rebuilt[exact], z0[exact], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(rebuilt, z0, rtol=0, atol=5e-3)
        torch.testing.assert_close(c_noise, noised.c_noise, rtol=1e-6, atol=1e-6)
        again = process.noise(z0, torch.Generator().manual_seed(1))
        assert all(torch.equal(a, b) for a, b in zip(noised, again)), "the generator must decide the draw"

    def test_sigma_grids_descend_to_zero(self):
        import pytest

        process = self.build()
        for spacing in ("auto", *process.spacings):
            for steps in (1, 2, 7, 50):
                sigmas = process.sigmas(steps, spacing)
                assert sigmas.shape == (steps + 1,) and sigmas.dtype == torch.float64 and sigmas[-1] == 0
                assert torch.isfinite(sigmas).all() and (sigmas.diff() < 0).all(), (spacing, steps, sigmas)
                assert sigmas[0] < 1e4, "x = noise * sigmas[0] must stay finite in float16"
        torch.testing.assert_close(process.sigmas(9), process.sigmas(9, process.spacings[0]))
        with pytest.raises(ValueError, match="not 'even'"):
            process.sigmas(9, "even")

    def test_the_loss_is_the_weighted_mse_of_the_draw(self, dims):
        from mmldm.diffusion.process import diffusion_loss

        process = self.build()
        z0 = torch.randn(6, 2, *[5] * dims, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        noised = process.noise(z0, torch.Generator().manual_seed(4))
        loss = diffusion_loss(lambda x_t, c: 0.5 * x_t, z0, process, torch.Generator().manual_seed(4))
        axes = tuple(range(1, z0.ndim))
        torch.testing.assert_close(loss, ((0.5 * noised.x_t - noised.target) ** 2).mean(dim=axes) * noised.weight)
        oracle = diffusion_loss(lambda x_t, c: noised.target, z0, process, torch.Generator().manual_seed(4))
        assert oracle.abs().max() == 0
