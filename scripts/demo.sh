#!/usr/bin/env bash
# Quick start: set up .venv if needed, then train a 3D latent diffusion model on
# the voxel modality's embedded procedural shapes with the short `voxel_quick`
# preset (16^3 grids; 300 autoencoder and 1,500 diffusion steps).
# Extra arguments are Hydra overrides, e.g. `bash scripts/demo.sh trainer.max_steps=100`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/env.sh"
cd "$ROOT"
exec .venv/bin/mmldm train modality=voxel preset=voxel_quick "$@"
