"""The N-d DiT denoiser (plugin ``mmldm_dit``): parity with diffusers' DiT at dims=2, adaLN-Zero identity
start, N-d patches and position embeddings, conditioning paths and the errors that name their keys.
(The generic denoiser contract over dims 1, 2, 3 is in tests/test_contracts.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmldm.interfaces import Conditioning, Denoiser
from mmldm.plugins import registry
from mmldm_dit.config import DiTConfig
from mmldm_dit.dit import DiT, build_dit
from mmldm_dit.patches import Patches, PositionEmbedding, sincos_1d

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(hidden_size=24, depth=2, num_heads=2, patch_size=[2])
SIZE = {1: (8,), 2: (4, 8), 3: (4, 4, 8)}
B, C = 2, 3


def make(dims, kinds=(), **kw):
    extra = {"context_dim": 6 if "crossattn" in kinds else None, "concat_channels": 2 if "concat" in kinds else 0,
             "vector_dim": 5 if "vector" in kinds else None}
    return build_dit(DiTConfig(name="dit", **{**TINY, **kw}), dims=dims, in_channels=C, out_channels=C, **extra)


def inputs(dims, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, C, *SIZE[dims], generator=g)
    cond = Conditioning(crossattn=torch.randn(B, 4, 6, generator=g), concat=torch.randn(B, 2, *SIZE[dims], generator=g),
                        vector=torch.randn(B, 5, generator=g))
    return z, torch.tensor([3.0, 750.5]), cond


def randomize(model: nn.Module, seed=0, scale=0.2) -> nn.Module:
    """Undo the zero-initializations so every parameter influences the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


# ------------------------------------------------------------------------------------- parity with diffusers
def copy_weights(dit: DiT, class_table: torch.Tensor, ref: nn.Module) -> None:
    """Load an mmldm DiT (dims=2, vector conditioning) into diffusers' ``DiTTransformer2DModel``.

    ``class_table`` ``[K + 1, d_vec]``: the class conditioner's embeddings (row ``K`` the null class). diffusers
    keeps a label table ``[K + 1, D]`` and a timestep MLP in every block (all equal after its conversion of the
    original DiT); mmldm shares one of each and gets the class as ``conditioning.vector``, projected by
    ``vector_embed``, so the diffusers table is that projection of the conditioner's rows. Patch embedding:
    diffusers' stride-p convolution ``[D, C, p, p]`` is mmldm's linear over ``(p, p, C)`` patches.
    """
    d, (p, q) = dit.x_embed.out_features, dit.patches.size
    with torch.no_grad():
        conv = ref.pos_embed.proj
        conv.weight.copy_(dit.x_embed.weight.reshape(d, p, q, -1).permute(0, 3, 1, 2))
        conv.bias.copy_(dit.x_embed.bias)
        labels = dit.vector_embed(class_table)  # (K + 1, D)
        for ours, theirs in zip(dit.blocks, ref.transformer_blocks):
            emb = theirs.norm1.emb
            emb.timestep_embedder.linear_1.load_state_dict(dit.time_embed.mlp[0].state_dict())
            emb.timestep_embedder.linear_2.load_state_dict(dit.time_embed.mlp[2].state_dict())
            emb.class_embedder.embedding_table.weight.copy_(labels)
            theirs.norm1.linear.load_state_dict(ours.modulation.state_dict())
            for name in ("to_q", "to_k", "to_v"):
                getattr(theirs.attn1, name).load_state_dict(getattr(ours.attn, name).state_dict())
            theirs.attn1.to_out[0].load_state_dict(ours.attn.to_out.state_dict())
            theirs.ff.net[0].proj.load_state_dict(ours.mlp[0].state_dict())
            theirs.ff.net[2].load_state_dict(ours.mlp[2].state_dict())
        ref.proj_out_1.load_state_dict(dit.final.modulation.state_dict())
        ref.proj_out_2.load_state_dict(dit.final.linear.state_dict())


