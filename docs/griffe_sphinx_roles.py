"""Griffe extension for the documentation site: render the Sphinx roles rep3d's docstrings use as code.

rep3d's docstrings cross-reference with Sphinx roles (``:class:`~rep3d.layers.RepLKConv3d```); Markdown has no such
syntax and would print the role verbatim. This turns each role into a code span (``~`` keeps the last component, as
in Sphinx) before mkdocstrings renders the docstring.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj):`(~?)([^`]+)`")


def _as_code(match: re.Match) -> str:
    tilde, target = match.groups()
    name = target.rsplit(".", 1)[-1] if tilde else target
    return f"``{name}``"


class SphinxRolesAsCode(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_as_code, obj.docstring.value)
