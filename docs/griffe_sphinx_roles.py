"""Griffe extension for the documentation site: render the reStructuredText bits of rep3d's docstrings.

rep3d's docstrings cross-reference with Sphinx roles (``:class:`~rep3d.layers.RepLKConv3d```) and a few hold simple
reST tables (columns framed by ``====  ====`` rules). Markdown has neither and would print them verbatim or run the
table's rows together. Before mkdocstrings renders a docstring, each role becomes a code span (``~`` keeps the last
component, as in Sphinx), each simple table a fenced text block, which keeps its columns aligned, and the
``text::`` that introduces an indented literal block ends in one colon.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj):`(~?)([^`]+)`")
_TABLE_RULE = re.compile(r"^\s*=+(?:\s+=+)+\s*$")
_LITERAL_MARKER = re.compile(r"(?<=\S)::$", flags=re.M)  # reST "text::" before an indented block


def _as_code(match: re.Match) -> str:
    tilde, target = match.groups()
    name = target.rsplit(".", 1)[-1] if tilde else target
    return f"``{name}``"


def _fence_simple_tables(text: str) -> str:
    """Wrap each reST simple table (three ``===`` rules: top, under the header, bottom) in a ```text fence."""
    lines, out, rules = text.splitlines(), [], 0
    for line in lines:
        if _TABLE_RULE.match(line):
            if rules == 0:
                out.append("```text")
            rules += 1
            out.append(line)
            if rules == 3:
                out.append("```")
                rules = 0
        else:
            out.append(line)
    return "\n".join(out) if rules == 0 else text  # an unbalanced table is left as it was


class SphinxRolesAsCode(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            text = _LITERAL_MARKER.sub(":", _ROLE.sub(_as_code, obj.docstring.value))
            obj.docstring.value = _fence_simple_tables(text)
