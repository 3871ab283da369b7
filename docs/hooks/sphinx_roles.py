"""MkDocs hook: docstrings written for both Sphinx and MkDocs read cleanly in the API reference.

The docstrings use reST cross-reference roles (``:class:`LatentStats```) and end a
paragraph with ``::`` before an example block. mkdocstrings renders those as
literal text (":class:" before the code span, a doubled colon); this hook drops
the role prefix and the second colon from the built HTML. Argument types written
in the ``name (`type`, *optional*)`` style come out as a code span holding the
backticks and asterisks; those are dropped too.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:meth|func|class|attr|mod|data|obj|exc):(?=<code>)")
DOUBLE_COLON = re.compile(r"::</p>")
TYPE_SPAN = re.compile(r"<code>(`[^<]*?)</code>")


def clean(html: str) -> str:
    """``:meth:<code>x</code>`` -> ``<code>x</code>``, ``...::</p>`` -> ``...:</p>`` and
    ``<code>`int`, *optional*</code>`` -> ``<code>int, optional</code>``."""
    html = TYPE_SPAN.sub(lambda m: "<code>" + m.group(1).replace("`", "").replace("*", "") + "</code>", html)
    return DOUBLE_COLON.sub(":</p>", ROLE.sub("", html))


def on_page_content(html: str, **kwargs) -> str:  # noqa: ANN003 - MkDocs passes page, config, files
    return clean(html)
