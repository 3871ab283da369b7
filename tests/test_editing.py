"""Editing in latent space (mmldm.editing, LatentDiffusion.inpaint / vary / interpolate) over 1, 2 and 3 spatial
dims: masks carried to latent resolution, the kept region kept, variations and interpolations from the inputs."""

from __future__ import annotations

import pytest
import torch

from mmldm.build import build_autoencoder, build_denoiser, build_modality
from mmldm.configuration import compose
from mmldm.editing import (
    blend, check_mask, interpolation_weights, invert, latent_mask, masked_sample, slerp, strength_sigmas,
)
from mmldm.diffusion.samplers import sample_euler
from mmldm.latents import LatentStats
from mmldm.pipeline import LatentDiffusion
from mmldm.plugins import registry

PIPE_KEYS = ("modality", "autoencoder", "regularizer", "denoiser", "diffusion", "sampler")
#: a tiny model per number of spatial dims: 1d audio (mel bins as channels), 2d image, 3d voxel
MODELS = {
    1: ["modality=audio", "preset=audio_1d", "modality.num_samples=8"],
    2: ["modality=image", "modality.num_samples=8"],
    3: ["modality=voxel", "preset=voxel_quick", "modality.num_shapes=12", "modality.resolution=16"],
}


@pytest.fixture(scope="module", params=sorted(MODELS), ids=[f"{d}d" for d in sorted(MODELS)])
def tiny(request):
    """An untrained model (denoiser weights perturbed so that samples depend on it) and two held-out inputs."""
    torch.manual_seed(0)
    cfg = compose([*MODELS[request.param], "autoencoder.channels=8", "denoiser.model_channels=16"])
    modality = build_modality(cfg.modality)
    autoencoder = build_autoencoder(cfg.autoencoder, cfg.regularizer, modality)
    denoiser = build_denoiser(cfg.denoiser, autoencoder.latent_shape(modality.sample_shape), [])
    with torch.no_grad():
        for p in denoiser.parameters():
            p.add_(0.02 * torch.randn_like(p))
    stats = LatentStats.identity(autoencoder.latent_shape(modality.sample_shape)[0])
    pipe = LatentDiffusion(modality, autoencoder, stats, {k: cfg[k] for k in PIPE_KEYS}, denoiser).eval()
    x = torch.stack([modality.dataset("train")[i]["x"] for i in range(2)])
    assert modality.dims == request.param
    return pipe, x


def first_half_generated(x: torch.Tensor) -> torch.Tensor:
    """A mask ``[1, *s]`` generating the second half along the last spatial axis."""
    mask = torch.zeros(1, *x.shape[2:])
    mask[..., x.shape[-1] // 2:] = 1
    return mask


# ------------------------------------------------------------------ masks
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_latent_mask_rules_on_partly_masked_cells(dims):
    mask = torch.zeros(1, 1, *([8] * dims))
    mask[..., :5] = 1  # along the last axis: latent cell 0 (data 0-3) fully, cell 1 (data 4-7) a quarter
    any_ = latent_mask(mask, [2] * dims, "any")
    all_ = latent_mask(mask, [2] * dims, "all")
    soft = latent_mask(mask, [2] * dims, "soft")
    assert any_.shape == all_.shape == soft.shape == (1, 1, *([2] * dims))
    assert torch.equal(any_[..., 0], torch.ones_like(any_[..., 0])) and torch.equal(any_[..., 1], torch.ones_like(any_[..., 1]))
    assert torch.equal(all_[..., 0], torch.ones_like(all_[..., 0])) and torch.equal(all_[..., 1], torch.zeros_like(all_[..., 1]))
    assert torch.allclose(soft[..., 1], torch.full_like(soft[..., 1], 0.25))


def test_latent_mask_takes_a_location_generated_when_any_channel_is():
    mask = torch.zeros(1, 3, 4, 4)
    mask[0, 2, :2] = 1
    out = latent_mask(mask, [2, 2], "all")
    assert out.shape == (1, 1, 2, 2) and out[0, 0, 0].tolist() == [1, 1] and out[0, 0, 1].tolist() == [0, 0]


def test_mask_errors_name_the_shapes_and_the_values():
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"mask of shape \(1, 8, 4\) does not fit inputs of shape \(2, 3, 8, 8\)"):
        check_mask(torch.zeros(1, 8, 4), x)
    with pytest.raises(ValueError, match=r"values outside \[0, 1\] \(min 0, max 2\).*1 = generate, 0 = keep"):
        check_mask(torch.full((1, 8, 8), 2.0).index_fill(1, torch.tensor([0]), 0), x)
    with pytest.raises(ValueError, match="unknown mask rule 'half'; expected one of any, all, soft"):
        latent_mask(torch.zeros(1, 1, 8, 8), [2, 2], "half")
    assert check_mask(torch.ones(1, 8, 8), x).shape == (2, 1, 8, 8)


