#!/usr/bin/env bash
# Set up .venv if needed, then run the default test suite (slow quality runs
# are deselected; run them with `bash scripts/test.sh -m slow`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/env.sh"
cd "$ROOT"
args=("$@")
if [[ ! " ${args[*]-} " =~ " -m " ]]; then args=(-m "not slow" "${args[@]}"); fi
exec .venv/bin/python -m pytest "${args[@]}"
