"""The 3D peer of the U-Net speed benchmark: mmldm's U-Net against MONAI's ``DiffusionModelUNet`` (fast)."""

from __future__ import annotations

import json

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
    assert uvm.describe(uvm.DEFAULT).endswith(".") and "[32, 64, 128]" in uvm.describe(uvm.DEFAULT)
    with pytest.raises(ValueError, match="side"):
        uvm.caller(torch.nn.Identity(), "diffusers")


def test_the_pairs_hold_the_same_parameters_layer_for_layer():
    for arch in (ARCH, uvm.DEFAULT):
        ours, peer = uvm.build_mmldm(arch), uvm.build_peer(arch)
        counts = check_parameter_counts(ours, peer, peer_name=uvm.PEER)
        assert counts["mmldm"] == counts[uvm.PEER]
        shapes = {side: sorted(tuple(p.shape) for p in m.parameters()) for side, m in (("mmldm", ours), ("p", peer))}
        assert shapes["mmldm"] == shapes["p"]
    assert uvm.DEFAULT.channel_mult == (1, 2, 4)  # the voxel preset's U-Net, not a widened one


def test_outputs_agree_on_copied_weights():
    peer, ours, run_peer, run_ours = _copied_pair()
    a, b = _outputs(run_ours, run_peer)
    assert a.shape == b.shape == (ARCH.batch, ARCH.latent_channels, *[ARCH.resolution] * 3)
    assert b.abs().mean() > 1e-2  # build_peer re-draws MONAI's zero-initialized layers: a real comparison
    # Same function, different float32 summation orders (mmldm's transposed-conv upsampler, its
    # 1x1 projections as matmuls): measured 8e-7 on outputs of mean size 0.2, so 1e-5 leaves 10x room.
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_time_term_enters_before_the_norm_on_both_sides():
    peer, ours, run_peer, run_ours = _copied_pair()
    with torch.no_grad():
        projections = [m.time_emb_proj for m in peer.modules() if hasattr(m, "time_emb_proj")]
        assert len(projections) == 8  # one per ResBlock: 1 + 1 down, 2 middle, 2 + 2 up
        for layer in projections:
            layer.weight.zero_()
            layer.bias.zero_()
        before = run_peer()
        for layer in projections:
            layer.bias.fill_(0.5)  # a time term equal in every channel: GroupNorm subtracts it again
    uvm.copy_weights(peer, ours, run_peer, run_ours)
    a, b = _outputs(run_ours, run_peer)
    torch.testing.assert_close(b, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_compare_reports_the_pair():
    r = uvm.compare(ARCH)
    assert r["parameter_gap"] == 0.0 and r["max_abs_output_difference"] < 1e-5 and r["output_abs_mean"] > 1e-2
