"""Stable Diffusion's autoencoder in the diffusers format <-> mmldm's 2D KL autoencoder ``conv``.

A diffusers ``AutoencoderKL`` folder (or the ``vae/`` sub-folder of a pipeline folder) holds::

    config.json                            architecture and latent scaling, "_class_name": "AutoencoderKL"
    diffusion_pytorch_model.safetensors    weights (or diffusion_pytorch_model.fp16.safetensors)

The architecture (Rombach et al. 2022, arXiv 2112.10752) is the autoencoder ``conv`` with
``downsample_padding="asymmetric"``, ``attention_bias=True``, ``attention_norm_groups=norm_groups``,
``quant_conv``/``post_quant_conv`` and regularizer ``kl``: ``block_out_channels`` become
``channels * channel_mult`` and ``layers_per_block`` becomes ``num_res_blocks`` (the decoder has one
more per level in both). Tensors are renamed one by one and their shapes checked.

Latent scaling: diffusers feeds the diffusion model ``(z - shift_factor) * scaling_factor``
(SD 1/2: ``scaling_factor=0.18215``; SD3 and FLUX add ``shift_factor``), or per channel
``(z - latents_mean) * scaling_factor / latents_std``. mmldm's :class:`~mmldm.latents.LatentStats`
normalizes ``(z - mean) / std``, so ``mean = shift_factor`` (or ``latents_mean``) and
``std = 1 / scaling_factor`` (or ``latents_std / scaling_factor``).

Reading and writing need only ``json`` and ``safetensors``; diffusers is never imported. Usage::

    autoencoder, stats, cfg = load_diffusers_vae("sd-vae")   # then LatentDiffusion(...).save_pretrained
    save_diffusers_vae(autoencoder, stats, "exported-vae")   # AutoencoderKL.from_pretrained loads it

For phase 2 on SD latents from the command line, ``phase1.checkpoint=<diffusers folder>`` goes
through the plugin hooks ``mmldm_phase1_latent_shape`` (pre-flight) and ``mmldm_load_phase1``, which
call :func:`diffusers_latent_shape` and :func:`phase1_from_diffusers`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import Tensor

from mmldm.export import ExportError
from mmldm.latents import LatentStats

from .config import ConvAutoencoderConfig, KLRegularizerConfig
from .model import ConvAutoencoder
from .regularizers import KLRegularizer

if TYPE_CHECKING:
    from mmldm.pipeline import LatentDiffusion

CONFIG_FILE = "config.json"
WEIGHTS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
CLASS_NAME = "AutoencoderKL"
DOWN_BLOCK, UP_BLOCK = "DownEncoderBlock2D", "UpDecoderBlock2D"
#: Fields every diffusers-written config.json has; the others default as in ``AutoencoderKL.__init__``.
REQUIRED = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
            "layers_per_block", "latent_channels")
DEFAULTS = {"act_fn": "silu", "norm_num_groups": 32, "scaling_factor": 0.18215, "shift_factor": None,
            "latents_mean": None, "latents_std": None, "use_quant_conv": True, "use_post_quant_conv": True,
            "mid_block_add_attention": True}
IGNORED = ("sample_size", "force_upcast")  # tiling and dtype hints of diffusers, no effect on the weights

# mmldm sub-module -> diffusers sub-module, per block kind ("" is the module itself)
_LAYER = {"": ""}
_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "skip": "conv_shortcut"}
_ATTENTION = {"norm": "group_norm", "attn.to_q": "to_q", "attn.to_k": "to_k", "attn.to_v": "to_v",
              "attn.to_out": "to_out.0"}
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}  # diffusers < 0.14


# ---------------------------------------------------------------------------- files
def vae_folder(path: str | Path) -> Path:
    """``path`` itself, or its ``vae/`` sub-folder (a pipeline folder); raises naming the missing file."""
    path = Path(path)
    for folder in (path, path / "vae"):
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise ExportError(f"{path / CONFIG_FILE} not found: expected a diffusers AutoencoderKL folder "
                      f"({CONFIG_FILE} + {WEIGHTS_FILES[0]}) or a pipeline folder with vae/{CONFIG_FILE}")


def read_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a diffusers ``AutoencoderKL`` folder, checked for its class name."""
    file = vae_folder(path) / CONFIG_FILE
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot parse {file}: {e}") from e
    if not isinstance(data, dict):
        raise ExportError(f"{file} must hold a JSON object, got {type(data).__name__}")
    if data.get("_class_name") != CLASS_NAME:
        raise ExportError(f"{file}: _class_name={data.get('_class_name')!r}, expected {CLASS_NAME!r} "
                          "(only diffusers' KL autoencoder converts to mmldm's)")
    return data


