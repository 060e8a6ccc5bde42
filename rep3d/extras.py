"""Optional dependencies and the extra that installs each: a missing one is a one-line error naming
``pip install "rep3d[EXTRA]"``, never a traceback from deep inside an import."""

from __future__ import annotations

import importlib
from types import ModuleType

from rep3d.errors import Rep3DError

EXTRAS: dict[str, str] = {
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "nnunetv2": "nnunet",
    "tensorboard": "train",
    "mkdocs": "docs",
    "mkdocstrings": "docs",
}
"""Importable module -> the ``rep3d[...]`` extra (setup.cfg ``extras_require``) that installs it."""


class Rep3DMissingExtra(Rep3DError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install "rep3d[EXTRA]"`` that fixes it."""


def install_hint(module: str) -> str:
    """``pip install "rep3d[EXTRA]"`` for ``module`` (``pip install MODULE`` if no extra provides it)."""
    extra = EXTRAS.get(module.split(".")[0])
    return f'pip install "rep3d[{extra}]"' if extra else f"pip install {module.split('.')[0]}"


def require(module: str, purpose: str) -> ModuleType:
    """Import and return ``module``, or raise :class:`Rep3DMissingExtra`: ``"<purpose> needs <module>, which is not
    installed; install it with: pip install "rep3d[EXTRA]""``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise Rep3DMissingExtra(f"{purpose} needs {module.split('.')[0]}, which is not installed ({err}); install "
                                f"it with: {install_hint(module)}") from err
