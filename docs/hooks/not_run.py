"""MkDocs hook: show the reason of every ``<!-- not run: REASON -->`` marker on the page.

The docs tests (``tests/test_docs.py``) run every fenced Python and shell
block except one right below such a marker; the built page states why.
"""

from __future__ import annotations

import re

MARKER = re.compile(r"^<!-- not run: (.+?) -->$", re.M)


def visible(markdown: str) -> str:
    """Each marker followed by an italic line ``Not run by the docs tests: REASON.``"""
    return MARKER.sub(lambda m: f"{m.group(0)}\n*Not run by the docs tests: {m.group(1).rstrip('.')}.*\n", markdown)


def on_page_markdown(markdown: str, **kwargs) -> str:  # noqa: ANN003 - MkDocs passes page, config, files
    return visible(markdown)
