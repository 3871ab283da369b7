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

Installing mmldm installs a pytest plugin (:mod:`mmldm.pytest_plugin`, entry-point group ``pytest11``)
that registers this module for pytest's assertion rewriting, so a failing check in a plugin's test
suite shows the values it compared, with no ``conftest.py`` needed. Every check carries its own
message as well, for runs without pytest.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import torch

from mmldm.interfaces import Autoencoder, Conditioning, Modality, Regularizer


class DimsContract:
    """Base of the contracts: runs every test with a ``dims`` argument over :attr:`dims_to_test`.

    Attributes:
        dims_to_test (`tuple[int, ...]`): the spatial dimensions each ``dims`` check runs with.
    """

    dims_to_test: tuple[int, ...] = (1, 2, 3)

    def pytest_generate_tests(self, metafunc) -> None:  # type: ignore[no-untyped-def]
        """pytest hook (called per test of the class): parametrize ``dims`` as ``1d``, ``2d``, ..."""
        if "dims" in metafunc.fixturenames:
            metafunc.parametrize("dims", self.dims_to_test, ids=[f"{d}d" for d in self.dims_to_test])


class AutoencoderContract(DimsContract):
    """Checks every :class:`~mmldm.interfaces.Autoencoder` must pass. Subclass and implement :meth:`build`.

    Inputs are ``[2, in_channels, *([size] * dims)]`` uniform in [0, 1).

    Attributes:
        in_channels (`int`): channels of the inputs.
        size (`int`): spatial size per axis, a multiple of the downsampling factor.
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
        assert out.reconstruction.shape == x.shape, (
            f"reconstruction {tuple(out.reconstruction.shape)} is not the input's shape {tuple(x.shape)}")
        latent = (2, *model.latent_shape(x.shape[1:]))
        assert out.z.shape == latent, f"z {tuple(out.z.shape)} is not latent_shape(...) {latent}"
        assert out.loss.ndim == 0 and torch.isfinite(out.loss), f"loss {out.loss} is not a finite scalar"
        grads = [k for k, v in out.logs.items() if v.requires_grad]
        assert not grads, f"logs {grads} require grad (detach them)"

    def test_latent_shape(self, dims):
        model = self.make(dims)
        f = model.downsample_factor
        expected = (model.latent_channels, *([self.size // f] * dims))
        got = model.latent_shape((self.in_channels, *([self.size] * dims)))
        assert got == expected, f"latent_shape gave {got}, not (latent_channels, *size // downsample_factor) {expected}"
        posterior = model.encode(self.data(dims))
        shapes = tuple(posterior.mode().shape), tuple(posterior.sample().shape)
        assert shapes[0] == shapes[1] == (2, *expected), f"posterior mode/sample shapes {shapes}, not {(2, *expected)}"
        assert posterior.kl().shape == (2,), f"kl() has shape {tuple(posterior.kl().shape)}, not one value per sample"

    def test_encode_decode_round_trip_shape(self, dims):
        model, x = self.make(dims), self.data(dims)
        out = model.decode(model.encode(x).mode())
        assert out.shape == x.shape, f"decode(encode(x).mode()) has shape {tuple(out.shape)}, not {tuple(x.shape)}"

    def test_posterior_declares_its_spread(self, dims):
        """``is_stochastic`` and ``std`` say how phase 2 reads the posterior (the latent cache stores
        ``mode()`` and ``std`` and draws ``mode() + std * eps``): a point mass samples its mode with zero std,
        a stochastic posterior draws around its mode with the std it declares."""
        with torch.no_grad():
            posterior = self.make(dims).encode(self.data(dims, batch=64))
            mode, std = posterior.mode(), posterior.std
            assert std.shape == mode.shape, f"std {tuple(std.shape)} is not the mode's shape {tuple(mode.shape)}"
            assert torch.isfinite(std).all() and (std >= 0).all(), "std must be finite and >= 0"
            draws = [posterior.sample(torch.Generator().manual_seed(s)) for s in (0, 1)]
        if not posterior.is_stochastic:
            assert torch.equal(std, torch.zeros_like(mode)), "a posterior with is_stochastic=False declares std > 0"
            assert all(torch.equal(d, mode) for d in draws), "a posterior with is_stochastic=False samples off its mode"
            return
        assert not torch.equal(draws[0], draws[1]), "a stochastic posterior drew the same sample twice"
        eps = (draws[0] - mode) / std.clamp_min(1e-12)
        spread = float(eps.std())
        assert abs(spread - 1.0) < 0.1, f"samples spread around mode() by {spread:.3f} times the declared std, not 1"

    def test_last_layer_is_a_parameter_of_the_model(self, dims):
        """``last_layer`` (the adaptive GAN weight's reference) is ``None`` or one of the model's parameters."""
        model = self.make(dims)
        layer = model.last_layer
        known = layer is None or any(layer is p for p in model.parameters())
        assert known, "last_layer is not a parameter of the model"

    def test_gradients_reach_encoder(self, dims):
        model, x = self.make(dims), self.data(dims)
        out = model(x)
        ((out.reconstruction - x).abs().sum() + out.loss).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None for g in grads[:2]), "first encoder parameters got no gradient"
        assert grads[0].abs().sum() > 0, "the first encoder parameter got an all-zero gradient"

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

    Attributes:
        latent_channels (`int`): latent channels the regularizer is built for.
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
        assert out.z.shape == latent, f"z has shape {tuple(out.z.shape)}, not {latent}"
        assert out.loss.ndim == 0, f"loss has shape {tuple(out.loss.shape)}, not a scalar"
        dist = reg.distribution(h)
        shapes = tuple(dist.sample().shape), tuple(dist.mode().shape), tuple(dist.kl().shape)
        assert shapes == (latent, latent, (4,)), f"sample, mode and kl shapes {shapes}, not {(latent, latent, (4,))}"
        got = tuple(reg.decoder_input(dist.mode()).shape)
        assert got == latent, f"decoder_input has shape {got}, not {latent}"
        bad = [k for k, v in out.logs.items() if v.ndim != 0 or v.requires_grad]
        assert not bad, f"logs {bad} are not detached scalars"

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

    ``in_channels`` counts the latent channels only, never the concat-conditioning channels, here as in a
    run (:func:`mmldm.build.build_denoiser` passes the latent's ``c`` as ``in_channels`` and
    ``out_channels``, and the sum of the conditioners' ``concat_channels`` as ``concat_channels``). A
    denoiser built with ``concat_channels > 0`` stacks ``conditioning.concat [B, concat_channels, *s]``
    onto ``z_t [B, in_channels, *s]`` itself, so its first layer takes ``in_channels + concat_channels``
    channels (the built-in U-Net and DiT do so), and returns ``out_channels`` channels.

    Attributes:
        in_channels (`int`): channels of ``z_t`` and of the output, without the concat channels.
        size (`int`): latent size per axis, divisible by the denoiser's total downsampling.
        context_dim (`int`): ``d_tau`` of the cross-attention tokens ``[B, tokens, context_dim]``.
        tokens (`int`): ``M``, cross-attention tokens per sample.
        concat_channels (`int`): channels of ``conditioning.concat``, which the denoiser stacks onto ``z_t``.
        vector_dim (`int`): features of ``conditioning.vector [B, vector_dim]``.
        conditioning_kinds (`tuple[str, ...]`): the kinds the denoiser takes, of ``crossattn``, ``concat``
            and ``vector``; each is checked to reach the output.
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
        assert out.shape == z.shape and out.dtype == z.dtype, (
            f"output {tuple(out.shape)} {out.dtype} for z_t {tuple(z.shape)} {z.dtype}")
        assert torch.isfinite(out).all(), "the output has NaN or Inf"

    def test_each_conditioning_kind_reaches_the_output(self, dims):
        for kind in self.conditioning_kinds:
            model = _perturbed(self.make(dims, (kind,)))
            z, t, cond = self.inputs(dims)
            other = self.inputs(dims, seed=2)[2]
            with torch.no_grad():
                a = model(z, t, Conditioning(**{kind: getattr(cond, kind)}))
                b = model(z, t, Conditioning(**{kind: getattr(other, kind)}))
            assert a.shape == z.shape, f"with {kind} conditioning: output {tuple(a.shape)} for z_t {tuple(z.shape)}"
            assert not torch.allclose(a, b), f"changing conditioning.{kind} does not change the output"

    def test_timestep_reaches_the_output(self, dims):
        model = _perturbed(self.make(dims))
        z, t, _ = self.inputs(dims)
        with torch.no_grad():
            same = torch.allclose(model(z, t, None), model(z, (t + 300) % 1000, None))
        assert not same, "changing t does not change the output"

    def test_samples_in_a_batch_are_independent(self, dims):
        """Guidance batches cond and uncond together: a sample must not see its neighbours."""
        model = _perturbed(self.make(dims, self.conditioning_kinds))
        z, t, cond = self.inputs(dims)
        with torch.no_grad():
            both = model(z, t, cond)
            first = model(z[:1], t[:1], Conditioning(**{k: v[:1] for k, v in cond.items()}))
        torch.testing.assert_close(both[:1], first, rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"sample 0 changes when sample 1 is in its batch: {m}")

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

    Attributes:
        batch (`int`): samples per call.
        latent_channels (`int`): channels of the latent the conditioner is told.
        latent_size (`int`): its size per axis (concat maps must have it).
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
        parts = {k for k, _ in conditioning.items()}
        assert parts == set(conditioner.outputs), (
            f"the conditioning has {sorted(parts)}, outputs declares {conditioner.outputs}")
        if conditioning.crossattn is not None:
            shape = tuple(conditioning.crossattn.shape)
            assert len(shape) == 3 and shape[::2] == (b, conditioner.context_dim), (
                f"crossattn has shape {shape}, not [batch={b}, M, context_dim={conditioner.context_dim}]")
        if conditioning.concat is not None:
            want = (b, conditioner.concat_channels, *([self.latent_size] * dims))
            assert conditioning.concat.shape == want, f"concat has shape {tuple(conditioning.concat.shape)}, not {want}"
        if conditioning.vector is not None:
            want = (b, conditioner.vector_dim)
            assert conditioning.vector.shape == want, f"vector has shape {tuple(conditioning.vector.shape)}, not {want}"

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
        sizes = {k: v.shape[0] for k, v in stacked.items()}
        assert all(n == 2 * self.batch for n in sizes.values()), f"stacked batch sizes {sizes}, not {2 * self.batch}"

    def test_an_augmented_training_value_is_accepted(self, dims):
        """Phase 2 gives the denoiser :meth:`~mmldm.interfaces.Conditioner.augment`'s value in training."""
        conditioner = self.make(dims)
        torch.manual_seed(0)
        value = conditioner.augment(self.condition(dims, self.batch, 0), self.batch)
        with torch.no_grad():
            self.check_layout(conditioner, conditioner({conditioner.key: value}, self.batch), dims)

    def test_missing_key_means_null(self, dims):
        conditioner = self.make(dims)
        with torch.no_grad():
            a, b = conditioner({}, self.batch), conditioner.null(self.batch)
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):
            assert ka == kb, f"a missing key gives part {ka!r} where null() gives {kb!r}"
            torch.testing.assert_close(va, vb, msg=lambda m: f"a missing key is not null() in part {ka!r}: {m}")

    def test_the_condition_changes_the_output(self, dims):
        conditioner = self.make(dims)
        with torch.no_grad():
            a = conditioner({conditioner.key: self.condition(dims, self.batch, 0)}, self.batch)
            b = conditioner({conditioner.key: self.condition(dims, self.batch, 1)}, self.batch)
        changed = any(not torch.equal(va, vb) for (_, va), (_, vb) in zip(a.items(), b.items()))
        assert changed, "two different conditions (seeds 0 and 1 of condition()) gave the same conditioning"

    def test_wrong_batch_size_names_the_key(self, dims):
        import pytest

        conditioner = self.make(dims)
        with pytest.raises(ValueError, match=rf"cond\['{conditioner.key}'\]"):
            conditioner({conditioner.key: self.condition(dims, self.batch, 0)}, self.batch + 1)

    def test_listed_values_are_accepted_and_distinct(self, dims):
        """:meth:`~mmldm.interfaces.Conditioner.values` (what ``LatentDiffusion.classify`` chooses among) lists
        values the conditioner takes, each for a whole batch, giving different conditionings; or is ``None``."""
        conditioner = self.make(dims)
        values = conditioner.values()
        if values is None:
            return
        values = list(values)
        assert values, "values() lists no value; return None when the values are not few"
        with torch.no_grad():
            outs = [conditioner({conditioner.key: torch.full((self.batch,), v) if isinstance(v, int) else [v] * self.batch},
                                self.batch) for v in values[:2]]
        for out in outs:
            self.check_layout(conditioner, out, dims)
        if len(outs) == 2:
            assert any(not torch.equal(a, b) for (_, a), (_, b) in zip(*(o.items() for o in outs))), (
                f"values {values[:2]} give the same conditioning")


