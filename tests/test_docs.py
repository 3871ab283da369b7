"""Every example in docs/ runs: fenced ``python``, ``bash``/``sh`` and ``console`` blocks.

The blocks of one page run in order, in one temporary working directory that
holds a copy of ``docs/examples`` (so commands written for the repository root
work), with ``$MMLDM_CACHE`` inside it:

- ``python`` blocks run in this process and share one namespace per page;
- ``bash``/``sh`` blocks run through ``bash -euo pipefail`` with the
  environment's ``bin/`` first on ``PATH`` (so ``mmldm`` and ``pip`` are this
  environment's), each with a timeout;
- ``console`` blocks hold ``$ command`` lines followed by the output they
  show: every command must exit 0 and every shown output line must appear, in
  order, in what the command printed (``...`` stands for lines left out).

A block right below ``<!-- not run: REASON -->`` is skipped; the page shows
the reason (``docs/hooks/not_run.py`` renders it). A ``python`` block that
only includes files (``--8<-- "path"`` lines) is a listing of the example
plugin, tested by ``tests/test_example_plugin.py``.

The last test checks that every hook specification is documented and used by a test.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUN = ("python", "bash", "sh", "console")
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"<!-- not run: (.*?) -->\s*$")
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$')
TIMEOUT = 300  # seconds per shell block (tiny runs take seconds; the machine may be busy)


@dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the first code line
    skip: str | None  # the reason of a not-run marker right above the fence

    @property
    def includes(self) -> list[str]:
        """Paths of a block made only of snippet includes (a file listing), else []."""
        lines = [ln.strip() for ln in self.code.splitlines() if ln.strip()]
        found = [SNIPPET.match(ln) for ln in lines]
        return [m.group(1) for m in found] if lines and all(found) else []


def blocks(text: str) -> list[Block]:
    """The runnable fenced blocks of a Markdown page, in order."""
    out = []
    for m in FENCE.finditer(text):
        if m.group(1) not in RUN:
            continue
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NOT_RUN.search(before)
        out.append(Block(m.group(1), m.group(2), text[: m.start()].count("\n") + 2, marker and marker.group(1)))
    return out


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "examples" not in p.parts and blocks(p.read_text()))


def _env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MMLDM_CACHE"] = str(workdir / ".cache")
    return env


def run_python(block: Block, where: str, namespace: dict) -> None:
    exec(compile(block.code, where, "exec"), namespace)  # noqa: S102 - running the documentation's own examples


def run_shell(block: Block, where: str, workdir: Path) -> None:
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=workdir, env=_env(workdir),
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, f"{where} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"


def console_steps(code: str) -> list[tuple[str, list[str]]]:
    """``$ command`` lines (continued with a trailing backslash) and the output lines shown after each."""
    steps: list[tuple[str, list[str]]] = []
    continued = False
    for line in code.splitlines():
        if line.startswith("$ ") or continued:
            command = line[2:] if line.startswith("$ ") and not continued else line
            if continued:
                steps[-1] = (steps[-1][0] + "\n" + command, [])
            else:
                steps.append((command, []))
            continued = line.endswith("\\")
        elif steps and line.strip():
            steps[-1][1].append(line.strip())
    return steps


def shown_in_order(expected: list[str], printed: str) -> str | None:
    """The first shown line missing from ``printed`` (in order, ``...`` skipped), or None."""
    lines = iter(ln.strip() for ln in printed.splitlines())
    for want in (e for e in expected if e != "..."):
        if not any(want in got for got in lines):
            return want
    return None


def run_console(block: Block, where: str, workdir: Path) -> None:
    for command, expected in console_steps(block.code):
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=workdir, env=_env(workdir),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT)
        printed = out.stdout  # stdout and stderr interleaved as a terminal shows them
        assert out.returncode == 0, f"{where}: `{command}` exited {out.returncode}:\n{printed[-4000:]}"
        missing = shown_in_order(expected, printed)
        assert missing is None, f"{where}: `{command}` did not print {missing!r}; it printed:\n{printed[-4000:]}"


def test_docs_have_examples():
    assert {p.name for p in _pages()} >= {"getting-started.md", "python-api.md", "plugins.md", "configuration.md"}


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_examples_run(page, tmp_path, monkeypatch):
    shutil.copytree(DOCS / "examples", tmp_path / "docs" / "examples",
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MMLDM_CACHE", str(tmp_path / ".cache"))
    module = types.ModuleType(f"docs_{page.stem.replace('-', '_')}")  # dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for block in blocks(page.read_text()):
        where = f"{page.relative_to(ROOT)}:{block.line}"
        if block.skip is not None:
            assert block.skip.strip(), f"{where}: a not-run marker needs a reason"
        elif block.includes:
            assert all((DOCS / "examples" / p).is_file() for p in block.includes), f"{where}: {block.includes}"
        elif block.lang == "python":
            run_python(block, where, module.__dict__)
        elif block.lang == "console":
            run_console(block, where, tmp_path)
        else:
            run_shell(block, where, tmp_path)


def test_collector_reads_markers_and_console_output():
    page = (
        "<!-- not run: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n```console\n$ echo a \\\n  b\na b\n...\n"
        "$ echo c\nc\n```\n\n```python title=\"x.py\"\n--8<-- \"mmldm-timeseries/pyproject.toml\"\n```\n"
    )
    gpu, console, listing = blocks(page)
    assert gpu.skip == "needs a GPU" and console.skip is None and listing.includes == ["mmldm-timeseries/pyproject.toml"]
    assert console_steps(console.code) == [("echo a \\\n  b", ["a b", "..."]), ("echo c", ["c"])]
    assert shown_in_order(["a", "c"], "a\nb\nc\n") is None and shown_in_order(["c", "a"], "a\nb\nc\n") == "a"
    spec = importlib.util.spec_from_file_location("not_run_hook", DOCS / "hooks" / "not_run.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    assert "*Not run by the docs tests: needs a GPU.*" in hook.visible(page)


def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict`` (the ``docs`` extra): no broken link, snippet or docstring warning."""
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs extra is not installed (pip install -e '.[docs]')")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stderr[-4000:]
    for page in ("index.html", "getting-started/index.html", "plugins/index.html", "reference/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    built = (tmp_path / "site" / "plugins" / "index.html").read_text()
    assert "band_accuracy" in built  # the example plugin's files are included in the page
    reference = (tmp_path / "site" / "reference" / "index.html").read_text()
    assert "<code>from_pretrained</code>" in reference and ":meth:" not in reference  # docs/hooks/sphinx_roles.py
    assert "<code>Denoiser, optional</code>" in reference and "<code>`" not in reference


def _hookspecs() -> list[str]:
    from mmldm import hookspecs

    return sorted(n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, f"{hookspecs.PROJECT}_spec"))


