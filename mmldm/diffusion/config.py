"""Sampler and process configs (torch-free: the CLI validates them before importing torch).

A run's process config sits at ``diffusion.process`` (the ``process`` group is stored
there, so ``process=flow`` selects it and ``diffusion.process.shift=3`` sets a key);
an export records it in the same place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

from ..config import ComponentConfig
from ..schema import at_least, check_fields, checked, finite, one_of, positive

#: The sampler a run, :meth:`mmldm.LatentDiffusion.sample` and ``DiffusionModule.sample`` use by default.
DEFAULT_SAMPLER = "dpmpp_2m"
#: The one default number of sampler steps (``sampler.steps``, and the Python API when neither a call
#: nor the export's sampler config names one). 50 is the ``sampler`` group's default that every trained
#: export records; DPM-Solver++(2M) is as good at 25, first-order samplers need the 50.
DEFAULT_STEPS = 50
#: ``sampler.spacing``: ``auto`` takes the process's own default (the first of its ``spacings``).
SPACINGS = ("auto", "leading", "trailing", "linspace", "karras")


@dataclass
class SamplerConfig(ComponentConfig):
    """How to sample with a registered sampler; the base of every sampler's config, a plugin's too.

    A sampler registered with a config class that does not derive from this one has no ``steps`` and
    ``spacing`` keys (``sampler.steps=25`` is refused as an unknown key, and the sampler gets the default
    number of steps). Fields a subclass adds are the sampler function's own options: a run passes each
    to the function as a keyword argument of the same name (``sampler.eta=0.5`` gives ``eta=0.5``, see
    :func:`~mmldm.diffusion.sampling.sampler_settings` and :func:`sampler_options`)::

        @dataclass
        class EulerAncestralConfig(SamplerConfig):
            eta: float = 1.0  # sample_euler_ancestral(..., eta=1.0)

    Args:
        steps (`int`): number of sigma steps (Heun evaluates the model ``2 * steps - 1`` times).
        spacing (`str`): how the process places the ``steps`` noise levels: ``auto`` (the process's
            default: ``trailing`` for ``vp``, ``linspace`` for ``flow``, ``karras`` for ``edm``), or
            one the process supports (see :attr:`ProcessConfig.spacings`).

    Attributes:
        processes (`tuple[str, ...] | None`): the processes this sampler works with, checked when a
            config is composed; None (every built-in) means any: the samplers only see the VE sigma
            space ``x = z_0 + sigma eps`` that every process maps to.
    """

    processes: ClassVar[Optional[tuple[str, ...]]] = None

    steps: int = at_least(1, DEFAULT_STEPS)
    spacing: str = one_of("auto", SPACINGS)

    def __post_init__(self) -> None:
        check_fields(self, "sampler")


@dataclass
class DDIMConfig(SamplerConfig):
    """DDIM: ``eta`` 0 is deterministic, 1 matches DDPM's posterior noise.

    Args:
        eta (`float`, defaults to 0): the share of each step's noise drawn afresh (>= 0), passed to
            :func:`~mmldm.diffusion.samplers.sample_ddim` as ``eta``.
    """

    eta: float = checked(0.0, ge=0)


def sampler_options(cfg: SamplerConfig) -> dict[str, Any]:
    """The keyword options a sampler function takes from ``cfg``: its fields beyond ``name``, ``steps`` and
    ``spacing`` (``{"eta": 0.0}`` for a :class:`DDIMConfig`), what a run passes it by name."""
    base = {f.name for f in dataclasses.fields(SamplerConfig)}
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in base}


# ------------------------------------------------------------------------------------------ processes
#: ``diffusion.process.schedule`` of ``vp``: the beta schedules :func:`mmldm.diffusion.schedules.make_betas` makes.
BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
#: ``diffusion.process.prediction`` of ``vp``: what the network predicts.
PREDICTIONS = ("eps", "v", "x0")
#: ``diffusion.process.weighting`` of ``vp``.
WEIGHTINGS = ("uniform", "min_snr")
#: ``diffusion.process.time_sampling`` of ``flow``.
TIME_SAMPLINGS = ("logit_normal", "uniform")


@dataclass
class ProcessConfig(ComponentConfig):
    """Base of every process config (kind ``process``).

    Attributes:
        spacings (`tuple[str, ...]`): the ``sampler.spacing`` values the process can place noise levels
            with, its default first (what ``auto`` means); checked against the sampler when composed.
    """

    spacings: ClassVar[tuple[str, ...]] = ("linspace",)

    def __post_init__(self) -> None:
        check_fields(self, "diffusion.process")


@dataclass
class VPConfig(ProcessConfig):
    """``vp``: the discrete variance-preserving process of DDPM / Stable Diffusion.

    Args:
        prediction: what the network predicts: ``eps`` (Ho et al. 2020), ``v`` (Salimans & Ho 2022)
            or ``x0``.
        weighting: ``uniform`` or ``min_snr`` (Min-SNR-gamma, Hang et al. 2023, gamma ``min_snr_gamma``).
        num_timesteps: training steps ``T`` (>= 2); ``schedule`` ``linear``, ``scaled_linear`` or
            ``cosine``; ``beta_start``/``beta_end`` the betas at t=1 and t=T of the linear schedules.
        zero_terminal_snr: rescale the schedule to zero SNR at t=T (Lin et al. 2023; train with ``v``).
    """

    # trailing always starts at the last training step, which zero-terminal-SNR
    # schedules need (Lin et al. 2023) and is never worse for the others
    spacings: ClassVar[tuple[str, ...]] = ("trailing", "leading", "linspace", "karras")

    prediction: str = one_of("eps", PREDICTIONS)
    weighting: str = one_of("uniform", WEIGHTINGS)
    min_snr_gamma: float = positive(5.0)
    num_timesteps: int = at_least(2, 1000)
    schedule: str = one_of("scaled_linear", BETA_SCHEDULES)
    beta_start: float = checked(0.00085, gt=0, lt=1)
    beta_end: float = checked(0.012, gt=0, lt=1)
    zero_terminal_snr: bool = False


@dataclass
class FlowConfig(ProcessConfig):
    """``flow``: rectified flow / flow matching, ``z_t = (1 - t) z_0 + t eps``, velocity target ``eps - z_0``.

    Args:
        time_sampling: training times ``t``: ``logit_normal`` (``sigmoid(N(logit_mean, logit_std^2))``,
            SD3's choice, Esser et al. 2024) or ``uniform`` on (0, 1).
        shift: SD3's time shift ``t -> shift t / (1 + (shift - 1) t)``, applied to the training times
            and the sampling grid alike (1: none; SD3 uses 3 at 1024 px: more steps at high noise).
        t_max: where the sampling grid starts (before the shift). ``t = 1`` is ``sigma = inf`` in the
            samplers' VE space, so the grid starts just below it; see :class:`mmldm.diffusion.flow.FlowProcess`.
    """

    spacings: ClassVar[tuple[str, ...]] = ("linspace",)

    time_sampling: str = one_of("logit_normal", TIME_SAMPLINGS)
    logit_mean: float = finite(0.0)
    logit_std: float = positive(1.0)
    shift: float = positive(1.0)
    t_max: float = checked(0.999, gt=0, lt=1)


@dataclass
class EDMConfig(ProcessConfig):
    """``edm``: Karras et al. 2022 (arXiv 2206.00364): preconditioning, log-normal training sigmas, Karras grid.

    Args:
        sigma_data: the standard deviation of the data. mmldm's latents are normalized to unit
            standard deviation (``data.latent_scale``), so 1.0, not EDM's 0.5 for [-1, 1] pixels: with
            it the network's input and target have unit variance at every sigma, what the
            preconditioning is derived for (Karras et al. 2022, Appendix B.6).
        p_mean: the mean of the training ``ln(sigma) ~ N(p_mean, p_std^2)``.
        p_std: its standard deviation.
        sigma_min: the last nonzero sigma of the sampling grid ``(sigma_max^(1/rho) + i/(n-1)
            (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``, then 0 (Karras et al. 2022, eq. 5).
        sigma_max: its first sigma.
        rho: its spacing exponent.
    """

    spacings: ClassVar[tuple[str, ...]] = ("karras",)

    sigma_data: float = positive(1.0)
    p_mean: float = finite(-1.2)
    p_std: float = positive(1.2)
    sigma_min: float = positive(0.002)
    sigma_max: float = positive(80.0)
    rho: float = positive(7.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"diffusion.process.sigma_min ({self.sigma_min:g}) must be less than "
                             f"diffusion.process.sigma_max ({self.sigma_max:g})")


#: The keys of a ``vp`` process that exports written before the ``process`` group kept in ``diffusion``.
_LEGACY_VP_KEYS = {"parameterization": "prediction", "weighting": "weighting", "min_snr_gamma": "min_snr_gamma",
                   "num_timesteps": "num_timesteps", "schedule": "schedule", "beta_start": "beta_start",
                   "beta_end": "beta_end", "zero_terminal_snr": "zero_terminal_snr"}


def upgrade_diffusion_config(diffusion: Mapping[str, Any]) -> dict[str, Any]:
    """A ``diffusion`` config (a dict, e.g. from an export's ``config.yaml``) with its ``process``.

    An export written before the ``process`` group has ``diffusion.parameterization`` (and the
    schedule keys) instead of ``diffusion.process``: that is the ``vp`` process with those values,
    moved into ``process``.
    """
    if diffusion.get("process") is not None:
        return dict(diffusion)
    if "parameterization" not in diffusion:
        raise ValueError("the diffusion config has neither 'process' nor (written by an older mmldm) "
                         "'parameterization'; it does not say which diffusion process the denoiser learned")
    process = {"name": "vp", **{new: diffusion[old] for old, new in _LEGACY_VP_KEYS.items() if old in diffusion}}
    return {**{k: v for k, v in diffusion.items() if k not in _LEGACY_VP_KEYS}, "process": process}


def check_sampler_fits(process: ProcessConfig, sampler: Any, spacing: str | None = None) -> None:
    """Raise ``ValueError`` when ``sampler`` (a sampler config) cannot run with ``process`` (a process config).

    Checks the spacing (``spacing``, else ``sampler.spacing``) against :attr:`ProcessConfig.spacings` and
    the process against the sampler's :attr:`SamplerConfig.processes`. Configs of other classes declare
    nothing and pass.
    """
    if not isinstance(process, ProcessConfig) or not isinstance(sampler, SamplerConfig):
        return
    if sampler.processes is not None and process.name not in sampler.processes:
        raise ValueError(f"sampler={sampler.name} works with process={' or process='.join(sampler.processes)} "
                         f"only, not process={process.name}; choose another sampler")
    spacing = spacing or sampler.spacing
    if spacing not in ("auto", *process.spacings):
        raise ValueError(f"sampler.spacing={spacing} does not fit process={process.name}, which places "
                         f"noise levels with {', '.join(process.spacings)}; use sampler.spacing=auto "
                         f"(= {process.spacings[0]}) or one of those")