class ModalityContract:
    """Checks every :class:`~mmldm.interfaces.Modality` must pass. Subclass and implement :meth:`build`
    (keep the data tiny: the checks read :attr:`num_items` items of each split).

    Attributes:
        num_items (`int`): items read from each split.
    """

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
        assert m.name and m.dims in (1, 2, 3), f"name {m.name!r} and dims {m.dims}: a name and dims 1, 2 or 3"
        assert len(m.sample_shape) == m.dims + 1 and m.sample_shape[0] == m.channels, (
            f"sample_shape {tuple(m.sample_shape)} is not (channels={m.channels}, *{m.dims} spatial sizes)")

    def test_items_follow_the_batch_contract(self):
        from torch.utils.data import default_collate

        m = self.build()
        for split in ("train", "val"):
            items = self.items(m, split)
            assert len(items) >= (2 if split == "train" else 1), f"split '{split}' is too small for these checks"
            for item in items:
                x = item["x"]
                assert x.shape == m.sample_shape, f"{split} item x {tuple(x.shape)}, not sample_shape {m.sample_shape}"
                assert x.is_floating_point() and torch.isfinite(x).all(), f"{split} item x: not finite floats"
                assert isinstance(item["cond"], dict), f"{split} item cond is a {type(item['cond']).__name__}"
                if "class" in item["cond"]:
                    label = int(item["cond"]["class"])
                    assert 0 <= label < m.num_classes, f"class {label} is outside [0, num_classes={m.num_classes})"
            collated = tuple(default_collate(items)["x"].shape)
            assert collated == (len(items), *m.sample_shape), f"{split} items collate to {collated}"

    def test_unknown_split_is_an_error(self):
        import pytest

        with pytest.raises(ValueError, match="nope"):
            self.build().dataset("nope")

    def test_save_writes_files(self, tmp_path):
        m = self.build()
        paths = [Path(p) for p in m.save(self.batch(m), tmp_path / "out", prefix="check")]
        assert paths, "save() returned no paths"
        empty = [str(p) for p in paths if not p.is_file() or p.stat().st_size == 0]
        assert not empty, f"save() returned missing or empty files: {empty}"
        stray = [str(p) for p in paths if p.parent != tmp_path / "out" or not p.name.startswith("check")]
        assert not stray, f"files outside the directory or without the prefix 'check': {stray}"

    def test_reconstruction_metrics_tell_copies_from_others(self):
        m = self.build()
        x = self.batch(m)
        same, other = m.reconstruction_metrics(x, x), m.reconstruction_metrics(x, x.roll(1, dims=0))
        assert same and set(same) == set(other), f"metrics {sorted(same)} vs {sorted(other)}: the same non-empty keys"
        assert all(isinstance(v, float) for v in same.values()), f"metrics must be floats: {same}"
        assert any(same[k] != other[k] for k in same), f"a copy and another sample score the same: {same}"

    def test_postprocess_keeps_the_shape(self):
        m = self.build()
        x = self.batch(m)
        out = m.postprocess(x)
        assert out.shape == x.shape, f"postprocess changed the shape {tuple(x.shape)} to {tuple(out.shape)}"

    def test_finalize_keeps_the_shape_and_is_idempotent(self):
        m = self.build()
        x = m.postprocess(self.batch(m))
        final = m.finalize(x)
        assert final.shape == x.shape and final.dtype == x.dtype, (
            f"finalize turned {tuple(x.shape)} {x.dtype} into {tuple(final.shape)} {final.dtype}")
        assert torch.equal(m.finalize(final), final), "finalize(finalize(x)) differs from finalize(x)"

    def test_state_dict_round_trip(self):
        from omegaconf import OmegaConf

        m = self.build()
        self.items(m)  # statistics measured on the data exist after first use
        state = OmegaConf.to_container(OmegaConf.create(m.state_dict()))  # plain data: fits config.yaml
        other = self.build()
        other.load_state_dict(state)
        loaded = OmegaConf.to_container(OmegaConf.create(other.state_dict()))
        assert loaded == state, f"state_dict after load_state_dict: {loaded}, loaded from {state}"


