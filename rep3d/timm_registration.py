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


def _rep3d_module_initializing(finishing: str | None = None) -> bool:
    """Whether a rep3d module other than ``finishing`` (whose code has just run) is part-way through its import:
    registering then could meet it half-initialized."""
    return any(getattr(getattr(module, "__spec__", None), "_initializing", False)
               for name, module in list(sys.modules.items()) if name.startswith("rep3d.") and name != finishing)


_pending = False  # timm has loaded while a rep3d module was importing: register once that import has finished


def _register_when_rep3d_is_idle(finishing: str | None = None) -> None:
    global _pending
    if _rep3d_module_initializing(finishing):
        _pending = True
        return
    _pending = False
    uninstall()
    try:
        register_models()
    except Exception as err:  # noqa: BLE001 - timm itself must keep working for the user's other models
        warnings.warn(f"rep3d: timm was imported but rep3d's models could not be registered with it "
                      f"({type(err).__name__}: {err}); rep3d.create_model shows the full error", stacklevel=2)


class _ThenRegister(importlib.abc.Loader):
    """Wraps a module's own loader; once the module has run: timm -> register rep3d's models (or mark it pending
    while a rep3d module is importing, e.g. ``rep3d.hub`` importing timm for the first time); a rep3d module -> do a
    pending registration."""

    def __init__(self, loader, is_timm: bool) -> None:
        self.loader, self.is_timm = loader, is_timm

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def __getattr__(self, name: str):  # get_code, get_source, is_package, ...: the wrapped loader's (runpy uses them)
        return getattr(self.loader, name)

    def exec_module(self, module) -> None:
        if self.is_timm:
            _import_timm_quietly(self.loader.exec_module, module)
            _register_when_rep3d_is_idle()
        else:
            self.loader.exec_module(module)
            if _pending:
                _register_when_rep3d_is_idle(finishing=module.__name__)


class _RegisterAfterTimm(importlib.abc.MetaPathFinder):
    """A meta-path finder that wraps the loaders of the top-level ``timm`` module and, until timm has loaded, of
    rep3d's own modules (:class:`_ThenRegister`); it finds their specs with the other finders. It stays installed
    until the registration has run (a mere ``importlib.util.find_spec("timm")`` availability probe does not use it
    up)."""

    def find_spec(self, fullname, path=None, target=None):
        is_timm = fullname == "timm"
        if not is_timm and not fullname.startswith("rep3d."):
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
            spec.loader = _ThenRegister(spec.loader, is_timm)
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
