"""The 3D peer of the U-Net speed benchmark: mmldm's U-Net against MONAI's ``DiffusionModelUNet`` (fast)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

pytest.importorskip("monai")

from benchmarks import unet_vs_monai as uvm  # noqa: E402
from benchmarks.unet_vs_diffusers import check_parameter_counts  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ARCH = uvm.QUICK


def _copied_pair(arch=ARCH):
    """Both networks, MONAI's weights copied into mmldm's, and a no-grad forward of each on one input."""
    torch.manual_seed(0)
    peer, ours = uvm.build_peer(arch), uvm.build_mmldm(arch)
    x, t, context, _ = uvm.make_inputs(arch)
    run_peer = lambda: uvm.caller(peer, uvm.PEER)(x, t, context)  # noqa: E731
    run_ours = lambda: uvm.caller(ours, "mmldm")(x, t, context)  # noqa: E731
    uvm.copy_weights(peer, ours, run_peer, run_ours)
    return peer, ours, run_peer, run_ours


def _outputs(run_ours, run_peer):
    with torch.no_grad():
        return run_ours(), run_peer()


def test_the_interface_the_harness_reads():
    assert uvm.PEER == "monai"
    json.dumps(uvm.DEFAULT.as_dict())
    assert (uvm.DEFAULT.batch, uvm.DEFAULT.latent_channels, uvm.DEFAULT.resolution) == (32, 4, 8)  # the voxel preset
    x, t, context, target = uvm.make_inputs(ARCH)
    assert x.shape == target.shape == (ARCH.batch, ARCH.latent_channels, *[ARCH.resolution] * 3)
    assert t.shape == (ARCH.batch,) and t.dtype == torch.float32
    assert context.shape == (ARCH.batch, ARCH.tokens, ARCH.context_dim)
    assert uvm.describe(uvm.DEFAULT).endswith(".") and "[32, 64, 192]" in uvm.describe(uvm.DEFAULT)
    with pytest.raises(ValueError, match="side"):
        uvm.caller(torch.nn.Identity(), "diffusers")


def test_quick_pair_is_within_one_percent_and_differs_only_by_the_time_projections():
    ours, peer = uvm.build_mmldm(ARCH), uvm.build_peer(ARCH)
    counts = check_parameter_counts(ours, peer, peer_name=uvm.PEER)
    assert 0 < counts["mmldm"] - counts[uvm.PEER] < 0.01 * counts[uvm.PEER]
    x, t, context, _ = uvm.make_inputs(ARCH)
    models = {"mmldm": ours, uvm.PEER: peer}
    projections = {side: uvm.time_projections(m, lambda m=m, s=side: uvm.caller(m, s)(x, t, context))
                   for side, m in models.items()}
    assert [len(v) for v in projections.values()] == [8, 8]  # one per ResBlock: 1 + 1 down, 2 middle, 2 + 2 up
    skipped = {side: {id(p) for layer in layers for p in layer.parameters()} for side, layers in projections.items()}
    shapes = {side: sorted(tuple(p.shape) for p in m.parameters() if id(p) not in skipped[side])
              for side, m in models.items()}
    assert shapes["mmldm"] == shapes[uvm.PEER]  # every other layer has its twin
    assert all(b.out_features == 2 * a.out_features for a, b in zip(projections[uvm.PEER], projections["mmldm"]))


def test_outputs_agree_once_the_time_projections_are_zeroed():
    peer, ours, run_peer, run_ours = _copied_pair()
    a, b = _outputs(run_ours, run_peer)
    assert a.shape == b.shape == (ARCH.batch, ARCH.latent_channels, *[ARCH.resolution] * 3)
    assert b.abs().mean() > 1e-2  # build_peer re-draws MONAI's zero-initialized layers: a real comparison
    assert (a - b).abs().max() > 1e-2  # the documented difference: scale-shift after the norm vs additive before
    for layer in uvm.time_projections(peer, run_peer) + uvm.time_projections(ours, run_ours):
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.zero_()
    a, b = _outputs(run_ours, run_peer)
    # Same function, different float32 summation orders (mmldm's transposed-conv upsampler, its
    # 1x1 projections as matmuls): measured 1e-6 on outputs of mean size 0.2, so 1e-5 leaves 10x room.
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_monai_adds_the_time_term_before_the_norm_and_mmldm_after_it():
    peer, ours, run_peer, run_ours = _copied_pair()
    with torch.no_grad():
        for layer in uvm.time_projections(peer, run_peer):
            layer.weight.zero_()
            layer.bias.zero_()
        before = run_peer()
        for layer in uvm.time_projections(peer, run_peer):
            layer.bias.fill_(0.5)  # a time term equal in every channel: GroupNorm subtracts it again
    uvm.copy_weights(peer, ours, run_peer, run_ours)  # into mmldm's shift rows, after its norm
    a, b = _outputs(run_ours, run_peer)
    torch.testing.assert_close(b, before, rtol=1e-5, atol=1e-5)
    assert (a - b).abs().max() > 1e-2


@pytest.mark.parametrize("arch", [replace(ARCH, channel_mult=(1, 2)), uvm.PRESET], ids=["narrow", "preset"])
def test_check_parameter_counts_raises_on_a_mismatched_pair(arch):
    # The scale-shift projections are 1.4% or more of a U-Net whose coarsest level is at most 4x the first,
    # the voxel preset's included: why DEFAULT and QUICK widen that level.
    with pytest.raises(RuntimeError, match="not matched"):
        check_parameter_counts(uvm.build_mmldm(arch), uvm.build_peer(arch), peer_name=uvm.PEER)