class SamplerContract(DimsContract):
    """Checks every sampler function must pass, called the way a run and :meth:`mmldm.LatentDiffusion.sample`
    call it. Subclass and implement :meth:`build`, returning the function; set :attr:`config` to your
    sampler's config when it has options.

    :func:`~mmldm.diffusion.sampling.sample_latents` calls
    ``sampler(model, x, sigmas, generator=generators, disable=True, **options)``:

    - ``generators`` is a *list* with one ``torch.Generator`` per sample
      (:func:`~mmldm.diffusion.sampling.sample_generators`; the starting noise ``x`` was drawn from them
      already), or ``None`` when no seed is given; ``DiffusionModule.sample`` may also pass one generator.
      Draw noise with :func:`mmldm.diffusion.samplers.randn` (``randn(x.shape, x, generator)``), which takes
      all three and draws row ``i`` from ``generators[i]``; ``torch.randn(..., generator=generators)`` fails;
    - ``options`` are the fields of the sampler's config beyond ``name``, ``steps`` and ``spacing``
      (``eta`` of :class:`~mmldm.diffusion.config.DDIMConfig`): the config must derive from
      :class:`~mmldm.diffusion.config.SamplerConfig`, and each extra field reaches the sampler as a keyword
      argument of the same name (:func:`~mmldm.diffusion.sampling.sampler_settings`).

    The model is the exact denoiser of Gaussian data ``N(0, data_std^2)``,
    ``D(x, sigma) = x data_std^2 / (data_std^2 + sigma^2)``: a correct sampler
    turns noise into samples with that standard deviation.

    Attributes:
        config (`SamplerConfig`, *optional*): the sampler's config, an instance of the class it is registered
            with (``DDIMConfig(eta=1.0)``); its fields beyond ``name``, ``steps`` and ``spacing`` reach the
            sampler as keyword arguments, as in a run. None (the default) passes none.
        data_std (`float`): standard deviation of the Gaussian data.
        steps (`int`): sampler steps of the checks (Karras et al. 2022 sigmas from 80 to 0.002, then 0).
        tolerance (`float`): relative error allowed on the samples' standard deviation.
    """

    data_std = 0.5
    steps = 50
    tolerance = 0.2  #: relative error allowed on the sample std (DDPM's fixed-small variance is ~12% low at 50 steps)
    config: Any = None  #: the sampler's config; its fields beyond name, steps and spacing are the sampler's options

    def build(self):  # type: ignore[no-untyped-def]
        """The sampler function ``(model, x, sigmas, extra_args, callback, disable, generator, **options)``."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The keyword options a run passes the sampler: :attr:`config`'s fields beyond ``name``, ``steps`` and
        ``spacing``, through :func:`~mmldm.diffusion.sampling.sampler_settings` as the pipeline takes them."""
        if self.config is None:
            return {}
        from mmldm.diffusion.sampling import sampler_settings

        settings = sampler_settings(dataclasses.asdict(self.config))
        return {k: v for k, v in settings.items() if k not in ("sampler", "steps", "spacing")}

    def sample(self, model, x: torch.Tensor, sigmas: torch.Tensor, generator=None,  # type: ignore[no-untyped-def]
               **kwargs) -> torch.Tensor:
        """Call the sampler as :func:`~mmldm.diffusion.sampling.sample_latents` does (``kwargs``:
        ``extra_args``, ``callback``), with :meth:`options`."""
        try:
            return self.build()(model, x, sigmas, generator=generator, disable=True, **self.options(), **kwargs)
        except TypeError as e:
            if not isinstance(generator, list) or "generator" not in str(e):
                raise
            raise AssertionError(
                "the sampler fails with a list of generators, one per sample, which is what a run passes: draw "
                "noise with mmldm.diffusion.samplers.randn(x.shape, x, generator), which takes a list, one "
                f"generator or None ({type(e).__name__}: {str(e).splitlines()[0]})") from e

    def sigmas(self) -> torch.Tensor:
        """Karras et al. 2022 spacing from 80 to 0.002, then 0."""
        ramp = torch.linspace(0, 1, self.steps, dtype=torch.float64)
        sigmas = (80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        return torch.cat([sigmas, sigmas.new_zeros(1)]).float()

    def gaussian(self, x: torch.Tensor, sigma: torch.Tensor, **extra) -> torch.Tensor:  # type: ignore[no-untyped-def]
        var = self.data_std**2
        return x * (var / (var + sigma**2)).reshape(-1, *([1] * (x.ndim - 1)))

    def generators(self, seed: int, n: int) -> list[torch.Generator]:
        """One generator per sample, seeded from ``(seed, i)`` as ``LatentDiffusion.sample(seed=...)`` seeds them."""
        from mmldm.diffusion.sampling import sample_generators

        return sample_generators(seed, n)

    def draw(self, dims: int, seed: int = 0, n: int = 256, rows: Sequence[int] | None = None) -> torch.Tensor:
        """Samples ``[len(rows), 2, *([4] * dims)]`` of :meth:`gaussian`, sample ``j`` drawn with the generator of
        sample ``rows[j]`` of ``n`` (all ``n`` in order by default): starting noise, then the sampler, as a run."""
        from mmldm.diffusion.sampling import initial_noise

        generators = self.generators(seed, n)
        generators = generators if rows is None else [generators[i] for i in rows]
        sigmas = self.sigmas()
        x = initial_noise((len(generators), 2, *([4] * dims)), generators, sigmas.device, sigmas.dtype) * sigmas[0]
        return self.sample(self.gaussian, x, sigmas, generators)

    def test_config_is_a_sampler_config(self):
        """A sampler config derives from ``SamplerConfig``: else ``sampler.steps`` is not a key of it."""
        from mmldm.diffusion.config import SamplerConfig

        assert self.config is None or isinstance(self.config, SamplerConfig), (
            f"{type(self.config).__name__} does not derive from mmldm.diffusion.config.SamplerConfig: "
            "`sampler.steps` and `sampler.spacing` would be unknown keys of a run with this sampler")

    def test_gaussian_data_gets_its_standard_deviation(self, dims):
        out = self.draw(dims)
        assert out.shape == (256, 2, *([4] * dims)), f"the sampler returned shape {tuple(out.shape)}"
        assert torch.isfinite(out).all(), "the sampler returned NaN or Inf"
        std, mean = float(out.std()), float(out.mean())
        assert abs(std / self.data_std - 1) < self.tolerance, (
            f"samples of N(0, {self.data_std}^2) have std {std:.4f}, off by more than {self.tolerance:.0%}")
        assert abs(mean) < self.tolerance * self.data_std, f"samples of N(0, {self.data_std}^2) have mean {mean:.4f}"

    def test_a_point_mass_is_reached_exactly(self, dims):
        target = torch.full((2, 1, *([4] * dims)), 0.3)
        generators = self.generators(0, 2)
        x = torch.randn(target.shape, generator=torch.Generator().manual_seed(0)) * 80
        out = self.sample(lambda x, sigma: target, x, self.sigmas(), generators)
        error = float((out - target).abs().max())
        assert error <= 1e-4, f"a model that always predicts 0.3 gave samples up to {error:.3g} away from it"

    def test_each_sample_is_reproducible_from_its_own_generator(self, dims):
        """Sample ``i`` of a seeded call depends on its own generator only, as the pipeline promises
        (``LatentDiffusion.sample(n, seed=s)``: sample ``i`` is the same for any ``n > i``): the same
        generators give the same samples in another batch, in another order, whatever the global RNG."""
        torch.manual_seed(100)
        full = self.draw(dims, seed=3, n=6)
        torch.manual_seed(200)  # a sampler drawing from torch's global RNG differs here
        again = self.draw(dims, seed=3, n=6)
        part = self.draw(dims, seed=3, n=6, rows=[4, 1])
        same = torch.equal(full, again)
        assert same, "two calls with the same generators differ: noise drawn from the global RNG, not `generator`?"
        diff = float((part - full[[4, 1]]).abs().max())
        assert diff <= 1e-5, (
            f"samples 4 and 1 drawn alone differ from the same samples in a batch of 6 by {diff:.3g}: draw the "
            "noise of row i from generator[i] (mmldm.diffusion.samplers.randn does)")

    def test_no_generator_or_one_generator_also_work(self, dims):
        """``generator=None`` (a call without a seed) and one ``torch.Generator`` (``DiffusionModule.sample``)."""
        sigmas = self.sigmas()[-6:]  # a few small steps
        x = torch.randn(3, 1, *([4] * dims), generator=torch.Generator().manual_seed(0)) * sigmas[0]
        for generator in (None, torch.Generator().manual_seed(1)):
            out = self.sample(self.gaussian, x.clone(), sigmas, generator)
            assert out.shape == x.shape and torch.isfinite(out).all(), f"generator={generator!r}: bad samples"

    def test_extra_args_reach_the_model(self, dims):
        seen: list[dict] = []
        self.sample(lambda x, sigma, **extra: seen.append(extra) or x * 0, torch.randn(1, 1, *([4] * dims)),
                    self.sigmas(), self.generators(0, 1), extra_args={"conditioning": "c"})
        assert seen, "the sampler never called the model"
        wrong = [e for e in seen if e != {"conditioning": "c"}]
        assert not wrong, f"the model got keyword arguments {wrong[0]}, not extra_args {{'conditioning': 'c'}}"

    def test_callback_sees_every_step(self, dims):
        steps: list[int] = []
        self.sample(self.gaussian, torch.randn(2, 1, *([4] * dims)) * 80, self.sigmas(), self.generators(0, 2),
                    callback=lambda info: steps.append(info["i"]))
        assert steps == list(range(self.steps)), f"the callback saw steps {steps}, not 0..{self.steps - 1}"


    def test_inpainting_keeps_the_known_region(self, dims):
        """Masked sampling (:func:`mmldm.editing.masked_sample`, what ``LatentDiffusion.inpaint`` runs with any
        sampler) keeps the known latent where the mask is 0 and samples the rest: the sampler must step towards
        the denoised estimate, which the masking replaces by the known latent in the kept region."""
        from mmldm.editing import masked_sample

        n = 128
        known = torch.linspace(-1, 1, 2 * 4**dims).reshape(1, 2, *([4] * dims)).expand(n, -1, *([-1] * dims))
        mask = torch.zeros(n, 1, *([4] * dims))
        mask[:, :, 2:] = 1  # the second half along the first spatial axis is generated
        # the third case adds reconstruction guidance: this model's cells are independent, so its correction of
        # the generated region is 0 and the same checks hold
        for resample, jump_length, guidance in ((1, 1, 0.0), (2, 3, 0.0), (1, 1, 1.0)):
            out = masked_sample(self.build(), self.gaussian, known, mask, self.sigmas(), self.generators(0, n),
                                resample=resample, jump_length=jump_length, reconstruction_guidance=guidance,
                                **self.options())
            assert out.shape == known.shape and torch.isfinite(out).all(), f"bad inpainted samples (resample={resample})"
            kept = float(((out - known) * (1 - mask)).abs().max())
            assert kept <= 1e-4, (f"resample={resample}: the kept region moved by up to {kept:.3g} from the known "
                                  "latent: the sampler must step towards the denoised estimate D(x, sigma)")
            generated = out[:, :, 2:]
            std = float(generated.std())
            assert abs(std / self.data_std - 1) < self.tolerance, (
                f"resample={resample}: the generated region of N(0, {self.data_std}^2) data has std {std:.4f}")


class ProcessContract(DimsContract):
    """Checks every diffusion process (:class:`mmldm.diffusion.process.Process`) must pass. Subclass and
    implement :meth:`build`.

    The training draw and the sampling view must describe one process: at the draw's noise level the
    preconditioning maps the network input and the regression target back to the clean latent
    (``c_skip x_t / c_in + c_out target == z0``, with the same ``c_noise``), so a network that learned the
    target is the denoiser the samplers need. Sigma grids descend to 0 and stay finite; the loss is the
    weighted MSE of the draw; the generator alone decides the draw.

    Attributes:
        exact_below (`float`): noise levels above this are where a process may only approximate ``z0``
            (a zero-terminal-SNR step).
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
        assert noised.x_t.shape == noised.target.shape == z0.shape, (
            f"x_t {tuple(noised.x_t.shape)} and target {tuple(noised.target.shape)}, not z0's {tuple(z0.shape)}")
        per_sample = {k: tuple(getattr(noised, k).shape) for k in ("c_noise", "weight", "sigma")}
        assert set(per_sample.values()) == {(64,)}, f"shapes {per_sample}, not one value per sample (64,)"
        assert all(torch.isfinite(v).all() for v in noised), "the draw has NaN or Inf"
        assert (noised.weight >= 0).all() and (noised.sigma >= 0).all(), "negative weight or sigma"
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
                assert sigmas.shape == (steps + 1,) and sigmas.dtype == torch.float64 and sigmas[-1] == 0, (
                    f"sigmas({steps}, {spacing!r}): {tuple(sigmas.shape)} {sigmas.dtype}, last {float(sigmas[-1])}; "
                    f"want ({steps + 1},) float64 ending in 0")
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
        assert oracle.abs().max() == 0, f"predicting the target exactly gives loss {oracle.tolist()}, not 0"