# ------------------------------------------------------------------ masked sampling, every sampler
def _gaussian(x, sigma, **extra):
    return x * (0.25 / (0.25 + sigma**2)).reshape(-1, *([1] * (x.ndim - 1)))


@pytest.mark.parametrize("name", ["euler", "heun", "ddim", "ddpm", "dpmpp_2m"])
def test_masked_sampling_starts_from_the_known_latent_noised_and_is_reproducible(name):
    sample_fn = registry().get("sampler", name).resolve()
    known = torch.full((3, 2, 6), 0.4)
    mask = torch.zeros(3, 1, 6)
    mask[..., 3:] = 1
    sigmas = torch.tensor([10.0, 3.0, 1.0, 0.3, 0.0])
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    first = masked_sample(sample_fn, _gaussian, known, mask, sigmas, gens(), resample=2)
    again = masked_sample(sample_fn, _gaussian, known, mask, sigmas, gens(), resample=2)
    assert torch.equal(first, again)
    assert float(((first - known) * (1 - mask)).abs().max()) <= 1e-6
    assert not torch.allclose(first[..., 3:], known[..., 3:])


def test_resampling_calls_the_model_resample_times_per_stretch_but_not_on_the_last():
    calls: list[float] = []

    def model(x, sigma):
        calls.append(float(sigma[0]))
        return x * 0

    sigmas = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.0])
    masked_sample(sample_euler, model, torch.zeros(1, 1, 4), torch.ones(1, 1, 4), sigmas, resample=3, jump_length=2)
    # stretch 8 -> 4 -> 2 taken three times; the last stretch 2 -> 1 -> 0 once
    assert calls == [8.0, 4.0] * 3 + [2.0, 1.0]


def correlated_gaussian_denoiser(rho: float):
    """The exact denoiser ``E[z0 | x]`` of two unit-variance latent cells with correlation ``rho``."""
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)

    def model(x, sigma):
        gain = cov @ torch.linalg.inv(cov + float(sigma[0]) ** 2 * torch.eye(2, dtype=torch.float64))
        return (x.flatten(1) @ gain.T).reshape(x.shape)

    return model


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "ddpm"])
def test_reconstruction_guidance_completes_a_correlated_cell_with_its_conditional_mean(name):
    """Two cells correlated 0.9, the first known (1.5): the second's conditional mean is 0.9 x 1.5 = 1.35.
    Plain replacement leaves it near the prior (it sees the known cell only through the noisy latent);
    ΠGDM's reconstruction guidance at its published weight brings it within 0.15, and the kept cell stays."""
    from mmldm.diffusion.sampling import resolve_sampler

    n, rho = 4000, 0.9
    known = torch.zeros(n, 1, 2, dtype=torch.float64)
    known[..., 0] = 1.5
    mask = torch.zeros(n, 1, 2, dtype=torch.float64)
    mask[..., 1] = 1
    sigmas = torch.cat([torch.logspace(torch.log10(torch.tensor(80.0)), torch.log10(torch.tensor(0.02)), 10),
                        torch.zeros(1)]).double()
    means = {}
    for weight in (0.0, 1.0):
        out = masked_sample(resolve_sampler(name), correlated_gaussian_denoiser(rho), known, mask, sigmas,
                            torch.Generator().manual_seed(0), reconstruction_guidance=weight)
        assert float((out[..., 0] - 1.5).abs().max()) <= 1e-9, "the kept cell moved"
        means[weight] = float(out[..., 1].mean())
    assert abs(means[0.0] - rho * 1.5) > 0.5, f"plain replacement already found the conditional mean: {means}"
    assert abs(means[1.0] - rho * 1.5) < 0.15, f"reconstruction guidance missed the conditional mean 1.35: {means}"


