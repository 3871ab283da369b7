"""Re-runnable quality benchmarks of mmldm (``python -m benchmarks.<name> --help``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save_results(out: Path, result: dict[str, Any], markdown: str) -> None:
    """Write a benchmark's ``results.json`` and ``results.md`` into ``out`` (created) and print the report."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=float))
    (out / "results.md").write_text(markdown)
    print(markdown)
