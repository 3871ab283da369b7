#!/usr/bin/env bash
# Set up .venv if needed, then run the default test suite. Slow quality runs
# are deselected by pyproject.toml; run them with `bash scripts/test.sh -m slow`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/env.sh"
cd "$ROOT"
exec .venv/bin/python -m pytest "$@"