def test_reconstruction_guidance_differentiates_the_likelihood_model_and_corrects_the_guided_estimate():
    """With ``likelihood_model`` (the conditional model under classifier-free guidance) the estimate is the
    guided model's, the correction ``w (1 + sigma^2) A^T keep (z - A x)`` that of the linear likelihood model
    ``D_l(x) = A x``; the guided model is never differentiated."""
    from mmldm.editing import KeepKnown

    a = torch.tensor([[0.6, 0.3], [0.3, 0.5]], dtype=torch.float64)
    likelihood = lambda x, sigma: (x.flatten(1) @ a.T).reshape(x.shape)  # noqa: E731
    seen_grad: list[bool] = []

    def guided(x, sigma):
        seen_grad.append(torch.is_grad_enabled())
        return 3 * x

    z = torch.tensor([[[1.5, 0.0]]], dtype=torch.float64)
    keep = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    x, sigma, w = torch.tensor([[[0.2, -0.4]]], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64), 0.5
    out = KeepKnown(guided, z, keep, w, likelihood_model=likelihood)(x, sigma)
    residual = keep[0, 0] * (z[0, 0] - a @ x[0, 0])
    expected = 3 * x[0, 0] + w * (1 + 4.0) * (a.T @ residual)
    assert seen_grad == [False]
    assert torch.allclose(out[0, 0, 1], expected[1]) and out[0, 0, 0] == 1.5  # generated cell; kept cell = z
    alone = KeepKnown(likelihood, z, keep, w)(x, sigma)  # without: the model's own estimate and Jacobian
    assert torch.allclose(alone[0, 0, 1], (a @ x[0, 0] + w * 5.0 * (a.T @ residual))[1])


def test_reconstruction_guidance_refuses_a_negative_weight_and_the_trained_method(tiny):
    with pytest.raises(ValueError, match=r"reconstruction_guidance must be >= 0 \(0 = off\), got -1"):
        masked_sample(sample_euler, lambda x, s: x, torch.zeros(1, 1, 2), torch.ones(1, 1, 2),
                      torch.tensor([1.0, 0.0]), reconstruction_guidance=-1)
    pipe, x = tiny
    with pytest.raises(ValueError, match="resample, jump_length and reconstruction_guidance steer "
                                         "method='training_free'"):
        pipe.inpaint(x, first_half_generated(x), method="trained", reconstruction_guidance=1.0, progress=False)


