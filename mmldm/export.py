"""Weights and configs on disk: safetensors only, never pickle.

An exported folder holds ``config.yaml`` and one ``<part>.safetensors`` per
module (``autoencoder``, ``denoiser``, ``conditioner``). Loading reads tensors
only, so a folder from an untrusted source cannot run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
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
    """Load safetensors weights into ``module``; errors name the file and what is wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"weights file not found: {path}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"cannot read weights file {path} (corrupted or truncated?): {e}") from e
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
    """Read ``directory/config.yaml`` (plain YAML, no code)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ExportError(f"{path} not found: expected an exported mmldm folder (config.yaml + *.safetensors)")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - YAML errors have many types
        raise ExportError(f"cannot parse {path}: {e}") from e
    if not isinstance(cfg, DictConfig):
        raise ExportError(f"{path} must hold a mapping, got {type(cfg).__name__}")
    return cfg
