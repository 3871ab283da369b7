"""Contract tests of the N-d U-Net denoiser over dims 1, 2 and 3."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmldm.interfaces import Conditioning, Denoiser
from mmldm.plugins import load_plugins
from mmldm_unet.config import UNetConfig
from mmldm_unet.unet import UNet, build_unet

TINY = dict(model_channels=8, channel_mult=[1, 2], num_res_blocks=1, attention_levels=[1], num_heads=2)
SIZE = {1: (8,), 2: (4, 4), 3: (4, 4, 4)}
B, C = 2, 3


pytestmark = pytest.mark.usefixtures("one_thread")


def make(dims, conditioned, **kw):
    extra = dict(context_dim=6, concat_channels=2, vector_dim=5) if conditioned else {}
    return build_unet(UNetConfig(name="unet", **{**TINY, **kw}), dims=dims, in_channels=C, out_channels=C, **extra)


def inputs(dims, conditioned, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, C, *SIZE[dims], generator=g)
    t = torch.tensor([3.0, 750.5])
    cond = Conditioning(
        crossattn=torch.randn(B, 4, 6, generator=g), concat=torch.randn(B, 2, *SIZE[dims], generator=g),
        vector=torch.randn(B, 5, generator=g),
    ) if conditioned else None
    return z, t, cond


def randomize(model: nn.Module, seed=0) -> nn.Module:
    """Undo zero-initializations so every parameter influences the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("conditioned", [False, True])