def is_diffusers_vae(path: str | Path) -> bool:
    """Whether ``path`` (or ``path/vae``) holds a ``config.json`` with ``"_class_name": "AutoencoderKL"``."""
    try:
        read_config(path)
    except ExportError:
        return False
    return True


def _read_weights(folder: Path) -> tuple[Path, dict[str, Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = next((folder / n for n in WEIGHTS_FILES if (folder / n).is_file()), None)
    if file is None:
        pickled = " (a .bin file is there: pickles are not loaded, save it as safetensors)" if any(
            folder.glob("diffusion_pytorch_model*.bin")) else ""
        raise ExportError(f"weights file not found: {folder / WEIGHTS_FILES[0]}{pickled}")
    try:
        return file, load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"cannot read weights file {file} (corrupted or truncated?): {e}") from e


# ---------------------------------------------------------------------------- configs
def _get(data: Mapping[str, Any], key: str, file: Path) -> Any:
    if key in data:
        return data[key]
    if key in DEFAULTS:
        return DEFAULTS[key]
    raise ExportError(f"{file} lacks the field {key!r} that a diffusers AutoencoderKL config needs")


def _unsupported(file: Path, key: str, value: Any, expected: str) -> ExportError:
    return ExportError(f"{file}: {key}={value!r} is not supported by mmldm's conv autoencoder; expected {expected}")


def autoencoder_config(data: Mapping[str, Any], file: Path) -> ConvAutoencoderConfig:
    """The ``conv`` autoencoder config that reproduces a diffusers ``AutoencoderKL`` config exactly."""
    unknown = sorted(k for k in data if not k.startswith("_") and k not in (*REQUIRED, *DEFAULTS, *IGNORED))
    if unknown:
        warnings.warn(f"{file}: ignoring unknown field(s) {unknown}", stacklevel=2)
    get = {k: _get(data, k, file) for k in (*REQUIRED, *DEFAULTS)}
    widths, groups = [int(w) for w in get["block_out_channels"]], int(get["norm_num_groups"])
    if get["act_fn"] != "silu":
        raise _unsupported(file, "act_fn", get["act_fn"], "'silu'")
    for key, kind in (("down_block_types", DOWN_BLOCK), ("up_block_types", UP_BLOCK)):
        if list(get[key]) != [kind] * len(widths):
            raise _unsupported(file, key, get[key], f"{len(widths)} x {kind!r} (one per block_out_channels)")
    if get["out_channels"] != get["in_channels"]:
        raise _unsupported(file, "out_channels", get["out_channels"], f"in_channels={get['in_channels']}")
    if not widths or any(w % widths[0] for w in widths):
        raise _unsupported(file, "block_out_channels", widths, "multiples of the first width (channels * channel_mult)")
    if any(w % groups for w in widths):
        raise _unsupported(file, "norm_num_groups", groups, f"a divisor of every block_out_channels {widths}")
    return ConvAutoencoderConfig(
        name="conv", channels=widths[0], channel_mult=[w // widths[0] for w in widths],
        num_res_blocks=int(get["layers_per_block"]), latent_channels=int(get["latent_channels"]),
        attention=bool(get["mid_block_add_attention"]), downsample="conv", downsample_padding="asymmetric",
        norm_groups=groups, attention_norm_groups=groups, attention_bias=True,
        quant_conv=bool(get["use_quant_conv"]), post_quant_conv=bool(get["use_post_quant_conv"]),
    )


def latent_stats(data: Mapping[str, Any], file: Path) -> LatentStats:
    """``LatentStats`` equal to diffusers' latent scaling (see the module docstring)."""
    c = int(_get(data, "latent_channels", file))
    scale, shift = _get(data, "scaling_factor", file), _get(data, "shift_factor", file)
    mean, std = _get(data, "latents_mean", file), _get(data, "latents_std", file)
    if not isinstance(scale, (int, float)) or scale <= 0:
        raise _unsupported(file, "scaling_factor", scale, "a positive number")
    if (mean is None) != (std is None) or (mean is not None and shift):
        raise ExportError(f"{file}: set latents_mean and latents_std together, without shift_factor "
                          f"(got latents_mean={mean!r}, latents_std={std!r}, shift_factor={shift!r})")
    if mean is None:
        return LatentStats([float(shift or 0.0)] * c, [1.0 / scale] * c, global_scale=True)
    if len(mean) != c or len(std) != c:
        raise _unsupported(file, "latents_mean/latents_std", (mean, std), f"{c} values each (latent_channels)")
    return LatentStats(list(mean), [s / scale for s in std])


def stats_to_diffusers(stats: LatentStats) -> dict[str, Any]:
    """``scaling_factor``/``shift_factor`` for one statistic over all channels, else ``latents_mean/std``."""
    if len(set(stats.mean)) == 1 and len(set(stats.std)) == 1:
        return {"scaling_factor": 1.0 / stats.std[0], "shift_factor": stats.mean[0] or None,
                "latents_mean": None, "latents_std": None}
    return {"scaling_factor": 1.0, "shift_factor": None, "latents_mean": list(stats.mean),
            "latents_std": list(stats.std)}


def diffusers_config(autoencoder: ConvAutoencoder, stats: LatentStats, sample_size: int | None = None) -> dict:
    """The ``config.json`` of ``autoencoder`` (checked by :func:`check_exportable`) and ``stats``."""
    cfg, n = autoencoder.cfg, len(autoencoder.cfg.channel_mult)
    data = {
        "_class_name": CLASS_NAME, "in_channels": autoencoder.in_channels, "out_channels": autoencoder.in_channels,
        "down_block_types": [DOWN_BLOCK] * n, "up_block_types": [UP_BLOCK] * n,
        "block_out_channels": [cfg.channels * m for m in cfg.channel_mult], "layers_per_block": cfg.num_res_blocks,
        "act_fn": "silu", "latent_channels": cfg.latent_channels, "norm_num_groups": cfg.norm_groups,
        "force_upcast": True, "use_quant_conv": cfg.quant_conv, "use_post_quant_conv": cfg.post_quant_conv,
        "mid_block_add_attention": cfg.attention, **stats_to_diffusers(stats),
    }
    return data if sample_size is None else {**data, "sample_size": int(sample_size)}


# ---------------------------------------------------------------------------- tensor names
def _mid(side: str, attention: bool) -> list[tuple[str, str, dict[str, str]]]:
    pairs = [(f"{side}.mid.0", f"{side}.mid_block.resnets.0", _RESNET)]
    if attention:
        pairs.append((f"{side}.mid.1", f"{side}.mid_block.attentions.0", _ATTENTION))
    return pairs + [(f"{side}.mid.{len(pairs)}", f"{side}.mid_block.resnets.1", _RESNET)]


def _levels(side: str, cfg: ConvAutoencoderConfig) -> list[tuple[str, str, dict[str, str]]]:
    """Encoder ``down.i`` / decoder ``up.i`` (nn.Sequential) against diffusers' nested blocks."""
    ours, blocks, per_block, resample = (("encoder.down", "encoder.down_blocks", cfg.num_res_blocks, "downsamplers")
                                         if side == "encoder" else
                                         ("decoder.up", "decoder.up_blocks", cfg.num_res_blocks + 1, "upsamplers"))
    leaf = "op" if side == "encoder" else "conv"
    pairs, i, n = [], 0, len(cfg.channel_mult)
    for b in range(n):
        for r in range(per_block):
            pairs.append((f"{ours}.{i}", f"{blocks}.{b}.resnets.{r}", _RESNET))
            i += 1
        if b < n - 1:
            pairs.append((f"{ours}.{i}.{leaf}", f"{blocks}.{b}.{resample}.0.conv", _LAYER))
            i += 1
    return pairs


def key_map(cfg: ConvAutoencoderConfig) -> dict[str, str]:
    """mmldm tensor name -> diffusers tensor name, for every tensor the architecture may hold."""
    pairs = [("encoder.conv_in", "encoder.conv_in", _LAYER), *_levels("encoder", cfg), *_mid("encoder", cfg.attention),
             ("encoder.norm_out", "encoder.conv_norm_out", _LAYER), ("encoder.conv_out", "encoder.conv_out", _LAYER),
             ("encoder.quant_conv", "quant_conv", _LAYER), ("decoder.post_quant_conv", "post_quant_conv", _LAYER),
             ("decoder.conv_in", "decoder.conv_in", _LAYER), *_mid("decoder", cfg.attention), *_levels("decoder", cfg),
             ("decoder.norm_out", "decoder.conv_norm_out", _LAYER), ("decoder.conv_out", "decoder.conv_out", _LAYER)]
    return {
        ".".join(filter(None, (ours, a, p))): ".".join(filter(None, (theirs, b, p)))
        for ours, theirs, leaves in pairs for a, b in leaves.items() for p in ("weight", "bias")
    }


def _modern_name(key: str) -> str:
    """Attention tensor names of diffusers < 0.14 (``query``, ``proj_attn``, ...) as today's."""
    parts = key.split(".")
    if len(parts) > 2 and "attentions" in parts and parts[-2] in _LEGACY_ATTENTION:
        parts[-2] = _LEGACY_ATTENTION[parts[-2]]
    return ".".join(parts)


def _to_mmldm(tensors: dict[str, Tensor], names: dict[str, str], expected: dict[str, Tensor], file: Path) -> dict:
    """Rename and shape-check diffusers tensors into ``expected`` (a state dict); nothing may be left over."""
    tensors = {_modern_name(k): v for k, v in tensors.items()}
    state, missing = {}, []
    for ours, ref in expected.items():
        theirs = names[ours]
        if theirs not in tensors:
            missing.append(theirs)
            continue
        t = tensors.pop(theirs)
        if t.shape != ref.shape:
            raise ExportError(f"{file}: tensor {theirs} has shape {tuple(t.shape)}, but {CONFIG_FILE} implies "
                              f"{tuple(ref.shape)} (mmldm {ours}); do the config and the weights belong together?")
        state[ours] = t.to(ref.dtype)
    if missing:
        raise ExportError(f"{file} lacks {len(missing)} tensor(s) the architecture of {CONFIG_FILE} needs: "
                          f"{missing[:5]}")
    if tensors:
        raise ExportError(f"{file} holds {len(tensors)} tensor(s) the architecture of {CONFIG_FILE} does not use: "
                          f"{sorted(tensors)[:5]}")
    return state


# ---------------------------------------------------------------------------- load and save
def _build(data: Mapping[str, Any], file: Path) -> tuple[ConvAutoencoder, ConvAutoencoderConfig]:
    cfg = autoencoder_config(data, file)
    regularizer = KLRegularizer(cfg.latent_channels)
    model = ConvAutoencoder(cfg, dims=2, in_channels=int(data["in_channels"]), regularizer=regularizer)
    return model, cfg


def load_diffusers_vae(path: str | Path) -> tuple[ConvAutoencoder, LatentStats, ConvAutoencoderConfig]:
    """A diffusers ``AutoencoderKL`` folder as mmldm's ``conv`` + ``kl`` autoencoder (eval mode, float32).

    Returns:
        the autoencoder (``x [B, C, H, W]`` in [-1, 1] -> ``z [B, c, H/f, W/f]``), its latent
        statistics (from ``scaling_factor``/``shift_factor``) and its config (to rebuild or export it).

    Raises:
        ExportError: naming the file, and the field or tensor, that is missing or does not fit.
    """
    folder = vae_folder(path)
    data = read_config(folder)
    model, cfg = _build(data, folder / CONFIG_FILE)
    stats = latent_stats(data, folder / CONFIG_FILE)
    file, tensors = _read_weights(folder)
    model.load_state_dict(_to_mmldm(tensors, key_map(cfg), model.state_dict(), file))
    return model.eval(), stats, cfg


def check_exportable(autoencoder: Any) -> None:
    """Raise a ``ValueError`` naming the setting that diffusers' ``AutoencoderKL`` cannot express."""
    if not isinstance(autoencoder, ConvAutoencoder) or not isinstance(autoencoder.regularizer, KLRegularizer):
        regularizer = type(getattr(autoencoder, "regularizer", None)).__name__
        raise ValueError(f"only autoencoder=conv with regularizer=kl exports to the diffusers format, got "
                         f"{type(autoencoder).__name__} with {regularizer}")
    cfg = autoencoder.cfg
    if autoencoder.dims != 2:
        raise ValueError(f"the diffusers AutoencoderKL is 2D; this autoencoder has dims={autoencoder.dims}")
    if cfg.downsample != "conv" or (len(cfg.channel_mult) > 1 and cfg.downsample_padding != "asymmetric"):
        raise ValueError(f"autoencoder.downsample={cfg.downsample!r}, downsample_padding={cfg.downsample_padding!r}: "
                         "AutoencoderKL downsamples with 'conv' and 'asymmetric' padding")
    if cfg.attention and (cfg.attention_norm_groups or 32) != cfg.norm_groups:
        raise ValueError(f"autoencoder.attention_norm_groups={cfg.attention_norm_groups} must equal "
                         f"norm_groups={cfg.norm_groups}: AutoencoderKL has one norm_num_groups")
    odd = sorted({m.num_channels for m in autoencoder.modules()
                  if isinstance(m, torch.nn.GroupNorm) and m.num_groups != cfg.norm_groups})
    if odd:
        raise ValueError(f"autoencoder.norm_groups={cfg.norm_groups} does not divide the widths {odd}; "
                         "AutoencoderKL needs it to divide every width")


def save_diffusers_vae(autoencoder: ConvAutoencoder, stats: LatentStats, path: str | Path,
                       sample_size: int | None = None) -> Path:
    """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` that diffusers'
    ``AutoencoderKL.from_pretrained(path)`` loads (see :func:`check_exportable` for what is required)."""
    from safetensors.torch import save_file

    check_exportable(autoencoder)
    if stats.channels != autoencoder.latent_channels:
        raise ValueError(f"stats have {stats.channels} channels, the autoencoder {autoencoder.latent_channels}")
    names = key_map(autoencoder.cfg)
    tensors = {names[k]: v.detach().contiguous().cpu() for k, v in autoencoder.state_dict().items()}
    for key in [k for k in tensors if k.endswith(("to_q.weight", "to_k.weight", "to_v.weight"))]:
        bias = key[: -len("weight")] + "bias"
        tensors.setdefault(bias, tensors[key].new_zeros(tensors[key].shape[0]))  # no bias = a zero bias
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS_FILES[0]), metadata={"format": "pt"})
    config = diffusers_config(autoencoder, stats, sample_size)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


