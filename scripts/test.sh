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
# With two or more workers each test process (and each command-line run it starts) gets one OpenMP thread:
# two workers' pools of two threads each on two cores oversubscribe them, and OpenMP's spinning waits
# then burn the time the other worker needs (1,306 tests took 11.8 minutes with two threads per worker,
# 1,324 took 8.2 with one). Set OMP_NUM_THREADS to override. --dist worksteal: an idle worker takes
# queued tests from the other, so a few long tests at the end do not leave one core idle.
if [ "${MMLDM_TEST_WORKERS:-2}" != "0" ] && [ "${MMLDM_TEST_WORKERS:-2}" != "1" ]; then
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi
exec .venv/bin/python -m pytest -n "${MMLDM_TEST_WORKERS:-2}" --dist worksteal "$@"
