"""Contract tests every implementation of a component kind must pass, for plugin authors to reuse.

In the manner of diffusers' ``SchedulerCommonTest``: a plugin's test module
subclasses a contract, implements ``build`` and inherits every check::

    from mmldm.testing import AutoencoderContract

    class TestMyAutoencoder(AutoencoderContract):
        def build(self, dims):
            return MyAutoencoder(dims=dims, in_channels=self.in_channels, ...)

Each test method taking a ``dims`` argument runs once per entry of
``dims_to_test`` (1, 2 and 3 by default; set it on the subclass to narrow
that). pytest finds the contracts' ``pytest_generate_tests`` method itself;
this module imports pytest only inside the checks that need it, so it is not
a runtime dependency of mmldm.
"""

from __future__ import annotations

import torch

from mmldm.interfaces import Autoencoder, Regularizer


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