def test_matches_diffusers_dit_on_copied_weights():
    """Class-conditional, adaLN-Zero, sin-cos positions: the same outputs as diffusers' DiT (float32)."""
    diffusers = pytest.importorskip("diffusers")
    k, size, patch, dim, heads, depth = 5, 8, 2, 32, 2, 2
    conditioner = registry().build("conditioner", {"name": "class", "num_classes": k, "embed_dim": 16,
                                                   "outputs": ["vector"]}).eval()
    dit = randomize(build_dit(DiTConfig(name="dit", hidden_size=dim, depth=depth, num_heads=heads, patch_size=[patch]),
                              dims=2, in_channels=4, out_channels=4, vector_dim=16), scale=0.1).eval()
    assert dit.context_dim is None and all(b.cross_attn is None for b in dit.blocks)  # class-only: no cross-attn
    ref = diffusers.DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=dim // heads, in_channels=4, out_channels=4, num_layers=depth,
        sample_size=size, patch_size=patch, num_embeds_ada_norm=k, norm_eps=1e-6,  # DiT's LayerNorms: eps 1e-6
    ).eval()
    copy_weights(dit, conditioner.embedding.weight, ref)

    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(3, 4, size, size, generator=g), torch.tensor([1.0, 500.0, 999.0])
    labels = torch.tensor([0, 3, -1])  # -1: dropped, the null class (row k in both)
    with torch.no_grad():
        ours = dit(z, t, conditioner({"class": labels}, 3))
        theirs_quirk = ref(z, t, class_labels=torch.tensor([0, 3, k])).sample
        # diffusers' DiT timestep features divide the frequency exponent by (half - 1) (downscale_freq_shift=1);
        # the original DiT (and mmldm.nn.timestep_embedding) by half. Align the reference with the original.
        for block in ref.transformer_blocks:
            block.norm1.emb.time_proj.downscale_freq_shift = 0
        theirs = ref(z, t, class_labels=torch.tensor([0, 3, k])).sample
    assert ours.shape == theirs.shape == z.shape and ours.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert not torch.allclose(ours, theirs_quirk, rtol=0, atol=1e-5)  # the one deviation matters, and is the only one


def test_sincos_positions_at_dims_2_are_dits_table():
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    table = PositionEmbedding(2, 32)((6, 6), torch.device("cpu"), torch.float32)
    torch.testing.assert_close(table[0], get_2d_sincos_pos_embed(32, 6, base_size=6).float())


