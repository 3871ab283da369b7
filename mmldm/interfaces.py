"""Abstract interfaces of mmldm's components.

Every sample is a tensor ``[B, C, *spatial]`` with ``len(spatial) == dims`` and
``dims`` in ``{1, 2, 3}``. A batch is a dict ``{"x": Tensor, "cond": {...}}``;
missing condition keys mean "unconditional".

The core package defines these classes and owns no concrete model: plugins
subclass them and register factories through
:func:`mmldm.hookspecs.mmldm_register_components`.

Factory conventions (what :meth:`mmldm.registry.Registry.build` passes):

========== ==============================================================
kind       factory call
========== ==============================================================
modality   ``factory(cfg)``
regularizer ``factory(cfg, *, latent_channels)``
autoencoder ``factory(cfg, *, dims, in_channels, regularizer)``; every
           autoencoder config has ``latent_channels``
denoiser   ``factory(cfg, *, dims, in_channels, out_channels, context_dim,
           concat_channels, vector_dim)``
conditioner ``factory(cfg, *, modality)``
sampler    the entry *is* the sampler function (see :mod:`mmldm.diffusion`)
process    ``factory(cfg)``: a :class:`mmldm.diffusion.process.Process`
vocoder    ``factory(cfg, **kwargs)``
========== ==============================================================
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

#: The names of the three ways a condition reaches the denoiser.
CONDITIONING_KINDS = ("crossattn", "concat", "vector")


class LatentDistribution(abc.ABC):
    """What :meth:`Autoencoder.encode` returns: a distribution over latents.

    All tensors are ``[B, c, *latent_spatial]``.

    Attributes:
        is_stochastic (`bool`): whether :meth:`sample` draws around :meth:`mode` (a Gaussian posterior,
            ``mode() + std * eps``); ``False`` (the default) for a point mass, whose ``sample()`` is ``mode()``.
            Phase 2 trains on posterior samples of a stochastic posterior and on the mode otherwise;
            the latent cache stores ``mode()`` and :attr:`std` so it can draw without the encoder.
    """

    is_stochastic: bool = False

    @property
    def std(self) -> Tensor:
        """Per-element standard deviation of ``sample()`` around ``mode()``: zeros for a point mass (the
        default); a stochastic distribution must override it with its own (a diagonal Gaussian's ``exp(logvar/2)``)."""
        if self.is_stochastic:
            raise NotImplementedError(f"{type(self).__name__} is stochastic but does not define std: the latent "
                                      "cache stores mode() and std to draw posterior samples without the encoder")
        return torch.zeros_like(self.mode())

    @abc.abstractmethod
    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """A draw ``z ~ q(z|x)`` (reparameterized, differentiable)."""

    @abc.abstractmethod
    def mode(self) -> Tensor:
        """The most likely latent (the mean for a Gaussian)."""

    @abc.abstractmethod
    def kl(self) -> Tensor:
        """KL divergence to N(0, I) per sample, summed over latent elements: ``[B]``."""


@dataclass
class RegularizerOutput:
    """What a :class:`Regularizer` returns in training.

    Args:
        z (`Tensor`): the latent handed to the decoder, ``[B, c, *spatial]``.
        loss (`Tensor`): scalar regularization loss, already weighted.
        logs (`dict[str, Tensor]`): scalars to log (detached).
        distribution (`LatentDistribution`): the posterior the latent came from.
    """

    z: Tensor
    loss: Tensor
    logs: dict[str, Tensor]
    distribution: LatentDistribution


class Regularizer(nn.Module, abc.ABC):
    """Sits between encoder and decoder (KL, VQ, plain AE, ...).

    The encoder emits ``latent_channels * encoder_channel_factor`` channels
    (a diagonal Gaussian needs mean and log-variance: factor 2).
    """

    #: How many encoder output channels per latent channel this regularizer needs.
    encoder_channel_factor: int = 1

    @abc.abstractmethod
    def distribution(self, h: Tensor) -> LatentDistribution:
        """Encoder output ``h [B, c*factor, *s]`` -> posterior over ``z [B, c, *s]``."""

    @abc.abstractmethod
    def forward(self, h: Tensor) -> RegularizerOutput:
        """Training path: latent for the decoder plus the regularization loss."""

    def decoder_input(self, z: Tensor) -> Tensor:
        """Map a latent seen by diffusion to the decoder's input.

        Identity by default; a VQ regularizer that lets diffusion work on the
        pre-quantization latent quantizes here (the LDM "quantizer in the
        decoder" variant).
        """
        return z


@dataclass
class AutoencoderOutput:
    """Result of :meth:`Autoencoder.forward`: ``reconstruction [B, C, *spatial]``,
    the latent ``z``, the regularizer's scalar ``loss`` and ``logs``."""

    reconstruction: Tensor
    z: Tensor
    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


class Autoencoder(nn.Module, abc.ABC):
    """Perceptual compression ``x [B, C, *s] -> z [B, c, *s/f] -> x~ [B, C, *s]``.

    Attributes:
        dims (`int`): number of spatial dimensions (1, 2 or 3).
        in_channels (`int`): ``C``.
        latent_channels (`int`): ``c``.
        downsample_factor (`int`): ``f = 2**m``, the spatial reduction per axis.
    """

    dims: int
    in_channels: int
    latent_channels: int
    downsample_factor: int

    @abc.abstractmethod
    def encode(self, x: Tensor) -> LatentDistribution:
        """``x [B, C, *s]`` -> posterior over ``z [B, c, *s/f]``."""

    @abc.abstractmethod
    def decode(self, z: Tensor) -> Tensor:
        """``z [B, c, *s/f]`` -> ``x~ [B, C, *s]``."""

    @abc.abstractmethod
    def forward(self, x: Tensor) -> AutoencoderOutput:
        """Training path: encode, regularize, decode."""

    @property
    def last_layer(self) -> Tensor | None:
        """The decoder's output weight, where the phase-1 loss balances the GAN gradient against the
        reconstruction gradient (LDM's adaptive weight); ``None`` (the default) when there is none, and
        the loss then uses its fixed GAN weight."""
        return None

    def make_loss(self, reconstruction: str = "l1") -> nn.Module:
        """The phase-1 objective for this autoencoder (an ``nn.Module``, e.g. with a discriminator).

        Called as ``loss(x, out: AutoencoderOutput, step=..., last_layer=...) -> (total, logs)``
        and ``loss.reconstruction_loss(x, x_rec) -> Tensor``; its own trainable parameters
        are optimized too. ``reconstruction`` is the modality's suggestion
        (:attr:`Modality.reconstruction_loss`) for configs that leave the choice to it.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not define make_loss(); an autoencoder plugin must provide "
            "its phase-1 objective to be trained with mmldm"
        )

    def latent_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """``(C, *s)`` -> ``(c, *s/f)``; raises ``ValueError`` when ``f`` does not divide ``s``."""
        spatial = tuple(input_shape[1:])
        if len(spatial) != self.dims:
            raise ValueError(
                f"input shape {tuple(input_shape)} has {len(spatial)} spatial dims, "
                f"the autoencoder expects (C, *spatial) with {self.dims}"
            )
        f = self.downsample_factor
        bad = [s for s in spatial if s % f]
        if bad:
            raise ValueError(
                f"input size {spatial} is not divisible by the autoencoder's "
                f"downsampling factor f={f} (size {bad[0]} % {f} != 0); "
                f"pad/crop the data to a multiple of {f} or change channel_mult"
            )
        return (self.latent_channels, *(s // f for s in spatial))


@dataclass
class Conditioning:
    """What a :class:`Conditioner` hands the denoiser; each part optional.

    Args:
        crossattn (`Tensor`, *optional*): tokens ``[B, M, d_tau]`` for cross-attention.
        concat (`Tensor`, *optional*): maps ``[B, c_y, *latent_spatial]`` concatenated with ``z_t``.
        vector (`Tensor`, *optional*): ``[B, d_vec]`` added to the time embedding.
    """

    crossattn: Tensor | None = None
    concat: Tensor | None = None
    vector: Tensor | None = None

    def items(self) -> list[tuple[str, Tensor]]:
        return [(k, getattr(self, k)) for k in CONDITIONING_KINDS if getattr(self, k) is not None]

    def merge(self, other: "Conditioning") -> "Conditioning":
        """Combine two conditionings from different conditioners.

        Tokens are joined along ``M``, maps along channels and vectors along features.
        """
        dims = {"crossattn": 1, "concat": 1, "vector": 1}
        out = {}
        for k in CONDITIONING_KINDS:
            a, b = getattr(self, k), getattr(other, k)
            out[k] = a if b is None else b if a is None else torch.cat([a, b], dim=dims[k])
        return Conditioning(**out)

    @staticmethod
    def stack(first: "Conditioning", second: "Conditioning") -> "Conditioning":
        """Concatenate along the batch, for one forward pass over cond and uncond."""
        out = {}
        for f in fields(Conditioning):
            a, b = getattr(first, f.name), getattr(second, f.name)
            if (a is None) != (b is None):
                raise ValueError(f"cannot stack conditionings: '{f.name}' is set in only one of them")
            out[f.name] = None if a is None else torch.cat([a, b], dim=0)
        return Conditioning(**out)

    def repeat(self, n: int) -> "Conditioning":
        """Repeat every part ``n`` times along the batch."""
        return Conditioning(
            **{k: v.repeat_interleave(n, dim=0) for k, v in self.items()}
        )


class Conditioner(nn.Module, abc.ABC):
    """tau_theta: maps a condition ``y`` to a :class:`Conditioning`.

    Attributes:
        key (`str`): which entry of ``batch["cond"]`` it reads ("class", "text", ...).
        outputs (`tuple[str, ...]`): the parts of :class:`Conditioning` it fills,
            declared, never inferred from tensor rank.
        context_dim (`int | None`): ``d_tau`` of the cross-attention tokens.
        concat_channels (`int`): channels of the concatenated maps.
        vector_dim (`int | None`): size of the vector.
        dropout (`float | None`): its own condition-dropout rate in training (classifier-free
            guidance); None takes the run's ``diffusion.cond_dropout``.
        latent_derived (`bool`): the condition of a training batch is made from its clean latents by
            :meth:`from_latents` (e.g. a masked latent for inpainting) instead of read from the data; samples
            drawn after training leave it out (its null condition).
    """

    key: str
    outputs: tuple[str, ...]
    context_dim: int | None = None
    concat_channels: int = 0
    vector_dim: int | None = None
    dropout: float | None = None
    #: the condition is made from the clean latents in training (:meth:`from_latents`), not read from the data
    latent_derived: bool = False

    @abc.abstractmethod
    def forward(self, cond: Mapping[str, Any], batch_size: int) -> Conditioning:
        """Encode ``cond[self.key]``; entries marked dropped use the null condition."""

    @abc.abstractmethod
    def null(self, batch_size: int) -> Conditioning:
        """The unconditional input used for classifier-free guidance."""

    def set_latent_shape(self, latent_shape: Sequence[int]) -> None:
        """Receive the latent shape ``(c, *s)`` once it is known, before any call.

        Conditioners that emit ``concat`` maps size them to the grid ``s``. No-op by default.
        """

    def from_latents(self, z: Tensor, generator: torch.Generator | None = None) -> Any:
        """The condition value of a training batch with clean (normalized) latents ``z [B, c, *s]``, for a
        conditioner with :attr:`latent_derived` set (phase 2 calls it when the batch does not carry the key)."""
        raise NotImplementedError(f"conditioner '{self.key}' sets latent_derived but does not implement from_latents")

    def augment(self, value: Any, batch_size: int) -> Any:
        """A training batch's ``cond[self.key]`` as the denoiser should learn from it (e.g. a caption with some
        of its parts left out, :class:`~mmldm_conditioners.text.TextConditionerBase`'s ``tag_dropout``).

        Phase 2 calls it on training batches only (before condition dropout), never in validation or sampling;
        draws from torch's global generator, as condition dropout does. The value unchanged by default.
        """
        return value

    def parts(self, value: Any, batch_size: int) -> list[Any] | None:
        """``cond[self.key]`` split into parts that guidance can weigh one by one (Composable Diffusion, Liu et
        al. 2022: each part its own branch, ``compose`` of :func:`~mmldm.diffusion.sampling.sample_latents`), as
        a list of values of the same batch size; a sample with fewer parts fills the rest with values whose
        encoding is the null condition (so their branch adds nothing). ``None`` (the default): not divisible."""
        return None

    def values(self) -> Sequence[Any] | None:
        """Every value of ``cond[self.key]`` it knows, when they are few (a class conditioner: its class indices),
        else ``None`` (free text, maps). :meth:`LatentDiffusion.classify <mmldm.pipeline.LatentDiffusion.classify>`
        chooses among them when given no candidates."""
        return None

    def fit(self, values: Sequence[Any]) -> None:
        """Learn from the training set's values of ``cond[self.key]`` before phase 2 trains.

        E.g. a tokenizer learned from the captions. Called once before the optimizer
        is built, on every process, so it must be deterministic; a conditioner that is
        already fitted (or loaded) keeps its state. No-op by default.
        """


class Denoiser(nn.Module, abc.ABC):
    """``eps_theta(z_t, t, tau(y))``: the network of phase 2.

    ``forward(z_t [B, c, *s], t [B] float, conditioning) -> [B, c_out, *s]``:
    the target of the run's diffusion process (``vp``: eps, v or x0; ``flow``:
    the velocity; ``edm``: the preconditioned ``F``). ``t`` is the process's
    ``c_noise``: a timestep in [0, 1000) for ``vp`` and ``flow``, ``1000 ln(sigma) / 4`` for ``edm``.
    """

    dims: int
    in_channels: int
    out_channels: int

    @abc.abstractmethod
    def forward(self, z_t: Tensor, t: Tensor, conditioning: Conditioning | None = None) -> Tensor: ...

    def check_inputs(self, z_t: Tensor, conditioning: Conditioning) -> None:
        """``ValueError`` for a ``z_t`` that is not ``[B, in_channels, *spatial]`` with :attr:`dims` spatial axes,
        or a conditioning kind the network was built for (its ``context_dim``, ``concat_channels`` or
        ``vector_dim`` attribute, when set) that is missing."""
        if z_t.ndim != self.dims + 2 or z_t.shape[1] != self.in_channels:
            raise ValueError(f"expected z_t of shape [B, {self.in_channels}, *spatial] with {self.dims} spatial "
                             f"dims, got {tuple(z_t.shape)}")
        for kind, attr in (("crossattn", "context_dim"), ("concat", "concat_channels"), ("vector", "vector_dim")):
            size = getattr(self, attr, None)
            if size and getattr(conditioning, kind) is None:
                raise ValueError(f"this {type(self).__name__} was built with {kind} conditioning (size {size}) but "
                                 f"conditioning.{kind} is None")


class Vocoder(nn.Module, abc.ABC):
    """Turns a feature tensor (e.g. a log-mel spectrogram ``[B, n_mels, T]``) into a waveform ``[B, N]``."""

    sample_rate: int

    @abc.abstractmethod
    def forward(self, features: Tensor) -> Tensor: ...

    def fit(self, modality: "Modality", directory: Path, *, seed: int = 0, max_steps: int | None = None,
            max_minutes: float | None = None, progress: bool = True) -> dict[str, Any]:
        """Train on ``modality``'s "train" split and write a folder the modality can load the vocoder from
        (what ``mmldm train-vocoder`` runs); return what was recorded in it (settings, provenance, held-out
        metrics). ``max_steps``/``max_minutes`` cap the vocoder's own budget when given.

        A vocoder that needs no training (Griffin-Lim) keeps this default, which refuses.
        """
        raise NotImplementedError(f"{type(self).__name__} needs no training (it has no trainable weights)")


class Modality(abc.ABC):
    """Everything modality-specific: data, files a person opens, metrics.

    Attributes:
        name (`str`): registry name ("voxel", "image", "audio", ...).
        dims (`int`): spatial dims of a sample.
        channels (`int`): ``C`` of a sample.
        num_classes (`int`): number of class labels of the data (0 if none).
        class_names (`Sequence[str] | None`): names of the class labels (index ``i`` -> name), used to title
            previews; ``None``: the indices are shown.
        sample_shape (`tuple[int, ...]`): ``(C, *spatial)``.
        reconstruction_loss (`str`): the reconstruction loss that suits the data
            ("l1" for images and spectrograms, "bce" for occupancy grids).
    """

    name: str
    dims: int
    channels: int
    num_classes: int = 0
    class_names: Sequence[str] | None = None
    reconstruction_loss: str = "l1"

    @property
    @abc.abstractmethod
    def sample_shape(self) -> tuple[int, ...]: ...

    @abc.abstractmethod
    def dataset(self, split: str) -> torch.utils.data.Dataset:
        """Split ``"train"`` or ``"val"``; items are ``{"x": Tensor[C, *s], "cond": {...}}``."""

    @abc.abstractmethod
    def save(self, samples: Tensor, directory: Path, prefix: str = "sample",
             titles: Sequence[str] | None = None) -> list[Path]:
        """Write one file set per sample of ``samples [B, C, *s]`` plus a preview (``{prefix}_grid.png``);
        return the paths. ``titles``: one label per sample (the condition it was sampled with, from
        :func:`mmldm.preview.titles`) for the preview; :func:`mmldm.preview.tile` tiles and titles pictures."""

    @abc.abstractmethod
    def reconstruction_metrics(self, x: Tensor, x_rec: Tensor) -> dict[str, float]:
        """Quality of ``x_rec`` against ``x`` (both ``[B, C, *s]``), e.g. PSNR or IoU."""

    def generation_metrics(
        self, real: Tensor, generated: Tensor, labels: Tensor | None = None
    ) -> dict[str, float]:
        """Quality of a set of generated samples against real ones. Empty when not defined."""
        return {}

    def save_reconstructions(self, x: Tensor, x_rec: Tensor, directory: Path) -> list[Path]:
        """Write inputs ``x`` and their reconstructions ``x_rec`` (``[B, C, *s]``) for a person to compare.

        The default saves both sets with :meth:`save` (prefixes ``input`` and ``reconstruction``); a
        modality may add a side-by-side picture.
        """
        return [*self.save(x, directory, prefix="input"), *self.save(x_rec, directory, prefix="reconstruction")]

    def postprocess(self, decoded: Tensor) -> Tensor:
        """Map the decoder's raw output to the modality's layout (e.g. occupancy logits -> probabilities)."""
        return decoded

    def finalize(self, samples: Tensor) -> Tensor:
        """Data-space samples as the modality delivers them: the form its generation metrics measure,
        and what a classifier trained on real data judges (:func:`mmldm.evaluation.generation.judge_samples`).

        The default returns ``samples`` unchanged. A modality whose data are discrete overrides it, e.g.
        voxel occupancy: probabilities -> the 0/1 occupancy its meshes are extracted at. Keeps the shape
        and is idempotent.
        """
        return samples

    def trained_modules(self) -> dict[str, nn.Module]:
        """Trained modules the modality's files depend on, beyond the model's own (e.g. a neural vocoder
        that turns samples into sound), by part name; none by default.

        :meth:`LatentDiffusion.save_pretrained <mmldm.pipeline.LatentDiffusion.save_pretrained>` writes each
        as ``<part>.safetensors``, and ``from_pretrained`` loads them back into the modules this returns
        after :meth:`load_state_dict`, so an export does not depend on where they were trained. The modules'
        configs belong in :meth:`state_dict` so that a loaded modality can build them before their weights
        are loaded.
        """
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Statistics measured on the data that an exported model needs (e.g. feature normalization).

        Plain lists/numbers only: they are written to ``config.yaml``.
        """
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    # ---- editing: a person's own files and regions (``mmldm edit``, LatentDiffusion.inpaint/vary/interpolate)
    def load(self, path: str | Path) -> Tensor:
        """A file a person has (a picture, a mesh, a recording) as one sample ``[C, *spatial]`` in the training
        layout: the form, normalization and size of ``dataset(split)[i]["x"]``. The reverse of :meth:`save`
        where the modality writes a format it reads.

        Raises ``ValueError`` naming the file and what was expected (an unknown suffix, a file that cannot
        be read, content of the wrong shape). The default refuses: a modality that reads files overrides it.
        """
        raise NotImplementedError(f"the {self.name} modality ({type(self).__name__}) cannot read files: it does "
                                  f"not define Modality.load(), so '{path}' cannot be turned into a sample")

    def load_mask(self, path: str | Path) -> Tensor:
        """A mask file as ``[1 or C, *spatial]`` of 0/1 (1 = generate, 0 = keep): the file read with
        :meth:`load` and thresholded at 0.5 (an image: pixels brighter than 3/4 grey are generated). A
        modality whose loaded values do not read that way (a signed distance) overrides it."""
        return (self.load(path) > 0.5).float()

    def region_names(self) -> dict[str, str]:
        """The named regions this modality adds to the generic ``box:`` of :meth:`region_mask`: usage ->
        what it covers, e.g. ``{"top": "the upper half of the rows"}``; a name that takes an argument is
        written with it, ``"gap:<start_s>-<end_s>"``. None by default."""
        return {}

    def named_region(self, name: str, argument: str | None) -> Tensor:
        """The mask ``[1, *spatial]`` (1 = generate) of one of :meth:`region_names` (``name`` without its
        argument; ``argument`` is the text after ``:``, ``None`` when absent). Called by :meth:`region_mask`
        for names listed by :meth:`region_names` only; a bad argument raises ``ValueError`` saying what is
        expected. A region that differs between channels may return ``[C, *spatial]``."""
        raise ValueError(f"the {self.name} modality has no region '{name}'")

    def region_mask(self, spec: str) -> Tensor:
        """A named region as a mask ``[1, *spatial]`` (or ``[C, *spatial]``), 1 = generate, 0 = keep: the
        generic ``box:<lo>-<hi>,...`` (fractions per spatial axis) or one of :meth:`region_names` (see
        :func:`mmldm.regions.region_mask`). ``ValueError`` lists the regions for an unknown one."""
        from .regions import region_mask

        return region_mask(self, spec)

    def erase(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x [B, C, *s]`` with the region to generate (``mask`` 1) blanked, for a person to see what
        inpainting keeps (``mmldm edit`` saves it as ``masked_*``): zeros there by default (mid-grey for
        images in [-1, 1], empty space for occupancy); a modality whose "nothing" is another value overrides it."""
        return x * (1 - mask.to(x.dtype))

    def check_input(self, path: str | Path, suffixes: Sequence[str], expected: str) -> Path:
        """``path`` as a :class:`~pathlib.Path` when it is a readable regular file with one of ``suffixes``
        (lower-cased, e.g. ``(".png", ".jpg")``); else a ``ValueError`` naming the file, the modality and
        ``expected`` (e.g. ``"a picture (.png, .jpg)"``). For :meth:`load` implementations."""
        from .data import path_problem

        path = Path(path)
        where = f"{path}: cannot load as a sample of the {self.name} modality"
        if path.suffix.lower() not in tuple(s.lower() for s in suffixes):
            raise ValueError(f"{where}: unknown file type '{path.suffix or '(none)'}'; expected {expected}")
        if not path.exists() and not path.is_symlink():
            raise ValueError(f"{where}: no such file")
        problem = path_problem(path)
        if problem is not None:
            raise ValueError(f"{where}: {problem}")
        return path
