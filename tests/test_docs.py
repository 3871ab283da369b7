"""Every Python block in docs/ runs (blocks of one page share a namespace, in order)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if BLOCK.search(p.read_text()))


def test_docs_have_examples():
    assert _pages(), "docs/ has no Python examples"


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType(f"docs_{page.stem}")  # dataclasses look their module up in sys.modules
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    for i, match in enumerate(BLOCK.finditer(page.read_text())):
        line = page.read_text()[: match.start()].count("\n") + 2
        code = compile(match.group(1), f"{page}:block{i}:line{line}", "exec")
        exec(code, namespace)  # noqa: S102 - running the documentation's own examples is the point
