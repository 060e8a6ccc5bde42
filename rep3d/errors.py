"""rep3d's exception hierarchy: every error the package raises on purpose derives from :class:`Rep3DError`.

The subclasses also derive from the built-in exception a caller would expect (``ValueError`` for a bad value,
``TypeError`` for a wrong type, ``RuntimeError`` for weights that cannot be had), so ``except ValueError`` in user
code keeps working. ``rep3d.cli.main`` catches :class:`Rep3DError` and prints one ``rep3d <command>: error: ...``
line instead of a traceback.

This module imports nothing from rep3d: every other module may import it.
"""

from __future__ import annotations

import re

# terminal escape sequences (CSI "ESC [ ... letter", OSC "ESC ] ... BEL/ST", and two-byte ESC forms), then any single
# C0 / C1 control character or Unicode direction override that is left
_ESCAPE_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?|\x9b[0-?]*[ -/]*[@-~]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def printable(text: object, *, newlines: bool = False) -> str:
    """``str(text)`` safe to print on a terminal: escape sequences removed, other control characters (and, unless
    ``newlines``, line breaks and tabs) shown as ``?``. Text from a model folder is data written by a stranger: it
    must not clear the screen, move the cursor or print a line that looks like rep3d's own."""
    text = _ESCAPE_SEQUENCE.sub("?", str(text))
    return (_CONTROL if newlines else _CONTROL_OR_NEWLINE).sub("?", text)


class Rep3DError(Exception):
    """Base class of every error rep3d raises on purpose. Its message says what was expected, what was given, and
    how to fix it. Its text never carries terminal control characters (see :func:`printable`): messages quote
    values from files rep3d did not write."""

    def __str__(self) -> str:
        return printable(super().__str__(), newlines=True)


class Rep3DValueError(Rep3DError, ValueError):
    """An argument or input has the right type but a value rep3d cannot use (even kernel, wrong channel count, ...)."""


class Rep3DTypeError(Rep3DError, TypeError):
    """An argument or input has the wrong type (an integer tensor where a float one is needed, ...)."""


class Rep3DDataError(Rep3DError, ValueError):
    """A dataset, image or label file cannot be used as given; the message names the file, the problem and the fix."""


class Rep3DWeightsError(Rep3DError, RuntimeError):
    """Weights were asked for and cannot be provided: says which model/tag, from where, what went wrong, and the fix.

    Attributes:
        name: the model / tag the weights were for (``"rep3d_tiny.phantom"``, ``"hf-hub:org/name@rev"``).
        source: where they were looked for (a path, a Hub URL with revision, ``"registry"``).
        problem: what went wrong.
        fix: what the user can do about it.
        reason: a short machine-readable code (``"no_weights"``, ``"not_found"``, ``"offline"``, ``"unreachable"``,
            ``"repo_not_found"``, ``"revision_not_found"``, ``"entry_not_found"``, ``"truncated"``, ``"checksum"``,
            ``"corrupt"``, ``"unsafe"``, ``"architecture"``, ``"keys"``, ``"form"``, ``"config"``, ``"dtype"``,
            ``"non_finite"``).
    """

    def __init__(self, name: str, source: str, problem: str, fix: str, reason: str = "error") -> None:
        self.name, self.source, self.problem, self.fix, self.reason = name, source, problem, fix, reason
        super().__init__(f"cannot load weights for {name!r} from {source}: {problem}\n  fix: {fix}")


__all__ = ["Rep3DDataError", "Rep3DError", "Rep3DTypeError", "Rep3DValueError", "Rep3DWeightsError", "printable"]