# ------------------------------------------------------------------------------------- model behaviour
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_blocks_start_as_identity_and_the_untrained_model_predicts_zero(dims):
    model = make(dims, ("crossattn", "concat", "vector"))
    assert isinstance(model, Denoiser) and model.dims == dims
    z, t, cond = inputs(dims)
    x, c_act = torch.randn(B, 10, 24), torch.randn(B, 24)
    for block in model.blocks:
        torch.testing.assert_close(block(x, c_act, cond.crossattn), x, rtol=0, atol=0)
    out = model(z, t, cond)
    assert out.shape == z.shape and out.abs().max() == 0
    out.sum().backward()
    assert model.final.linear.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_patchify_round_trip_and_token_layout(dims):
    patches = Patches((2, 1, 4)[:dims])
    x = torch.randn(B, C, *SIZE[dims])
    grid = patches.grid(x.shape[2:])
    tokens = patches.patchify(x)
    assert tokens.shape == (B, torch.Size(grid).numel(), patches.volume * C)
    torch.testing.assert_close(patches.unpatchify(tokens, grid), x, rtol=0, atol=0)
    # the last token is the last patch, features (p_0, ..., p_{d-1}, C) with channels fastest
    last = x[(..., *[slice(-p, None) for p in patches.size])]  # (B, C, *p)
    torch.testing.assert_close(tokens[:, -1], last.movedim(1, -1).reshape(B, -1))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_sincos_splits_the_width_across_axes_and_learned_starts_equal(dims):
    grid = (3, 4, 5)[:dims]
    fixed = PositionEmbedding(dims, 26)(grid, torch.device("cpu"), torch.float32)[0]  # 26: a remainder for dims 2, 3
    assert fixed.shape == (torch.Size(grid).numel(), 26)
    width = 2 * (26 // (2 * dims))
    cells = torch.stack(torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij"), -1).reshape(-1, dims)
    for block, axis in enumerate(reversed(range(dims))):  # the last axis first, as DiT's 2-D table
        part = fixed[:, block * width:(block + 1) * width]
        torch.testing.assert_close(part, sincos_1d(width, cells[:, axis]).float())
    assert fixed[:, dims * width:].abs().sum() == 0
    learned = PositionEmbedding(dims, 26, learned=True, max_positions=8)
    torch.testing.assert_close(learned(grid, torch.device("cpu"), torch.float32)[0], fixed)
    learned(grid, torch.device("cpu"), torch.float32).square().sum().backward()
    assert all(t.grad is not None and t.grad[: max(grid)].abs().sum() > 0 for t in learned.tables)


@pytest.mark.parametrize("dims", [1, 3])
def test_each_conditioning_path_changes_the_output_and_reaches_its_gradient(dims):
    model = randomize(make(dims, ("crossattn", "concat", "vector"))).eval()
    z, t, cond = inputs(dims)
    for _, v in cond.items():
        v.requires_grad_(True)
    base = model(z, t, cond)
    base.square().mean().backward()
    assert all(v.grad.abs().sum() > 0 for _, v in cond.items())
    for kind in ("crossattn", "concat", "vector"):
        other = Conditioning(**{k: v.detach() for k, v in cond.items()})
        setattr(other, kind, getattr(other, kind) + 1.0)
        assert not torch.allclose(model(z, t, other), base), kind


def test_unconditional_and_vector_only_models_build_no_cross_attention():
    for kinds in ((), ("vector",)):
        model = make(2, kinds)
        assert all(b.cross_attn is None and b.norm_cross is None for b in model.blocks)
        z, t, cond = inputs(2)
        assert model(z, t, Conditioning(vector=cond.vector if kinds else None)).shape == z.shape
    assert all(b.cross_attn is not None for b in make(2, ("crossattn",)).blocks)


@pytest.mark.parametrize("dims", [2, 3])
def test_checkpointing_gives_equal_outputs_and_gradients(dims):
    plain = randomize(make(dims, ("crossattn", "vector")))
    ckpt = make(dims, ("crossattn", "vector"), use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    z, t, cond = inputs(dims)
    cond.concat = None
    out_a, out_b = plain(z, t, cond), ckpt(z, t, cond)
    torch.testing.assert_close(out_a, out_b)
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_per_axis_patch_sizes_and_other_output_channels():
    model = build_dit(DiTConfig(name="dit", **{**TINY, "patch_size": [1, 2, 4]}), dims=3, in_channels=3, out_channels=5)
    out = randomize(model)(torch.randn(1, 3, 3, 4, 8), torch.tensor([10.0]))
    assert out.shape == (1, 5, 3, 4, 8)


def test_clear_errors():
    model = make(2, ("crossattn", "concat", "vector"))
    z, t, cond = inputs(2)
    with pytest.raises(ValueError, match="conditioning.crossattn is None"):
        model(z, t, Conditioning(concat=cond.concat, vector=cond.vector))
    with pytest.raises(ValueError, match=r"latent shape \(3, 5, 8\): spatial size \(5, 8\) is not divisible by "
                                         r"denoiser.patch_size=\[2, 2\] \(axis 0: 5 % 2 != 0\)"):
        make(2)(torch.randn(B, C, 5, 8), t)
    with pytest.raises(ValueError, match=r"expected z_t of shape \[B, 3, \*spatial\] with 2 spatial dims"):
        model(torch.randn(B, C, 4, 4, 4), t, cond)
    with pytest.raises(ValueError, match=r"denoiser.patch_size=\[1, 2\] has 2 entries for 3-D latents"):
        make(3, patch_size=[1, 2])
    with pytest.raises(ValueError, match="exceeds denoiser.max_positions=2"):
        make(1, pos_embed="learned", max_positions=2)(torch.randn(B, C, 8), t)
    with pytest.raises(ValueError, match="denoiser.hidden_size=24 is not divisible by denoiser.num_heads=5"):
        DiTConfig(name="dit", hidden_size=24, num_heads=5)
    with pytest.raises(ValueError, match="invalid value 'rope' for config key 'denoiser.pos_embed'"):
        DiTConfig(name="dit", pos_embed="rope")


# ------------------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("modality", ["image", "voxel", "audio"])
def test_denoiser_dit_composes_with_each_modality_preset(modality):
    from mmldm.configuration import validate

    cfg = validate([f"modality={modality}", "denoiser=dit"]).config
    assert cfg.denoiser.name == "dit" and list(cfg.denoiser.patch_size) == [2]


def test_a_patch_size_that_does_not_divide_the_latents_fails_before_training():
    from mmldm.build import build_modality
    from mmldm.configuration import compose
    from mmldm.training.preflight import PreflightError, check_run

    cfg = compose(["modality=image", "modality.num_samples=8", "autoencoder.channels=8", "denoiser=dit",
                   "denoiser.hidden_size=24", "denoiser.depth=1", "denoiser.num_heads=2", "denoiser.patch_size=[3]"])
    with pytest.raises(PreflightError, match=r"cannot take latents of shape \[4, 8, 8\].*spatial size \(8, 8\) is not "
                                             r"divisible by denoiser.patch_size=\[3, 3\]"):
        check_run(cfg, build_modality(cfg.modality))


@pytest.mark.parametrize("preset", ["image", "voxel", "voxel_quick", "voxel_2d", "audio", "audio_fsdd",
                                    "audio_fsdd_text", "image_text"])
@pytest.mark.parametrize("denoiser", ["dit", "unet"])
def test_every_preset_composes_with_every_denoiser(preset, denoiser):
    """A preset selects denoiser options rather than setting one denoiser's keys, so a denoiser chosen on the
    command line replaces the preset's whole (``preset=voxel_quick denoiser=dit`` failed with "Key
    'channel_mult' not in 'DiTConfig'")."""
    from mmldm.configuration import compose

    cfg = compose([f"modality={preset.split('_')[0]}", f"preset={preset}", f"denoiser={denoiser}"])
    assert cfg.denoiser.name == denoiser
