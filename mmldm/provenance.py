"""What produced an artifact: content digests of weights and the config keys that shape a result.

A training run hands artifacts from stage to stage: phase 1's export, the
latent cache phase 2 reads, each phase's ``last.ckpt``. Each records the
identity of what produced it (:func:`weights_digest` of the autoencoder, the
config values that matter), and the stage that consumes it compares that
record with its own before using it (:func:`differences`): a cache encoded by
another autoencoder is encoded again, a checkpoint trained with other
settings is refused with the keys that changed. Torch is imported lazily, so
the helpers that only compare records stay light.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

#: The file beside an export's ``config.yaml`` that records what produced it.
PROVENANCE_FILE = "provenance.json"


def weights_digest(module: Any) -> str:
    """SHA-256 (hex, first 16 digits) of ``module``'s state dict: every tensor's name, dtype, shape
    and bytes in name order. Equal weights give equal digests whatever device or file they came from."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            # bytes of the tensor's storage view; bfloat16 has no numpy dtype, so view it as int16
            h.update((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()[:16]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts (and lists of dicts) as ``{"dotted.key": leaf}``."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    if isinstance(tree, list) and any(isinstance(v, (Mapping, list)) for v in tree):
        out = {}
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: tree}


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any], limit: int = 8) -> list[str]:
    """``["key: recorded -> current", ...]`` for the dotted keys whose values differ (a key on one
    side only shows ``<absent>``); at most ``limit`` lines, then a count of the rest."""
    a, b = flatten(json.loads(json.dumps(recorded, default=str))), flatten(json.loads(json.dumps(current, default=str)))
    lines = [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in sorted(a.keys() | b.keys())
             if a.get(k, "<absent>") != b.get(k, "<absent>")]
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more"]
    return lines


def write_provenance(directory: Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as ``directory/provenance.json`` (via a temporary file and rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PROVENANCE_FILE
    tmp = path.with_name(f".{PROVENANCE_FILE}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(path)
    return path


def read_provenance(directory: Path) -> dict[str, Any] | None:
    """``directory/provenance.json`` as a dict; ``None`` when absent (an export written by an older
    mmldm or by the Python API). Raises ``ValueError`` naming the file when it is not valid JSON."""
    path = Path(directory) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is damaged ({e}); delete it to use the export without its provenance check") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds {type(record).__name__}, expected a JSON object")
    return record
