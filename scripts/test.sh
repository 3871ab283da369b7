#!/usr/bin/env bash
# Set up .venv if needed, then run the default test suite. Slow quality runs
# are deselected by pyproject.toml; run them with `bash scripts/test.sh -m slow`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/env.sh"
cd "$ROOT"
# Two worker processes (pytest-xdist): most of the suite's time is single-threaded (command-line runs
# that import torch and Lightning, tiny models), so two workers on a 2-core CPU take about 2/3 of the
# time of one (8.5 vs 12.5 minutes). MMLDM_TEST_WORKERS=0 runs everything in this one process.
exec .venv/bin/python -m pytest -n "${MMLDM_TEST_WORKERS:-2}" "$@"