def test_shape_and_zero_initialized_output(dims, conditioned):
    model = make(dims, conditioned)
    assert isinstance(model, Denoiser) and model.dims == dims
    z, t, cond = inputs(dims, conditioned)
    out = model(z, t, cond)
    assert out.shape == z.shape
    assert out.abs().max() == 0  # zero-init output conv: the untrained model predicts 0
    out.sum().backward()
    assert model.out[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("conditioned", [False, True])
def test_gradients_reach_every_parameter_and_the_conditioning(dims, conditioned):
    model = randomize(make(dims, conditioned))
    z, t, cond = inputs(dims, conditioned)
    if cond is not None:
        for _, v in cond.items():
            v.requires_grad_(True)
    model(z, t, cond).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing
    if cond is not None:
        assert all(v.grad.abs().sum() > 0 for _, v in cond.items())


@pytest.mark.parametrize("dims", [1, 3])
def test_conditioning_changes_the_output(dims):
    model = randomize(make(dims, True)).eval()
    z, t, cond = inputs(dims, True)
    base = model(z, t, cond)
    for kind in ("crossattn", "concat", "vector"):
        other = Conditioning(**{k: v for k, v in cond.items()})
        setattr(other, kind, getattr(cond, kind) + 1.0)
        assert not torch.allclose(model(z, t, other), base), kind


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_checkpointing_gives_equal_outputs_and_gradients(dims):
    plain = randomize(make(dims, True))
    ckpt = make(dims, True, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    z, t, cond = inputs(dims, True)
    out_a, out_b = plain(z, t, cond), ckpt(z, t, cond)
    torch.testing.assert_close(out_a, out_b)
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_gives_equal_outputs(dims):
    plain = randomize(make(dims, True)).eval()
    fast = make(dims, True, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    assert fast.out[-1].weight.is_contiguous(memory_format=fmt)
    z, t, cond = inputs(dims, True)
    torch.testing.assert_close(fast(z, t, cond), plain(z, t, cond), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_spatial_transformer_projections_equal_their_1x1_convolutions(dims, channels_last):
    """proj_in/proj_out are stored as 1x1 convolutions and applied as matrix products on tokens:
    outputs, input gradients and weight gradients equal the convolution formulation, in either layout."""
    from einops import rearrange

    from mmldm.nn.attention import SpatialTransformer

    block = randomize(SpatialTransformer(dims, 16, heads=2, context_dim=6))
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(B, 16, *SIZE[dims], generator=g), torch.randn(B, 4, 6, generator=g)
    if channels_last and dims > 1:
        x = x.to(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)

    def by_convolutions(x):
        h = rearrange(block.proj_in(block.norm(x)), "b c ... -> b (...) c")
        for b in block.blocks:
            h = b(h, context)
        return x + block.proj_out(h.transpose(1, 2).reshape(x.shape).contiguous())

    grads = []
    for fn in (block, by_convolutions):
        xi = x.detach().clone().requires_grad_(True)
        out = fn(xi, context) if fn is block else fn(xi)
        if fn is block:
            assert out.stride() == x.stride()  # the output keeps the input's memory layout
        block.zero_grad()
        out.square().sum().backward()
        grads.append((out.detach(), xi.grad, block.proj_in.weight.grad.clone(), block.proj_out.weight.grad.clone(),
                      block.proj_out.bias.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dims,channels_last", [(1, False), (2, False), (2, True), (3, False), (3, True)])
def test_upsample_as_transposed_convolution_equals_nearest_then_conv(dims, channels_last):
    """The stride-2 transposed convolution with the derived 4-tap kernel computes nearest x2 + 3-conv:
    outputs and the gradients of input, weight and bias agree (float64, to rounding)."""
    from mmldm.nn import Upsample

    up = randomize(Upsample(dims, 6, 5)).double()
    x0 = torch.randn(B, 6, *[3 + i for i in range(dims)], generator=torch.Generator().manual_seed(2),
                     dtype=torch.float64)  # odd and unequal sides
    if channels_last:
        x0 = x0.to(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
    results = []
    for method in ("interpolate", "transposed"):
        up.method = method
        x = x0.clone().requires_grad_(True)
        out = up(x)
        up.zero_grad()
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
        results.append((out.detach(), x.grad, up.conv.weight.grad.clone(), up.conv.bias.grad.clone()))
    assert results[0][0].shape == (B, 5, *[2 * (3 + i) for i in range(dims)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_upsample_method_auto_follows_the_cost_rule_and_bad_methods_are_named():
    from mmldm.nn import Upsample, transposed_upsample_pays, upsample_conv

    # 2D from 250 positions (batch x input cells), 3D from 120, 1D from 700
    assert not transposed_upsample_pays(torch.empty(2, 4, 8, 8)) and transposed_upsample_pays(torch.empty(4, 4, 8, 8))
    assert not transposed_upsample_pays(torch.empty(1, 4, 4, 4, 4)) and transposed_upsample_pays(torch.empty(2, 4, 4, 4, 4))
    assert not transposed_upsample_pays(torch.empty(4, 4, 128)) and transposed_upsample_pays(torch.empty(4, 4, 256))
    up = randomize(Upsample(2, 4))
    x = torch.randn(4, 4, 8, 8)
    for batch, taken, avoided in ((4, "conv_transpose2d", "interpolate"), (2, "interpolate", "conv_transpose2d")):
        calls = []
        with _Record(calls):
            up(x[:batch])
        assert getattr(torch.nn.functional, taken) in calls and getattr(torch.nn.functional, avoided) not in calls
    up.method = "bicubic"
    with pytest.raises(ValueError, match="method='bicubic' is not valid"):
        up(x)
    with pytest.raises(ValueError, match="method='bicubic' is not valid; choose one of: auto, transposed, interpolate"):
        Upsample(2, 4, method="bicubic")
    with pytest.raises(ValueError, match=r"needs a 3-tap kernel over 2 axes, got weight shape \(4, 4, 1, 1\)"):
        upsample_conv(x, torch.zeros(4, 4, 1, 1), None)


class _Record(torch.overrides.TorchFunctionMode):
    """Records the torch functions called inside the block."""

    def __init__(self, calls: list):
        super().__init__()
        self.calls = calls

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls.append(func)
        return func(*args, **(kwargs or {}))


def test_head_dim_sets_the_number_of_heads():
    model = make(2, False, head_dim=4)
    attn = model.mid.layers[1].blocks[0].attn1
    assert attn.heads == 16 // 4
    with pytest.raises(ValueError, match="head_dim=3 does not divide the 16 channels"):
        make(2, False, head_dim=3)


def test_clear_errors():
    model = make(2, True)
    z, t, cond = inputs(2, True)
    with pytest.raises(ValueError, match="conditioning.concat is None"):
        model(z, t, Conditioning(crossattn=cond.crossattn, vector=cond.vector))
    with pytest.raises(ValueError, match=r"must be divisible by 2"):
        model(torch.randn(B, C, 5, 4), t, cond)
    with pytest.raises(ValueError, match=r"expected z_t of shape \[B, 3, \*spatial\] with 2 spatial dims"):
        model(torch.randn(B, C, 4, 4, 4), t, cond)
    with pytest.raises(ValueError, match="attention_levels .* contains 2"):
        make(1, False, attention_levels=[2])


@pytest.mark.parametrize("name,dims", [("unet", 2), ("unet1d", 1), ("unet2d", 2), ("unet3d", 3), ("unet3d", 1)])
def test_registered_names_build_the_same_class_with_dims_from_the_call(name, dims):
    registry = load_plugins(report=False).registry
    cfg = {"name": name, "model_channels": 8, "channel_mult": [1, 2], "attention_levels": [1], "head_dim": None}
    model = registry.build("denoiser", cfg, dims=dims, in_channels=2, out_channels=4, context_dim=None,
                           concat_channels=0, vector_dim=None)
    assert type(model) is UNet and model.dims == dims
    assert model(torch.randn(1, 2, *[4] * dims), torch.tensor([10.0])).shape == (1, 4, *[4] * dims)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_additive_time_conditioning_adds_before_the_second_norm(dims):
    from mmldm.nn import ResBlock

    torch.manual_seed(0)
    block = randomize(ResBlock(dims, 8, 16, emb_channels=12, scale_shift=False, groups=4))
    assert block.emb.out_features == 16  # one projection, not a scale and a shift
    x, emb = torch.randn(B, 8, *SIZE[dims]), torch.randn(B, 12)
    h = block.conv1(torch.nn.functional.silu(block.norm1(x)))
    h = h + block.emb(torch.nn.functional.silu(emb)).reshape(B, 16, *[1] * dims)
    expected = block.skip(x) + block.conv2(torch.nn.functional.silu(block.norm2(h)))
    torch.testing.assert_close(block(x, emb), expected)
    with torch.no_grad():  # a term equal over each group is removed by GroupNorm: the time has no effect
        block.emb.weight.zero_()
        block.emb.bias.fill_(0.7)
        out = block(x, emb)
        block.emb.bias.zero_()
    torch.testing.assert_close(out, block(x, emb))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_unet_time_conditioning_option_builds_additive_blocks_and_trains(dims):
    # 64 channels: GroupNorm's 32 groups hold 2 channels each (with 1 per group it removes an added term)
    scale_shift = make(dims, True, model_channels=64)
    additive = make(dims, True, model_channels=64, time_conditioning="additive")
    per_block = [(a.emb.out_features, b.emb.out_features) for a, b in zip(
        (m for m in scale_shift.modules() if getattr(m, "emb", None) is not None and hasattr(m, "scale_shift")),
        (m for m in additive.modules() if getattr(m, "emb", None) is not None and hasattr(m, "scale_shift")))]
    assert per_block and all(s == 2 * a for s, a in per_block)
    model = randomize(additive)
    z, t, cond = inputs(dims, True)
    model(z, t, cond).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    t2 = torch.tensor([500.0, 20.0])
    with torch.no_grad():
        assert not torch.allclose(model(z, t, cond), model(z, t2, cond))  # the time reaches the output


def test_time_conditioning_is_checked_when_the_config_is_built():
    with pytest.raises(ValueError, match="time_conditioning.*scale_shift, additive|time_conditioning.*'sum'"):
        UNetConfig(name="unet", time_conditioning="sum")
