"""Weights and configs on disk: safetensors only, never pickle.

An exported folder holds ``config.yaml`` and one ``<part>.safetensors`` per
module (``autoencoder``, ``denoiser``, ``conditioner``). Loading reads tensors
only, so a folder from an untrusted source cannot run code, and a config whose
YAML would expand beyond its size (aliases) or weights that are NaN/Inf are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:  # torch is imported by the functions that need it: reading a config does not
    from torch import nn

CONFIG_FILE = "config.yaml"


class ExportError(RuntimeError):
    """An exported folder is missing a file or holds a corrupted one (the message names it)."""


def save_weights(module: nn.Module, path: Path) -> None:
    """Write ``module``'s state dict to ``path`` (safetensors), via a temp file and rename.

    Raises :class:`ExportError` naming the file and the tensors when a weight is NaN/Inf
    (nothing is written: a broken model never replaces a good export).
    """
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise ExportError(f"refusing to write {path}: non-finite (NaN/Inf) values in {bad[:5]}"
                          f"{' ...' if len(bad) > 5 else ''} ({len(bad)} tensors)")
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)


def load_weights(module: nn.Module, path: Path, strict: bool = True) -> nn.Module:
    """Load safetensors weights into ``module``; errors name the file and what is wrong.

    Non-finite (NaN/Inf) weights are refused, naming the file and the tensor: they would
    only give NaN (black) samples, and :func:`save_weights` never writes them.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"weights file not found: {path}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"cannot read weights file {path} (corrupted or truncated?): {e}") from e
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise ExportError(f"weights file {path} holds non-finite (NaN/Inf) values in tensor '{bad[0]}'"
                          f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}; the model is broken: "
                          "export it again from a good checkpoint")
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise ExportError(f"weights in {path} do not fit the configured model: {str(e).splitlines()[0]}") from e
    return module


def save_config(config: Any, directory: Path) -> Path:
    """Write ``config`` (dict/DictConfig/dataclass) as ``directory/config.yaml`` (via a temp file and rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONFIG_FILE
    node = config if isinstance(config, DictConfig) else OmegaConf.create(config) if isinstance(config, dict) else OmegaConf.structured(config)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(OmegaConf.to_yaml(node, resolve=True))
    tmp.replace(path)  # atomic: config.yaml, written last, marks a complete export
    return path


def load_config(directory: Path) -> DictConfig:
    """Read ``directory/config.yaml`` (plain YAML, no code).

    An export's config is what :func:`save_config` writes: under :data:`MAX_CONFIG_BYTES`, with no
    YAML anchors/aliases and no ``${...}`` interpolations (values are written resolved). Files with
    them are refused before they are expanded, so a small crafted file ("billion laughs": aliases of
    aliases, or interpolations of interpolations) cannot take exponential time or memory.
    """
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ExportError(f"{path} not found: expected an exported mmldm folder (config.yaml + *.safetensors)")
    try:
        text = _read_limited(path)
        _check_plain_yaml(text, path)
        cfg = OmegaConf.create(text)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - YAML errors have many types
        raise ExportError(f"cannot parse {path}: {' '.join(str(e).split()) or type(e).__name__}") from e
    if not isinstance(cfg, DictConfig):
        raise ExportError(f"{path} must hold a mapping, got {type(cfg).__name__}")
    return cfg


#: The largest ``config.yaml`` :func:`load_config` reads (an export's is a few KB).
MAX_CONFIG_BYTES = 1 << 20


def _read_limited(path: Path) -> str:
    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ExportError(f"{path} is larger than {MAX_CONFIG_BYTES // (1 << 20)} MB; an exported config is a few KB: "
                          "refusing to parse it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ExportError(f"{path} is not UTF-8 text ({e})") from None


def _check_plain_yaml(text: str, path: Path) -> None:
    """Refuse YAML anchors/aliases and ``${...}`` interpolations (one pass over the parser's events, linear)."""
    import yaml

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise ExportError(f"{path} uses YAML anchors/aliases ('{event.anchor}'), which an mmldm export never "
                              "has (a small file with them can expand exponentially): refusing to load it")
        if isinstance(event, yaml.ScalarEvent) and "${" in event.value:
            raise ExportError(f"{path} holds an interpolation ({event.value[:60]!r}), which an mmldm export never has "
                              "(values are written resolved): refusing to load it")