# ---------------------------------------------------------------------------- phase 2 on SD latents
def diffusers_latent_shape(path: str | Path, sample_shape: Sequence[int]) -> tuple[int, ...]:
    """``(c, H/f, W/f)`` for samples ``(C, H, W)``, from ``config.json`` alone (nothing is allocated)."""
    folder = vae_folder(path)
    data = read_config(folder)
    with torch.device("meta"):
        model, _ = _build(data, folder / CONFIG_FILE)
    if len(sample_shape) and sample_shape[0] != model.in_channels:
        raise ValueError(f"{folder / CONFIG_FILE} encodes in_channels={model.in_channels}, but the modality gives "
                         f"samples of shape {tuple(sample_shape)}; configure the modality for "
                         f"{model.in_channels} channels")
    return tuple(model.latent_shape(sample_shape))


def phase1_from_diffusers(path: str | Path, modality_cfg: Any) -> "LatentDiffusion":
    """Phase 1 of a run from a diffusers ``AutoencoderKL`` folder: a ``LatentDiffusion`` without denoiser
    whose config names ``conv`` + ``kl``, so the model exported after phase 2 is a plain mmldm export."""
    from mmldm.build import build_modality
    from mmldm.pipeline import LatentDiffusion

    modality = build_modality(modality_cfg)
    if modality.dims != 2:
        raise ValueError(f"a diffusers AutoencoderKL encodes 2D images; modality={getattr(modality, 'name', modality)} "
                         f"has dims={modality.dims}")
    diffusers_latent_shape(path, modality.sample_shape)  # channel and size checks before reading weights
    autoencoder, stats, cfg = load_diffusers_vae(path)
    configs = {"modality": modality_cfg, "autoencoder": cfg, "regularizer": KLRegularizerConfig(name="kl")}
    return LatentDiffusion(modality, autoencoder, stats, configs).eval()
