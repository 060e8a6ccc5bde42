"""The one exception type of rep3d's weight loading, publishing and import paths."""

from __future__ import annotations


class Rep3DWeightsError(RuntimeError):
    """Weights were asked for and cannot be provided: says which model/tag, from where, what went wrong, and the fix.

    Attributes:
        name: the model / tag the weights were for (``"rep3d_tiny.phantom"``, ``"hf-hub:org/name@rev"``).
        source: where they were looked for (a path, a Hub URL with revision, ``"registry"``).
        problem: what went wrong.
        fix: what the user can do about it.
        reason: a short machine-readable code (``"no_weights"``, ``"not_found"``, ``"offline"``, ``"unreachable"``,
            ``"repo_not_found"``, ``"revision_not_found"``, ``"entry_not_found"``, ``"truncated"``, ``"checksum"``,
            ``"corrupt"``, ``"unsafe"``, ``"architecture"``, ``"keys"``, ``"form"``, ``"config"``).
    """

    def __init__(self, name: str, source: str, problem: str, fix: str, reason: str = "error") -> None:
        self.name, self.source, self.problem, self.fix, self.reason = name, source, problem, fix, reason
        super().__init__(f"cannot load weights for {name!r} from {source}: {problem}\n  fix: {fix}")
