"""Griffe extension for the API reference: scorelab's docstrings write notation tables as reST simple tables
(rows between lines of ``=`` runs) and section titles underlined with ``-``. Markdown would turn those lines into
headings, so this shows each table verbatim in a text block and each underlined title in bold. Docstrings in the
source are unchanged; only the rendered page is."""
from __future__ import annotations

import re
from typing import Any

import griffe

_RULE = re.compile(r"^\s*=+(\s+=+)+\s*$")
_UNDERLINE = re.compile(r"^\s*-{3,}\s*$")


def convert(text: str) -> str:
    """reST simple tables -> fenced text blocks; ``Title`` over ``-----`` -> ``**Title**``."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if _RULE.match(line):
            rules = [j for j in range(i, len(lines)) if _RULE.match(lines[j])]
            end = rules[2] if len(rules) >= 3 and _is_header(lines, rules) else rules[1] if len(rules) >= 2 else i
            out += ["", "```text", *lines[i:end + 1], "```", ""]
            i = end + 1
            continue
        if i + 1 < len(lines) and line.strip() and _UNDERLINE.match(lines[i + 1]):
            out += [f"**{line.strip()}**", ""]
            i += 2
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _is_header(lines: list[str], rules: list[int]) -> bool:
    """A table with a header row has three rules, the second right after the header."""
    return rules[1] - rules[0] == 2 and all(lines[k].strip() for k in range(rules[1] + 1, rules[2]))


class RstTables(griffe.Extension):
    """Rewrite every docstring's reST tables and underlined titles before mkdocstrings renders it."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: D102
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