# ------------------------------------------------------------------ the pipeline over dims 1, 2, 3
@pytest.mark.parametrize("reconstruction_guidance", [0.0, 1.0])
def test_inpaint_keeps_the_input_where_the_mask_is_zero(tiny, reconstruction_guidance):
    pipe, x = tiny
    mask = first_half_generated(x)
    out = pipe.inpaint(x, mask, steps=4, seed=0, progress=False, reconstruction_guidance=reconstruction_guidance)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.equal(out[..., : x.shape[-1] // 2], x[..., : x.shape[-1] // 2])
    assert not torch.allclose(out[..., x.shape[-1] // 2:], x[..., x.shape[-1] // 2:])
    z = pipe.inpaint(x, mask, steps=4, seed=0, progress=False, return_latents=True,
                     reconstruction_guidance=reconstruction_guidance)
    keep = 1 - latent_mask(check_mask(mask, x), z.shape[2:])
    assert float(((z - pipe.encode(x)) * keep).abs().max()) <= 1e-5
    assert torch.equal(blend(x, pipe.decode(z), check_mask(mask, x)), out)
    if reconstruction_guidance:  # the weight reaches the sampling: the generated region changes
        plain = pipe.inpaint(x, mask, steps=4, seed=0, progress=False, return_latents=True)
        assert not torch.allclose(z * (1 - keep), plain * (1 - keep))


def test_inpaint_sample_i_depends_on_its_seed_and_input_only(tiny):
    pipe, x = tiny
    mask = first_half_generated(x)
    both = pipe.inpaint(x, mask, steps=3, seed=5, progress=False)
    alone = pipe.inpaint(x[:1], mask, steps=3, seed=5, progress=False)
    assert torch.allclose(both[:1], alone, atol=1e-4)
    other = pipe.inpaint(x[:1], mask, steps=3, seed=6, progress=False)
    assert not torch.allclose(other, alone)


def test_vary_at_the_smallest_strength_stays_near_the_reconstruction_and_grows_with_strength(tiny):
    pipe, x = tiny
    rec = pipe.decode(pipe.encode(x))
    near = pipe.vary(x, strength=0.1, steps=10, seed=0, progress=False)
    far = pipe.vary(x, strength=1.0, steps=10, seed=0, progress=False)
    assert near.shape == far.shape == x.shape
    assert float((near - rec).abs().mean()) < float((far - rec).abs().mean())


def test_interpolate_gives_n_frames_whose_ends_depend_on_their_own_input_only(tiny):
    pipe, x = tiny
    frames = pipe.interpolate(x[0], x[1], n=4, steps=6, progress=False)
    assert frames.shape == (4, *x.shape[1:]) and torch.isfinite(frames).all()
    assert not torch.allclose(frames[0], frames[-1])
    other = pipe.interpolate(x[0], x[0].flip(-1), n=3, steps=6, progress=False)
    assert torch.allclose(other[0], frames[0], atol=1e-4), "frame 0 is the first input's own (slerp weight 0)"
    same = pipe.interpolate(x[1], x[1], n=3, steps=6, progress=False)
    assert torch.allclose(same[1], frames[-1], atol=1e-4), "between two equal inputs every frame is that input's"


def test_edit_inputs_of_the_wrong_shape_are_refused_naming_the_expected_one(tiny):
    pipe, x = tiny
    with pytest.raises(ValueError, match=r"x of shape .* is not a batch of \w+ samples of shape \["):
        pipe.inpaint(x[..., :-1], torch.zeros(1), steps=2, progress=False)
    with pytest.raises(ValueError, match="does not fit inputs of shape"):
        pipe.inpaint(x, torch.zeros(1, 1, 3), steps=2, progress=False)
    with pytest.raises(ValueError, match=r"strength must lie in \(0, 1\], got 1.5"):
        pipe.vary(x, strength=1.5, steps=2, progress=False)
    with pytest.raises(ValueError, match="n >= 2 frames"):
        pipe.interpolate(x[0], x[1], n=1, steps=2, progress=False)


# ------------------------------------------------------------------ helpers
def test_strength_takes_the_last_int_steps_times_strength_of_the_grid():
    sigmas = torch.arange(11, dtype=torch.float64).flip(0)  # 10 steps
    assert strength_sigmas(sigmas, 1.0).tolist() == sigmas.tolist()
    assert strength_sigmas(sigmas, 0.35).tolist() == [3.0, 2.0, 1.0, 0.0]
    with pytest.raises(ValueError, match=r"strength 0.05 of 10 steps takes no step.*at least 0.1"):
        strength_sigmas(sigmas, 0.05)


def test_slerp_ends_orthogonal_midpoint_and_parallel_inputs():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert torch.allclose(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b)
    mid = slerp(a, b, 0.5)
    assert torch.allclose(mid, torch.tensor([[2**-0.5, 2**-0.5]]), atol=1e-6)
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a)  # parallel: linear
    assert interpolation_weights(3) == [0.0, 0.5, 1.0]


def test_inversion_then_euler_sampling_returns_the_latent():
    """The exact denoiser of N(0, 0.5^2) data: inverting a latent and sampling it back along the same fine grid
    lands on it (Euler both ways; the error shrinks with the step size)."""
    ramp = torch.linspace(0, 1, 200, dtype=torch.float64)
    sigmas = torch.cat([(20 ** (1 / 7) + ramp * (0.01 ** (1 / 7) - 20 ** (1 / 7))) ** 7, torch.zeros(1, dtype=torch.float64)])
    z = torch.randn(4, 2, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.5
    noise = invert(_gaussian, z, sigmas)
    assert float(noise.std()) > 5  # at sigma 20 the latent is mostly noise
    back = sample_euler(_gaussian, noise, sigmas, disable=True)
    assert float((back - z).abs().max()) < 0.05 * float(z.abs().max())


# ------------------------------------------------------------------ trained inpainting (conditioner=inpaint)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_random_masks_are_seeded_and_each_family_has_its_shape(dims):
    from mmldm_conditioners.inpaint import random_masks

    size = (64, *([8] * dims))
    first = random_masks(size, ["box", "half", "slab"], torch.Generator().manual_seed(0))
    assert first.shape == (64, 1, *([8] * dims)) and set(first.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(first, random_masks(size, ["box", "half", "slab"], torch.Generator().manual_seed(0)))
    shares = first.flatten(1).mean(1)
    assert 0 < float(shares.min()) and float(shares.max()) < 1, "every mask keeps and generates something"
    slabs = random_masks(size, ["slab"], torch.Generator().manual_seed(1))
    band = slabs.amax(dim=tuple(range(1, 1 + dims)), keepdim=True)  # [B, 1, ..., 1, n]: the band of the last axis
    assert torch.equal(slabs, band.expand_as(slabs)), "a slab is constant across every axis but the last"
    assert float(band.flatten(1).sum(1).min()) >= 1
    with pytest.raises(ValueError, match=r"unknown inpainting mask families \['ring'\]"):
        random_masks(size, ["ring"])


def _inpaint_pipe(conditioner: str = "class_inpaint"):
    """The parts of an untrained voxel model with ``conditioner=<conditioner>``."""
    torch.manual_seed(0)
    cfg = compose([*MODELS[3], f"conditioner={conditioner}", "autoencoder.channels=8", "denoiser.model_channels=16"])
    from mmldm.build import build_conditioners

    modality = build_modality(cfg.modality)
    autoencoder = build_autoencoder(cfg.autoencoder, cfg.regularizer, modality)
    shape = autoencoder.latent_shape(modality.sample_shape)
    conditioners = build_conditioners(cfg.conditioner, modality, list(shape))
    denoiser = build_denoiser(cfg.denoiser, list(shape), conditioners)
    return cfg, modality, autoencoder, conditioners, denoiser, shape


def test_phase2_makes_the_inpainting_condition_from_the_batch_latents():
    from mmldm.training.phase2 import DiffusionModule

    cfg, modality, autoencoder, conditioners, denoiser, shape = _inpaint_pipe()
    module = DiffusionModule.from_config(denoiser, conditioners, list(shape), cfg.diffusion)
    z = torch.randn(4, *shape)
    cond = module.batch_conditions(module.model, {"z": z, "cond": {"class": torch.zeros(4, dtype=torch.long)}},
                                   torch.Generator().manual_seed(0))
    assert cond["inpaint"].shape == (4, shape[0] + 1, *shape[1:])
    mask = cond["inpaint"][:, -1:]
    assert torch.equal(cond["inpaint"][:, :-1], z * (1 - mask)) and 0 < float(mask.mean()) < 1
    loss = module.training_step({"z": z, "cond": {"class": torch.zeros(4, dtype=torch.long)}}, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in denoiser.parameters() if p.requires_grad)


def test_reconstruction_guidance_under_classifier_free_guidance_differentiates_the_conditional_model(monkeypatch):
    """With a condition and guidance != 1, inpaint hands masked_sample the conditional model (guidance 1) as the
    likelihood model; without a condition, or at guidance 1, the sampled model is its own likelihood model."""
    import mmldm.editing

    cfg, modality, autoencoder, conditioners, denoiser, shape = _inpaint_pipe()
    keys = (*PIPE_KEYS, "conditioner")
    pipe = LatentDiffusion(modality, autoencoder, LatentStats.identity(shape[0]), {k: cfg[k] for k in keys}, denoiser,
                           conditioners).eval()
    x = torch.stack([modality.dataset("train")[i]["x"] for i in range(2)])
    seen: list = []

    def recording(*args, likelihood_model=None, **kwargs):
        seen.append(likelihood_model)
        return masked_sample(*args, likelihood_model=likelihood_model, **kwargs)

    monkeypatch.setattr(mmldm.editing, "masked_sample", recording)
    common = {"steps": 2, "seed": 0, "progress": False, "reconstruction_guidance": 1.0}
    pipe.inpaint(x, first_half_generated(x), {"class": [1, 2]}, guidance=3.0, **common)
    pipe.inpaint(x, first_half_generated(x), {"class": [1, 2]}, guidance=1.0, **common)
    pipe.inpaint(x, first_half_generated(x), guidance=3.0, **common)
    assert seen[0] is not None and seen[1:] == [None, None]
    z = pipe.encode(x)
    sigma = torch.full((2,), 2.0)
    from mmldm.diffusion.sampling import guided_model

    conditional = guided_model(pipe.denoiser, list(pipe.conditioners), pipe.process, {"class": [1, 2]}, 1.0, 2)
    with torch.no_grad():
        assert torch.allclose(seen[0](z, sigma), conditional(z, sigma))


def test_trained_inpainting_conditions_on_the_masked_latent_and_keeps_the_input():
    cfg, modality, autoencoder, conditioners, denoiser, shape = _inpaint_pipe()
    stats = LatentStats.identity(shape[0])
    keys = (*PIPE_KEYS, "conditioner")
    pipe = LatentDiffusion(modality, autoencoder, stats, {k: cfg[k] for k in keys}, denoiser, conditioners).eval()
    x = torch.stack([modality.dataset("train")[i]["x"] for i in range(2)])
    mask = first_half_generated(x)
    out = pipe.inpaint(x, mask, {"class": [1, 2]}, method="trained", steps=3, seed=0, progress=False)
    assert out.shape == x.shape and torch.equal(out[..., :8], x[..., :8])
    from mmldm.pipeline import sample_conditions

    conds = sample_conditions(pipe, modality.dataset("val"), 4)
    assert set(conds) == {"class"}, "samples after training leave the latent-derived condition out"
    with pytest.raises(ValueError, match="unknown inpainting method 'magic'"):
        pipe.inpaint(x, mask, method="magic", steps=2, progress=False)


def test_trained_inpainting_guidance_keeps_the_known_region_in_the_unconditional_branch(monkeypatch):
    """One weight guides the class, not the known latent (as SD's inpainting pipelines do); a weight per key can
    guide the known region; with nothing beside the known region one weight other than 1 is refused."""
    import mmldm.diffusion.guidance as guidance_module

    cfg, modality, autoencoder, conditioners, denoiser, shape = _inpaint_pipe()
    keys = (*PIPE_KEYS, "conditioner")
    pipe = LatentDiffusion(modality, autoencoder, LatentStats.identity(shape[0]), {k: cfg[k] for k in keys},
                           denoiser, conditioners).eval()
    x = torch.stack([modality.dataset("train")[i]["x"] for i in range(2)])
    mask = first_half_generated(x)
    branches = []
    original = guidance_module.guided_denoiser

    def recording(model, uncond, conds, weights):
        branches.append((uncond, conds, weights))
        return original(model, uncond, conds, weights)

    import mmldm.diffusion.sampling as sampling_module

    monkeypatch.setattr(guidance_module, "guided_denoiser", recording)
    monkeypatch.setattr(sampling_module, "guided_denoiser", recording)
    key = pipe._inpaint_key()
    known = [c for c in pipe.conditioners if c.key == key][0]
    null_known = known.null(2)
    common = {"method": "trained", "steps": 2, "seed": 0, "progress": False}
    pipe.inpaint(x, mask, {"class": [1, 2]}, guidance=3.0, **common)
    uncond, conds, weights = branches[-1]
    assert weights == [3.0] and not torch.equal(uncond.concat, null_known.concat), "the known latent stays"
    assert torch.equal(uncond.concat, conds[0].concat)
    pipe.inpaint(x, mask, guidance={key: 2.0}, **common)
    uncond, conds, weights = branches[-1]
    assert weights == [2.0] and torch.equal(uncond.concat, null_known.concat)
    with pytest.raises(ValueError, match=rf"guidance=2.0 with method='trained' guides the conditions given beside "
                                         rf"the known region, and none is: .*guidance={{'{key}': 2.0}}"):
        pipe.inpaint(x, mask, guidance=2.0, **common)


def test_trained_method_on_a_model_without_an_inpainting_conditioner_says_what_to_train(tiny):
    pipe, x = tiny
    with pytest.raises(ValueError, match=r"method='trained' needs a model trained with an inpainting conditioner "
                                         r"\(conditioner=inpaint or conditioner=class_inpaint\)"):
        pipe.inpaint(x, first_half_generated(x), method="trained", steps=2, progress=False)


# ---------------------------------------------------------------------------- the model as a classifier
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_condition_scores_give_the_exact_posterior_of_a_gaussian_class_model(dims):
    """Latents ``z ~ N(mu_k, I)`` given class k: the exact denoiser is ``mu + (x - mu) / (1 + sigma^2)`` and the
    exact posterior of the kept cells is ``softmax(-|keep (z - mu_k)|^2 / 2)``. The variational bound over many
    levels recovers it, counts only the kept region, and does not depend on what the masked region holds."""
    from mmldm.editing import condition_scores

    torch.manual_seed(0)
    spatial = {1: (16,), 2: (4, 4), 3: (2, 2, 4)}[dims]
    means = [torch.full((2, *spatial), m) for m in (-0.3, 0.0, 0.4)]
    truth = torch.tensor([0, 1, 2, 2, 0, 1])
    z = torch.stack([means[k] for k in truth]) + torch.randn(len(truth), 2, *spatial)
    keep = torch.ones(1, 1, *spatial)
    keep[..., spatial[-1] // 2:] = 0
    z_other = torch.where(keep.bool(), z, z + 5.0)  # the masked region holds anything

    def exact(x, sigma, mu):
        s2 = sigma.view(-1, *[1] * (x.ndim - 1)) ** 2
        return mu + (x - mu) / (1 + s2)

    candidates = [{"mu": m} for m in means]
    sigmas = torch.exp(torch.linspace(torch.tensor(200.0).log(), torch.tensor(0.005).log(), 400))
    generators = [torch.Generator().manual_seed(i) for i in range(len(truth))]
    scores = condition_scores(exact, z, keep, candidates, sigmas, generators)
    posterior = torch.softmax(-scores, -1)
    exact_log = torch.stack([-(keep * (z - m) ** 2).flatten(1).sum(1) / 2 for m in means], -1)
    assert scores.shape == (len(truth), 3)
    assert torch.allclose(posterior, torch.softmax(exact_log, -1).double(), atol=0.06)
    again = condition_scores(exact, z_other, keep, candidates, sigmas,
                             [torch.Generator().manual_seed(i) for i in range(len(truth))])
    assert torch.allclose(again, scores)


def test_condition_scores_refuse_bad_levels_and_no_candidates():
    from mmldm.editing import condition_scores

    z, keep = torch.zeros(1, 1, 4), torch.ones(1, 1, 4)
    with pytest.raises(ValueError, match="at least 2 descending noise levels > 0"):
        condition_scores(lambda x, s: x, z, keep, [{}], torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="at least 2 descending noise levels > 0"):
        condition_scores(lambda x, s: x, z, keep, [{}], torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="at least one candidate"):
        condition_scores(lambda x, s: x, z, keep, [], torch.tensor([2.0, 1.0]))


@pytest.fixture(scope="module")
def class_pipe():
    """An untrained class-conditional voxel model and three training inputs."""
    cfg, modality, autoencoder, conditioners, denoiser, shape = _inpaint_pipe("class")
    with torch.no_grad():
        for p in [*denoiser.parameters(), *(q for c in conditioners for q in c.parameters())]:
            p.add_(0.05 * torch.randn_like(p))
    stats = LatentStats.identity(shape[0])
    pipe = LatentDiffusion(modality, autoencoder, stats, {k: cfg[k] for k in PIPE_KEYS}, denoiser, conditioners).eval()
    return pipe, torch.stack([modality.dataset("train")[i]["x"] for i in range(3)])


def test_classify_returns_a_seeded_posterior_over_every_class_or_the_candidates_given(class_pipe):
    pipe, x = class_pipe
    k = pipe.modality.num_classes
    log_p = pipe.classify(x, levels=4, seed=0, progress=False)
    assert log_p.shape == (3, k) and torch.allclose(log_p.exp().sum(-1), torch.ones(3), atol=1e-5)
    assert torch.equal(log_p, pipe.classify(x, levels=4, seed=0, progress=False))
    assert not torch.equal(log_p, pipe.classify(x, levels=4, seed=1, progress=False))
    # candidates [1, 0]: the same scores (same seed, same noise), renormalized over those two, in that order
    two = pipe.classify(x, key="class", candidates=[1, 0], levels=4, seed=0, progress=False)
    assert torch.allclose(two, torch.log_softmax(log_p[:, [1, 0]], -1), atol=1e-5)
    # with a mask only the kept latent cells count (condition_scores' test: the rest may hold anything)
    masked = pipe.classify(x, first_half_generated(x), levels=4, seed=0, progress=False)
    assert masked.shape == (3, k) and not torch.allclose(masked, log_p)


def test_classify_errors_name_the_key_and_what_to_give(class_pipe, tiny):
    pipe, x = class_pipe
    with pytest.raises(ValueError, match=r"no conditioner reading 'text' \(it reads \['class'\]\)"):
        pipe.classify(x, key="text", candidates=["a"], progress=False)
    with pytest.raises(ValueError, match="'class' is what is inferred; drop it from cond"):
        pipe.classify(x, cond={"class": torch.zeros(3, dtype=torch.long)}, progress=False)
    with pytest.raises(ValueError, match="levels must be >= 2"):
        pipe.classify(x, levels=1, progress=False)
    with pytest.raises(ValueError, match="candidates is empty"):
        pipe.classify(x, candidates=[], progress=False)
    unconditional, y = tiny
    with pytest.raises(ValueError, match="no conditioner reading 'class'"):
        unconditional.classify(y, progress=False)
