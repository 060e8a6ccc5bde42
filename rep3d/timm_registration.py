"""Make rep3d's registered names visible to timm without importing timm at ``import rep3d``.

Importing timm costs seconds (it pulls in torchvision's model tree), so ``import rep3d`` does not do it. What the
documentation promises instead still holds: once rep3d is imported, ``timm.create_model("rep3d_tiny")`` works. If timm
is already imported, rep3d's models are registered right away; otherwise a one-shot import hook registers them right
after timm's own top-level module has run, whoever imports timm (the user, or rep3d's builder on first use).

This module imports nothing from rep3d at its top: the registration imports :mod:`rep3d.models` by name, so the
package layers stay as they are (see docs/design.md, "Layers").
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

MODELS_MODULE = "rep3d.models"


def _import_timm_quietly(exec_module, module) -> None:
    with warnings.catch_warnings():
        # timm < 1.0.23 (which nnunetv2's dynamic-network-architectures pins) decorates a class with
        # torch.jit.interface, and torch >= 2.14 warns about that at import: a line the user cannot act on.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.interface` is deprecated", category=FutureWarning)
        exec_module(module)


def register_models() -> None:
    """Register rep3d's names in timm's registry now (imports timm, monai and the model code)."""
    importlib.import_module(MODELS_MODULE)


class _RegisteringLoader(importlib.abc.Loader):
    """timm's own loader, followed by the registration of rep3d's models."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        _import_timm_quietly(self.loader.exec_module, module)
        uninstall()
        try:
            register_models()
        except Exception as err:  # noqa: BLE001 - timm itself must keep working for the user's other models
            warnings.warn(f"rep3d: timm was imported but rep3d's models could not be registered with it "
                          f"({type(err).__name__}: {err}); rep3d.create_model shows the full error", stacklevel=2)


class _RegisterAfterTimm(importlib.abc.MetaPathFinder):
    """A meta-path finder for the top-level ``timm`` module only: it finds timm's spec with the other finders and
    wraps its loader so that rep3d's models are registered as soon as timm has loaded. It stays installed until timm
    is actually loaded (a mere ``importlib.util.find_spec("timm")`` availability probe does not use it up)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


_HOOK = _RegisterAfterTimm()


def install() -> None:
    """Register rep3d's models with timm: now if timm is loaded, else right after timm is first imported."""
    if "timm" in sys.modules:
        register_models()
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def uninstall() -> None:
    """Remove the import hook (a no-op if it already ran or was never installed)."""
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)
