"""``LatentDiffusion``: a trained model as one object (load, sample, encode, decode, export).

An exported folder::

    config.yaml                 component configs, latent shape and statistics, modality state
    autoencoder.safetensors     phase 1
    denoiser.safetensors        phase 2 (EMA weights), absent for an autoencoder-only export
    conditioner.safetensors     tau_theta, when the model is conditional (state a conditioner keeps
                                beside its weights too, e.g. a learned tokenizer as tokenizer.json bytes)
    <part>.safetensors          each trained module of the modality (Modality.trained_modules, e.g.
                                vocoder.safetensors for a neural vocoder), so the export needs nothing else

Loading reads YAML and safetensors only (no pickle), and builds every
component by its registry name, so any installed plugin's component loads.
"""

from __future__ import annotations

from numbers import Integral
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from . import __version__
from .build import build_autoencoder, build_conditioners, build_denoiser, build_modality
from .export import ExportError, load_config, load_weights, save_config, save_weights
from .interfaces import Autoencoder, Conditioner, Denoiser, Modality
from .latents import LatentStats


def _to_container(node: Any) -> Any:
    if node is None or isinstance(node, (int, float, str, bool, list, dict)):
        return node
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return OmegaConf.to_container(OmegaConf.structured(node), resolve=True)


class LatentDiffusion(nn.Module):
    """A latent diffusion model: modality, autoencoder, latent statistics, denoiser, conditioners.

    Use :meth:`from_pretrained` on a folder written by :meth:`save_pretrained`
    (``mmldm train`` leaves one in ``<run dir>/export/``)::

        pipe = LatentDiffusion.from_pretrained("outputs/voxel/<run>/export")
        shapes = pipe.sample(8, cond={"class": [0, 1, 2, 3, 4, 5, 0, 1]}, guidance=3.0, seed=0)

    Args:
        modality (`Modality`): the data, its files and metrics.
        autoencoder (`Autoencoder`): phase 1.
        stats (`LatentStats`): the latent normalization measured after phase 1.
        denoiser (`Denoiser`, *optional*): phase 2 (the EMA weights); ``None`` for an
            autoencoder-only export. With a denoiser, :attr:`process` is built from
            ``config["diffusion"]["process"]`` (the diffusion process it was trained with).
        conditioners (`list[Conditioner]`): tau_theta, empty when unconditional.
        config (`dict`): the component configs, written to ``config.yaml``.
    """

    def __init__(
        self,
        modality: Modality,
        autoencoder: Autoencoder,
        stats: LatentStats,
        config: Mapping[str, Any],
        denoiser: Denoiser | None = None,
        conditioners: Sequence[Conditioner] = (),
    ):
        super().__init__()
        self.modality = modality
        self.autoencoder = autoencoder
        self.stats = stats
        self.denoiser = denoiser
        self.conditioners = nn.ModuleList(conditioners)
        self.config = {k: _to_container(v) for k, v in config.items()}
        self.latent_shape = tuple(autoencoder.latent_shape(modality.sample_shape))
        self.process = None
        if denoiser is not None:
            from .diffusion.config import upgrade_diffusion_config
            from .diffusion.process import build_process

            # an export written before the process group names diffusion.parameterization: the vp process
            self.config["diffusion"] = upgrade_diffusion_config(self.config["diffusion"])
            self.process = build_process(self.config["diffusion"]["process"])

    # ----------------------------------------------------------------- phase 1
    @torch.no_grad()
    def encode(self, x: Tensor, sample: bool = False) -> Tensor:
        """``x [B, C, *s]`` -> normalized latents ``[B, c, *s/f]`` (the posterior mode unless ``sample``)."""
        posterior = self.autoencoder.encode(x)
        return self.stats.normalize(posterior.sample() if sample else posterior.mode())

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Normalized latents ``[B, c, *s/f]`` -> samples in the modality's layout ``[B, C, *s]``.

        Decoding runs with autocast off and in the autoencoder's own dtype (float32 unless it was
        cast): decoders' activations overflow float16 (the NaN/black images of half-precision VAEs),
        so a caller's ``torch.autocast`` or a half-precision denoiser never reaches the decoder.
        """
        param = next(self.autoencoder.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        with torch.autocast(z.device.type, enabled=False):
            x = self.autoencoder.decode(self.stats.denormalize(z.to(dtype)))
        return self.modality.postprocess(x)

    # ----------------------------------------------------------------- phase 2
    @torch.no_grad()
    def sample(
        self,
        n: int,
        cond: Mapping[str, Any] | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        guidance: float | Mapping[str, float] = 1.0,
        seed: int | None = None,
        progress: bool = True,
        return_latents: bool = False,
        compose: Sequence[str] = (),
        **sampler_options: Any,
    ) -> Tensor:
        """Generate ``n`` samples ``[n, C, *s]`` (decoded, in the modality's layout).

        Args:
            n (`int`): number of samples.
            cond (`dict`, *optional*): e.g. ``{"class": LongTensor[n]}``; missing keys mean
                unconditional.
            steps (`int`, *optional*): sampler steps (default: the exported sampler config's, else
                :data:`~mmldm.diffusion.config.DEFAULT_STEPS`).
            sampler (`str`, *optional*): a registered sampler (``ddpm``, ``ddim``, ``euler``,
                ``heun``, ``dpmpp_2m``, ...).
            guidance (`float | Mapping[str, float]`, defaults to 1): classifier-free guidance weight, or
                one weight per condition key (``{"class": 2.0, "text": 4.0}``, compositional guidance).
            seed (`int`, *optional*): makes the result reproducible: each sample gets its own noise
                generator seeded from ``(seed, i)``, so sample ``i`` is the same in a call with
                ``n=2`` and one with ``n=4``, for every sampler: the stochastic ones (``ddpm``, ``ddim``
                with ``eta > 0``) draw their fresh noise from the same per-sample generators.
            return_latents (`bool`): return normalized latents instead of decoded samples.
            compose (`Sequence[str]`): condition keys guided part by part, each part its own branch with the
                key's weight (Composable Diffusion; a caption's comma-separated parts:
                ``compose=["text"]`` guides "seven, spoken by george" as "seven" AND "spoken by george").
                Models trained with ``conditioner.tag_dropout`` have learned the parts alone.
        """
        if self.denoiser is None:
            raise RuntimeError("this export holds an autoencoder only (no denoiser): train phase 2 to sample")
        from .diffusion.sampling import sample_generators, sample_latents, sampler_settings

        settings = sampler_settings(self.config.get("sampler"), sampler, steps, **sampler_options)
        self._check_sampler(settings["sampler"], settings["spacing"])
        device = next(self.denoiser.parameters()).device
        generator = sample_generators(seed, n, device) if seed is not None else None
        z = sample_latents(self.denoiser, list(self.conditioners), self.process, (n, *self.latent_shape), cond,
                           guidance=guidance, generator=generator, progress=progress, compose=compose, **settings)
        return z if return_latents else self.decode(z)

    # ----------------------------------------------------------------- editing
    def _inputs(self, x: Tensor, name: str = "x") -> Tensor:
        """``x`` as ``[B, C, *s]`` on the model's device, checked against the modality's sample shape."""
        if self.denoiser is None:
            raise RuntimeError("this export holds an autoencoder only (no denoiser): train phase 2 to edit")
        x = torch.as_tensor(x)
        expected = tuple(self.modality.sample_shape)
        if x.ndim == len(expected):
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"{name} of shape {tuple(x.shape)} is not a batch of {self.modality.name} samples of "
                             f"shape {list(expected)} (as the modality's dataset items and Modality.load give)")
        param = next(self.denoiser.parameters())
        return x.to(device=param.device, dtype=torch.float32)

    def _edit_setup(self, n: int, cond: Mapping[str, Any] | None, guidance: float | Mapping[str, float],
                    steps: int | None, sampler: str | None, seed: int | None, keep: Sequence[str] = (),
                    **sampler_options: Any):
        """(sample_fn, model, sigmas, generator, options) of an edit of ``n`` samples, as :meth:`sample` sets up;
        ``keep``: condition keys the unconditional branch of one guidance weight keeps (:func:`guided_model`)."""
        from .diffusion.sampling import guided_model, resolve_sampler, sample_generators, sampler_settings

        settings = sampler_settings(self.config.get("sampler"), sampler, steps, **sampler_options)
        self._check_sampler(settings["sampler"], settings["spacing"])
        param = next(self.denoiser.parameters())
        sigmas = self.process.sigmas(settings.pop("steps"), settings.pop("spacing")).to(param.device, param.dtype)
        sample_fn = resolve_sampler(settings.pop("sampler"))
        generator = sample_generators(seed, n, param.device) if seed is not None else None
        model = guided_model(self.denoiser, list(self.conditioners), self.process, cond, guidance, n, keep)
        return sample_fn, model, sigmas, generator, settings

    @torch.no_grad()
    def inpaint(
        self,
        x: Tensor,
        mask: Tensor,
        cond: Mapping[str, Any] | None = None,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        guidance: float | Mapping[str, float] = 1.0,
        seed: int | None = None,
        method: str = "training_free",
        resample: int = 1,
        jump_length: int = 1,
        reconstruction_guidance: float = 0.0,
        mask_rule: str = "any",
        progress: bool = True,
        return_latents: bool = False,
        **sampler_options: Any,
    ) -> Tensor:
        """Fill the masked region of ``x`` and keep the rest.

        ``method="training_free"`` (any model): masked sampling (:func:`mmldm.editing.masked_sample`, any
        sampler; RePaint resampling with ``resample > 1``). ``method="trained"``: a model trained with an
        inpainting conditioner (``conditioner=inpaint`` or ``class_inpaint``) gets the masked latent and the mask
        as its condition (:func:`mmldm.editing.inpaint_condition`) and samples as usual. There one guidance weight
        guides the conditions given beside the known region (the class, the text): the unconditional branch keeps
        the known latent and mask, as Stable Diffusion's inpainting pipelines keep the masked image in both
        branches, so with no other condition a weight other than 1 is refused; a weight per key, e.g.
        ``{"inpaint": 2.0}``, guides towards the known region itself.

        Args:
            x (`Tensor [B, C, *s]` or `[C, *s]`): inputs in the modality's layout (a dataset item's ``"x"``,
                :meth:`Modality.load <mmldm.interfaces.Modality.load>` of a file).
            mask (`Tensor [B or 1, 1 or C, *s]` or without the batch axis): **1 = generate, 0 = keep**
                (diffusers' convention), values in [0, 1].
            cond (`dict`, *optional*): conditions as for :meth:`sample`; none = unconditional.
            method (`str`, defaults to ``"training_free"``): ``training_free`` or ``trained``.
            resample (`int`, defaults to 1), jump_length (`int`, defaults to 1): RePaint's ``r`` and ``j``
                (``training_free`` only).
            reconstruction_guidance (`float`, defaults to 0): ``training_free`` only: the weight of ΠGDM's
                reconstruction guidance (:mod:`mmldm.editing`), which steers the generated region towards what
                agrees with the kept one through the gradient of the kept region's error; 1 is the published
                weighting, 0 plain replacement. Each step then adds a backward pass through the denoiser.
                With a condition and ``guidance != 1`` the correction differentiates the conditional model
                (one more forward pass), not the guided combination, whose Jacobian the weight scales up.
            mask_rule (`str`, defaults to ``"any"``): how a latent cell partly masked is treated
                (:func:`mmldm.editing.latent_mask`: ``any`` generates it, ``all`` keeps it, ``soft`` blends).
            return_latents (`bool`): return the normalized latents instead of the decoded, blended result.

        ``steps``, ``sampler``, ``guidance``, ``seed`` and the sampler's own options are as for :meth:`sample`.

        Returns:
            `Tensor [B, C, *s]`: the decoded result blended at data resolution (:func:`mmldm.editing.blend`),
            so the kept region is ``x``'s own.
        """
        from .diffusion.sampling import initial_noise
        from .editing import INPAINT_METHODS, blend, check_mask, inpaint_condition, latent_mask, masked_sample

        if method not in INPAINT_METHODS:
            raise ValueError(f"unknown inpainting method '{method}'; expected one of {', '.join(INPAINT_METHODS)}")
        if method == "trained" and (resample != 1 or jump_length != 1 or reconstruction_guidance):
            raise ValueError("resample, jump_length and reconstruction_guidance steer method='training_free'; a "
                             "model trained for inpainting (method='trained') samples as in generation: drop them")
        x = self._inputs(x)
        mask = check_mask(mask, x)
        z = self.encode(x)
        m = latent_mask(mask, z.shape[2:], mask_rule).to(z.dtype)
        keep: tuple[str, ...] = ()
        if method == "trained":
            key = self._inpaint_key()
            if not isinstance(guidance, Mapping) and guidance != 1 and not [k for k in (cond or {}) if k != key]:
                raise ValueError(f"guidance={guidance} with method='trained' guides the conditions given beside the "
                                 f"known region, and none is: give one (e.g. cond={{'class': ...}}), or guide "
                                 f"towards the known region with guidance={{'{key}': {guidance}}}")
            cond, keep = {**(cond or {}), key: inpaint_condition(z, m)}, (key,)
        sample_fn, model, sigmas, generator, options = self._edit_setup(
            x.shape[0], cond, guidance, steps, sampler, seed, keep=keep, **sampler_options)
        if method == "trained":
            start = initial_noise(z.shape, generator, z.device, z.dtype) * sigmas[0]
            z = sample_fn(model, start, sigmas, generator=generator, disable=not progress, **options)
        else:
            likelihood = None
            if reconstruction_guidance and cond and guidance != 1:  # the conditional model's estimate and Jacobian
                from .diffusion.sampling import guided_model

                likelihood = guided_model(self.denoiser, list(self.conditioners), self.process, cond, 1.0, x.shape[0])
            z = masked_sample(sample_fn, model, z, m, sigmas, generator, resample=resample, jump_length=jump_length,
                              progress=progress, reconstruction_guidance=reconstruction_guidance,
                              likelihood_model=likelihood, **options)
        return z if return_latents else blend(x, self.decode(z), mask)

    def _inpaint_key(self) -> str:
        """The key of the model's inpainting conditioner (a latent-derived conditioner emitting concat maps of
        ``latent channels + 1``); a ``ValueError`` says how to train one otherwise."""
        wanted = self.latent_shape[0] + 1
        keys = [c.key for c in self.conditioners if c.latent_derived and c.concat_channels == wanted]
        if not keys:
            raise ValueError("method='trained' needs a model trained with an inpainting conditioner (conditioner=inpaint "
                             f"or conditioner=class_inpaint); this one has {[c.key for c in self.conditioners] or 'none'}: "
                             "use method='training_free'")
        return keys[0]

    @torch.no_grad()
    def classify(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        key: str = "class",
        candidates: Sequence[Any] | None = None,
        cond: Mapping[str, Any] | None = None,
        *,
        levels: int = 64,
        seed: int | None = None,
        mask_rule: str = "any",
        progress: bool = True,
    ) -> Tensor:
        """Which condition explains ``x`` (or its kept part) best: the model as a zero-shot classifier of its own
        condition ``key`` (Li et al. 2023, arXiv 2303.16203), with no classifier trained.

        Each candidate's denoising error of ``x``'s latent is measured at ``levels`` noise levels of the process's
        sampling grid, the same noise for every candidate, and summed into a variational bound on
        ``-log p(latent | candidate)`` (:func:`mmldm.editing.condition_scores`). With a ``mask``, only the kept
        region's error counts and the masked region is noise, so the answer is the condition that the kept part
        supports: infer an input's class before completing it (``cond={"class": posterior.argmax(-1)}`` in
        :meth:`inpaint`). Costs ``levels x len(candidates)`` denoiser evaluations per item.

        Args:
            x (`Tensor [B, C, *s]` or `[C, *s]`): inputs in the modality's layout.
            mask (`Tensor`, *optional*): as for :meth:`inpaint` (**1 = unknown**, 0 = kept); none: all of ``x``.
            key (`str`, defaults to ``"class"``): the condition to infer, one of the model's conditioners' keys.
            candidates (`Sequence`, *optional*): its values to choose from (class indices, captions, ...); default:
                every value its conditioner lists (:meth:`Conditioner.values <mmldm.interfaces.Conditioner.values>`;
                a class conditioner's ``0 .. num_classes - 1``).
            cond (`dict`, *optional*): other conditions, held fixed for every candidate.
            levels (`int`, defaults to 64): noise levels (>= 2); fewer are faster and noisier.
            seed (`int`, *optional*): makes the noise draws reproducible (a generator per item, as in :meth:`sample`).
            mask_rule (`str`, defaults to ``"any"``): as for :meth:`inpaint`; a latent cell counts as kept where
                the rule does not generate it.

        Returns:
            `Tensor [B, len(candidates)]`: log-probabilities of the candidates under a uniform prior
            (``.argmax(-1)`` indexes the most likely one, ``.exp()`` is the posterior).
        """
        from .diffusion.sampling import condition, sample_generators
        from .editing import check_mask, condition_scores, latent_mask

        x = self._inputs(x)
        readers = {c.key: c for c in self.conditioners if not c.latent_derived}
        if key not in readers:
            raise ValueError(f"classify(key='{key}'): the model has no conditioner reading '{key}' "
                             f"(it reads {list(readers) or 'none'})")
        if key in (cond or {}):
            raise ValueError(f"classify(key='{key}'): '{key}' is what is inferred; drop it from cond")
        if candidates is None:
            candidates = readers[key].values()
            if candidates is None:
                raise ValueError(f"classify(key='{key}'): give candidates, the values of '{key}' to choose from (its "
                                 "conditioner does not list them, as a class conditioner lists its classes)")
        candidates = list(candidates)
        if not candidates:
            raise ValueError(f"classify(key='{key}'): candidates is empty")
        if levels < 2:
            raise ValueError(f"classify: levels must be >= 2, got {levels}")
        z = self.encode(x)
        n = z.shape[0]
        keep = (1 - latent_mask(check_mask(mask, x), z.shape[2:], mask_rule)).to(z.dtype) if mask is not None \
            else torch.ones(1, 1, *z.shape[2:], dtype=z.dtype, device=z.device)

        def value(v: Any) -> Any:  # one candidate value for all n items
            return torch.full((n,), v, dtype=torch.long, device=z.device) if isinstance(v, Integral) else _repeat(v, n)

        fixed = dict(cond or {})
        extras = [{"conditioning": condition(list(self.conditioners), {**fixed, key: value(v)}, n)} for v in candidates]
        sigmas = self.process.sigmas(levels)[:-1].to(z.device, z.dtype)
        generator = sample_generators(seed, n, z.device) if seed is not None else None
        scores = condition_scores(self.process.denoiser(self.denoiser), z, keep, extras, sigmas, generator, progress)
        return torch.log_softmax(-scores, dim=-1).float()

    @torch.no_grad()
    def vary(
        self,
        x: Tensor,
        strength: float = 0.6,
        cond: Mapping[str, Any] | None = None,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        guidance: float | Mapping[str, float] = 1.0,
        seed: int | None = None,
        progress: bool = True,
        **sampler_options: Any,
    ) -> Tensor:
        """Variations of ``x`` (SDEdit, Meng et al. 2022, arXiv 2108.01073; diffusers' img2img): noise each
        input's latent to the level ``strength`` of the way up the sampling grid, then denoise it with the
        condition of your choice. ``strength`` in (0, 1]: near 0 returns the input (as the autoencoder
        reconstructs it), 1 starts from (almost) pure noise; the sampler takes ``int(steps * strength)`` steps.

        Args:
            x (`Tensor [B, C, *s]` or `[C, *s]`): inputs in the modality's layout; repeat an input along the
                batch axis for several variations of it (each sample has its own noise).
            strength (`float`, defaults to 0.6): how far up the sampling grid the inputs are noised, in (0, 1].
            cond (`dict`, *optional*): conditions as for :meth:`sample`; none = unconditional.

        ``steps``, ``sampler``, ``guidance``, ``seed`` and the sampler's own options are as for :meth:`sample`.
        """
        from .editing import noised_start, strength_sigmas

        x = self._inputs(x)
        sample_fn, model, sigmas, generator, options = self._edit_setup(
            x.shape[0], cond, guidance, steps, sampler, seed, **sampler_options)
        sigmas = strength_sigmas(sigmas, strength)
        start = noised_start(self.encode(x), sigmas, generator)
        return self.decode(sample_fn(model, start, sigmas, generator=generator, disable=not progress, **options))

    @torch.no_grad()
    def interpolate(
        self,
        a: Tensor,
        b: Tensor,
        n: int = 8,
        cond: Mapping[str, Any] | None = None,
        *,
        steps: int | None = None,
        guidance: float | Mapping[str, float] = 1.0,
        progress: bool = True,
    ) -> Tensor:
        """``n`` samples from ``a`` to ``b`` (both ends included): each input's latent is inverted to noise
        with the deterministic probability-flow ODE (:func:`mmldm.editing.invert`, DDIM inversion), the two
        noises are interpolated spherically (:func:`mmldm.editing.slerp`) and each is sampled back with Euler
        steps along the same grid, so the ends reproduce the inputs up to the inversion's error.

        Args:
            a (`Tensor [C, *s]` or `[1, C, *s]`): the first input, in the modality's layout.
            b (`Tensor [C, *s]` or `[1, C, *s]`): the last input.
            n (`int`, defaults to 8): frames, both inputs included (>= 2).
            cond (`dict`, *optional*): one condition for every frame (a batch of one); none = unconditional.
                The inversion runs with guidance 1 (it is unstable under strong guidance); ``guidance``
                applies to the way back.
            steps (`int`, *optional*): grid steps of both directions (default: the export's sampler config's).
        """
        from .diffusion.samplers import sample_euler
        from .editing import interpolation_weights, invert, slerp

        ends = torch.cat([self._inputs(a, "a"), self._inputs(b, "b")])
        if ends.shape[0] != 2:
            raise ValueError(f"interpolate takes one input at each end, got batches of {ends.shape[0]} in all")
        weights = interpolation_weights(n)
        two = {k: _repeat(v, 2) for k, v in cond.items()} if cond else None
        _, model, sigmas, _, _ = self._edit_setup(2, two, 1.0, steps, "euler", None)
        noise = invert(model, self.encode(ends), sigmas, progress=progress)
        frames = torch.cat([slerp(noise[:1], noise[1:], w) for w in weights])
        many = {k: _repeat(v, n) for k, v in cond.items()} if cond else None
        _, model, _, _, _ = self._edit_setup(n, many, guidance, steps, "euler", None)
        return self.decode(sample_euler(model, frames, sigmas, disable=not progress))

    def _check_sampler(self, sampler: Any, spacing: str) -> None:
        """A sampler named at sample time must fit the model's process (as the composed config's did)."""
        if not isinstance(sampler, str):
            return
        from .diffusion.config import check_sampler_fits
        from .plugins import registry

        process = registry().config_object("process", self.config["diffusion"]["process"])
        check_sampler_fits(process, registry().config_object("sampler", {"name": sampler}), spacing)

    # ----------------------------------------------------------------- export
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.yaml`` and safetensors weights into ``directory`` (created)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "mmldm_version": __version__,
            **self.config,
            "latent": {"shape": list(self.latent_shape), "stats": self.stats.to_dict()},
            "modality_state": self.modality.state_dict(),
        }
        save_weights(self.autoencoder, directory / "autoencoder.safetensors")
        if self.denoiser is not None:
            save_weights(self.denoiser, directory / "denoiser.safetensors")
        if len(self.conditioners):
            save_weights(self.conditioners, directory / "conditioner.safetensors")
        for part, module in _modality_modules(self.modality).items():
            save_weights(module, directory / f"{part}.safetensors")
        save_config(config, directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "LatentDiffusion":
        """Rebuild a model from an exported folder (YAML + safetensors; nothing is unpickled).

        Raises :class:`~mmldm.export.ExportError` naming the file (and config key) that is
        missing, corrupted or does not fit the installed components.
        """
        directory = Path(directory)
        cfg = load_config(directory)
        missing = [k for k in ("modality", "autoencoder", "regularizer", "latent") if k not in cfg]
        if missing:
            raise ExportError(f"{directory / 'config.yaml'} lacks the key(s) {missing}; is this an mmldm export?")
        try:
            modality = build_modality(cfg.modality)
            state = cfg.get("modality_state")
            modality.load_state_dict(OmegaConf.to_container(state) if state else {})
            modality_modules = _modality_modules(modality)
            autoencoder = build_autoencoder(cfg.autoencoder, cfg.regularizer, modality)
            stats = LatentStats.from_dict(OmegaConf.to_container(cfg.latent.stats))
            conditioners = (build_conditioners(cfg.get("conditioner"), modality, list(cfg.latent.shape))
                            if cfg.get("denoiser") else [])
            denoiser = build_denoiser(cfg.denoiser, list(cfg.latent.shape), conditioners) if cfg.get("denoiser") else None
        except ExportError:
            raise
        except Exception as e:  # noqa: BLE001 - config errors of any component: name the file
            raise ExportError(
                f"{directory / 'config.yaml'} does not describe a model the installed plugins can build: "
                f"{type(e).__name__}: {e}"
            ) from e
        load_weights(autoencoder, directory / "autoencoder.safetensors")
        for part, module in modality_modules.items():
            load_weights(module, directory / f"{part}.safetensors")
        if conditioners:
            load_weights(nn.ModuleList(conditioners), directory / "conditioner.safetensors")
        if denoiser is not None:
            load_weights(denoiser, directory / "denoiser.safetensors")
        keep = {k: cfg[k] for k in ("modality", "autoencoder", "regularizer", "denoiser", "conditioner", "diffusion", "sampler") if k in cfg}
        try:  # the diffusion process, from diffusion.process (or an older export's diffusion.parameterization)
            pipe = cls(modality, autoencoder, stats, keep, denoiser, conditioners)
        except (ValueError, LookupError) as e:
            raise ExportError(f"{directory / 'config.yaml'}: 'diffusion' does not describe a diffusion process the "
                              f"installed plugins can build: {type(e).__name__}: {e}") from e
        return pipe.to(device).eval()


#: Weights files of the model's own parts: a modality's trained module may not take one of these names.
MODEL_PARTS = ("autoencoder", "denoiser", "conditioner")


def _modality_modules(modality: Modality) -> dict[str, nn.Module]:
    """:meth:`Modality.trained_modules`, refusing a part name that is not a plain file stem or that a model
    part's weights file holds."""
    modules = dict(modality.trained_modules())
    for part in modules:
        if part in MODEL_PARTS or not part.isidentifier():
            raise ValueError(f"modality '{modality.name}' names a trained module '{part}': expected an identifier "
                             f"other than {', '.join(MODEL_PARTS)} (it becomes <part>.safetensors in an export)")
    return modules


def _repeat(value: Any, n: int) -> Any:
    """One condition value (a tensor or list of one, or a scalar or string) repeated for ``n`` samples."""
    if isinstance(value, Tensor):  # a scalar, a batch of one [1, ...], or one unbatched item [...]
        one = value.reshape(1) if value.ndim == 0 else value if value.shape[0] == 1 else value.unsqueeze(0)
        return one.expand(n, *one.shape[1:]).clone()
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"an interpolation takes one condition value for all frames, got {len(value)}")
        value = value[0]
    return [value] * n


def sample_conditions(pipe: LatentDiffusion, val: Any, n: int) -> dict[str, Any] | None:
    """Conditions for ``n`` samples: the classes in turn for a class-only model (a balanced grid), else the
    conditions of held-out items ``0..n-1`` (cycled), every key from the same item, so class, caption and
    mask agree. ``None`` for an unconditional model."""
    readers = [c for c in pipe.conditioners if getattr(c, "key", None) and not c.latent_derived]
    keys = [c.key for c in readers]
    if not keys:
        return None
    if keys == ["class"]:
        return {"class": torch.arange(n) % readers[0].num_classes}
    items = [val[i % len(val)]["cond"] for i in range(n)]
    missing = [k for k in keys if k not in items[0]]
    if missing:
        raise ValueError(f"the model is conditioned on {missing}, but the held-out items of modality="
                         f"{pipe.modality.name} carry only {sorted(items[0])}")
    values = {k: [it[k] for it in items] for k in keys}
    return {k: torch.stack(v) if isinstance(v[0], torch.Tensor) else torch.tensor(v) if k == "class" else v
            for k, v in values.items()}
