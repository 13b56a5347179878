"""One escaping rule for every value from outside that enters markdown (Prefect artifacts, model cards).

File names, dataset and project names, prompts, Roboflow names and the reasons that quote them are
written by people we do not control. Raw, a backtick breaks a code span, ``<img onerror=...>`` and
``<script>`` reach the page, and ``[x](javascript:...)`` becomes a link (Prefect's renderer keeps the
href). ``md`` makes a value plain text: HTML's three special characters become entities, every
markdown punctuation character is backslash-escaped (so no link, emphasis, heading, table cell or
code span can start), and line breaks become spaces (a value never starts a new block).
"""

from __future__ import annotations

import re

_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_PUNCT = re.compile(r"([\\`*_{}\[\]()#+!|~])")
_BREAKS = re.compile(r"[\r\n\t\x0b\x0c\u2028\u2029]+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


def md(value: object) -> str:
    """``value`` as inert markdown text (any type; ``None`` reads ``-``)."""
    if value is None:
        return "-"
    text = _CONTROL.sub("", _BREAKS.sub(" ", str(value)))
    text = "".join(_HTML.get(c, c) for c in text)
    return _PUNCT.sub(r"\\\1", text)


def md_fence(text: str, lang: str = "") -> str:
    """``text`` in a fenced code block no content can close (the fence outgrows any backtick run)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"
