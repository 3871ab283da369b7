#!/usr/bin/env bash
# Create or update the project's virtual environment in .venv (idempotent).
#
# - installs the three system libraries open3d needs on a fresh Debian/Ubuntu
#   (libegl1 libgl1 libusb-1.0-0) when they are missing and we may use apt-get;
# - creates .venv with python3 (3.10+; 3.11 is what CI uses);
# - installs mmldm (editable) with the `dev` extra when pyproject.toml/setup.py
#   changed since the last install.
# Source it (`. scripts/env.sh`) or run it; afterwards .venv/bin holds `mmldm`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"

missing=()
for lib in libEGL.so.1 libGL.so.1 libusb-1.0.so.0; do
  ldconfig -p 2>/dev/null | grep -q "$lib" || missing+=("$lib")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "[env] installing system libraries for open3d: libegl1 libgl1 libusb-1.0-0"
    apt-get install -y --no-install-recommends libegl1 libgl1 libusb-1.0-0 >/dev/null 2>&1 || {
      apt-get update >/dev/null && apt-get install -y --no-install-recommends libegl1 libgl1 libusb-1.0-0 >/dev/null; }
  else
    echo "[env] warning: missing ${missing[*]}; install libegl1 libgl1 libusb-1.0-0 (open3d needs them)" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "[env] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.mmldm-installed
want="$(cat pyproject.toml setup.py | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[env] installing mmldm and its dependencies into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true  # an older pip still works
  # pip's and the build backend's messages go to a log that is shown only when the install fails
  if ! .venv/bin/python -m pip install -q -e ".[dev,docs]" > .venv/install.log 2>&1; then
    cat .venv/install.log >&2
    echo "[env] installing mmldm failed (log above, also in .venv/install.log)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
