"""Make the figures of the modality guides with each modality's own ``save()``.

    python docs/assets/make_figures.py

Each figure is the ``{prefix}_grid.png`` that ``Modality.save`` writes for the
first training items of a small dataset (the same call a run makes for its
samples), re-encoded with an adaptive palette to keep it small. The
timeseries figure needs the example plugin installed
(``pip install docs/examples/mmldm-timeseries``); it is skipped otherwise.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from PIL import Image

from mmldm.build import build_modality
from mmldm.plugins import registry

HERE = Path(__file__).resolve().parent
LIMIT = 150_000  # bytes per figure

FIGURES = {
    "image": ({"name": "image", "num_samples": 64}, 16),
    "voxel": ({"name": "voxel", "num_shapes": 40, "resolution": 32}, 6),
    "audio": ({"name": "audio", "num_samples": 40}, 6),
    "timeseries": ({"name": "timeseries", "num_samples": 40}, 8),
}


def make(name: str, cfg: dict, n: int, out: Path) -> Path:
    """Save the first ``n`` training items of modality ``cfg`` and keep the grid as ``out``."""
    modality = build_modality(cfg)
    data = modality.dataset("train")
    x = torch.stack([data[i]["x"] for i in range(n)])
    with tempfile.TemporaryDirectory() as tmp:
        grid = modality.save(x, Path(tmp), prefix=name)[-1]
        picture = Image.open(grid).convert("RGB")
    picture.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    if out.stat().st_size > LIMIT:
        raise RuntimeError(f"{out} is {out.stat().st_size} bytes, more than {LIMIT}")
    return out


def main() -> None:
    available = set(registry().names("modality"))
    for name, (cfg, n) in FIGURES.items():
        if name not in available:
            print(f"skipped {name}: its plugin is not installed")
            continue
        path = make(name, cfg, n, HERE / f"{name}_data.png")
        print(f"wrote {path} ({path.stat().st_size // 1000} kB)")


if __name__ == "__main__":
    main()
