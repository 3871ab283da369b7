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
        """
        if self.denoiser is None:
            raise RuntimeError("this export holds an autoencoder only (no denoiser): train phase 2 to sample")
        from .diffusion.sampling import sample_generators, sample_latents, sampler_settings

        settings = sampler_settings(self.config.get("sampler"), sampler, steps, **sampler_options)
        self._check_sampler(settings["sampler"], settings["spacing"])
        device = next(self.denoiser.parameters()).device
        generator = sample_generators(seed, n, device) if seed is not None else None
        z = sample_latents(self.denoiser, list(self.conditioners), self.process, (n, *self.latent_shape), cond,
                           guidance=guidance, generator=generator, progress=progress, **settings)
        return z if return_latents else self.decode(z)

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


def sample_conditions(pipe: LatentDiffusion, val: Any, n: int) -> dict[str, Any] | None:
    """Conditions for ``n`` samples: the classes in turn for a class-only model (a balanced grid), else the
    conditions of held-out items ``0..n-1`` (cycled), every key from the same item, so class, caption and
    mask agree. ``None`` for an unconditional model."""
    keys = [c.key for c in pipe.conditioners if getattr(c, "key", None)]
    if not keys:
        return None
    if keys == ["class"]:
        return {"class": torch.arange(n) % pipe.conditioners[0].num_classes}
    items = [val[i % len(val)]["cond"] for i in range(n)]
    missing = [k for k in keys if k not in items[0]]
    if missing:
        raise ValueError(f"the model is conditioned on {missing}, but the held-out items of modality="
                         f"{pipe.modality.name} carry only {sorted(items[0])}")
    values = {k: [it[k] for it in items] for k in keys}
    return {k: torch.stack(v) if isinstance(v[0], torch.Tensor) else torch.tensor(v) if k == "class" else v
            for k, v in values.items()}
