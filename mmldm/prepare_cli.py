"""``mmldm prepare``: turn any folder a modality reads into litdata shards (:func:`mmldm.streaming.prepare`)."""

from __future__ import annotations

import sys
from typing import Sequence

PROG = "mmldm prepare"

HELP = f"""\
usage: {PROG} modality=<name> [modality.root=<folder>] out=<dir> [workers=N] [chunk_mb=64] [overwrite=true]
                     [group=option ...] [key.path=value ...]

Write the modality's training and held-out items, in the form training reads them (voxel grids,
log-mels or waveforms, images) with their conditions, into litdata shards under out=<dir>, so that
`mmldm train data.source=stream data.root=<dir>` streams them instead of reading the whole folder
into memory (data larger than memory, several machines: see docs/distributed.md).

  out=<dir>        the output folder: train/ and val/ shards, prepare_report.json (items per split,
                   skipped files counted by reason), mmldm_shards.json (what produced them)
  workers=N        processes writing shards (default: the CPU count, at most 8)
  chunk_mb=F       target chunk file size in MB (default 64)
  overwrite=true   replace shards that were written with other settings (else refused)

The rest of the arguments compose the config as for `mmldm train` (modality=..., modality.root=...,
preset=..., seed=...): the modality reads its data with exactly these settings, and the train/val
split is the modality's own. Re-running with the same settings does nothing; after an interruption
it continues (finished splits are kept, a split cut short resumes from litdata's checkpoints).

examples:
  {PROG} modality=voxel modality.root=meshes/ out=shards/meshes workers=8
  {PROG} modality=audio modality.root=clips/ out=shards/clips
"""

OPTIONS = ("out", "workers", "chunk_mb", "overwrite")


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(args: Sequence[str]) -> int:
    """Entry point of ``mmldm prepare``; returns the exit code."""
    import os

    if any(a in ("-h", "--help") for a in args):
        print(HELP)
        return 0
    options = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.split("=", 1)[0] in OPTIONS and "=" in a}
    overrides = [a for a in args if a.split("=", 1)[0] not in OPTIONS]
    if not options.get("out"):
        return _fail("out=<dir> is required: the folder the shards are written to")
    try:
        workers = int(options.get("workers", min(8, os.cpu_count() or 1)))
        chunk_mb = float(options.get("chunk_mb", 64))
        if workers < 1 or not chunk_mb > 0:
            raise ValueError
    except ValueError:
        return _fail(f"workers={options.get('workers')} / chunk_mb={options.get('chunk_mb')}: expected an integer "
                     ">= 1 and a positive number")
    overwrite = options.get("overwrite", "false").lower() in ("1", "true", "yes")

    from .configuration import ConfigProblem, compose

    try:
        cfg = compose(overrides)
    except ConfigProblem as e:
        return _fail(str(e))
    from omegaconf import OmegaConf

    from .build import build_modality
    from .streaming import REPORT, prepare
    try:
        modality = build_modality(cfg.modality)
        report = prepare(modality, OmegaConf.to_container(cfg.modality, resolve=True), options["out"], workers=workers,
                         seed=int(cfg.seed), chunk_mb=chunk_mb, overwrite=overwrite)
    except (ValueError, OSError) as e:
        return _fail(" ".join(str(e).split()))
    items = report.get("items", {})
    print(f"mmldm: {items.get('train', 0)} training and {items.get('val', 0)} held-out items in {options['out']}; "
          f"{report.get('skipped', 0)} skipped {report.get('skipped_by_reason', {})} (see {REPORT}). Train with "
          f"data.source=stream data.root={options['out']}")
    return 0