def _test_sources() -> dict[Path, str]:
    files = [*(ROOT / "tests").glob("test_*.py"), *(DOCS / "examples").rglob("*.py")]
    return {p: p.read_text() for p in files if p.name != Path(__file__).name}


def _uses(source: str, hook: str) -> bool:
    """``source`` defines ``hook`` (an implementation) or calls ``pm.hook.<hook>``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == hook:
            return True
        if isinstance(node, ast.Attribute) and node.attr == hook:
            return True
    return False


@pytest.mark.parametrize("hook", _hookspecs())
def test_every_hookspec_is_documented_and_tested(hook):
    """Documented under its own heading in docs/plugins.md; implemented or called by a test module, or
    implemented by the example plugin whose test (tests/test_example_plugin.py) names the hook."""
    assert f"### `{hook}(" in (DOCS / "plugins.md").read_text(), f"docs/plugins.md has no section '### `{hook}(...)`'"
    users = [p for p, src in _test_sources().items() if _uses(src, hook)]
    in_tests = [p for p in users if p.parent == ROOT / "tests"]
    in_example = [p for p in users if "examples" in p.parts]
    example_test = (ROOT / "tests" / "test_example_plugin.py").read_text()
    assert in_tests or (in_example and hook in example_test), f"no test implements, calls or checks the hook {hook}"
