"""Typed, frozen config classes: what a model is (:class:`ModelCfg`), what input it expects (:class:`InputCfg`),
what it outputs (:class:`LabelCfg`) and where it comes from (:class:`Provenance`).

Each class has one ``to_dict`` (versioned JSON: ``{"version": 1, field: value, ...}``, every field present) and one
``from_dict`` that checks every value and raises :class:`~rep3d.errors.Rep3DValueError` on an unknown or missing key,
a wrong version or a value out of bounds. Values from a stranger's file are data: strings are limited in length and
cleaned of control characters (:func:`rep3d.errors.printable`), numbers must be finite.

The on-disk ``config.json`` keeps timm's Hub layout (so ``timm.create_model("hf-hub:...")`` keeps working);
:func:`rep3d.configs.folder.read_folder_config` turns that layout, old files included, into these classes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from rep3d.configs.model_args import MAX_CLASSES, MAX_IN_CHANS, check_model_args
from rep3d.errors import Rep3DValueError, printable

CFG_VERSION = 1
MAX_TEXT = 4096
MAX_NAME = 128
MAX_ROI = 1024
MAX_ROI_VOXELS = 512**3
"""An ROI of 512^3 voxels is 0.5 GiB per channel in fp32: the largest sliding-window patch rep3d accepts."""
MAX_SPACING_MM = 100.0
MAX_INTENSITY = 1e7
ORIENTATION_AXES = ("LR", "PA", "IS")
MAX_DISTRIBUTION_ENTRIES = 64
MAX_DISTRIBUTION_LIST = 16


def _fail(cls: str, message: str) -> Rep3DValueError:
    return Rep3DValueError(f"{cls}: {message}")


def text(value: Any, cls: str, key: str, *, limit: int = MAX_TEXT, newlines: bool = False) -> str:
    """A string of at most ``limit`` characters, control characters replaced (see :func:`rep3d.errors.printable`)."""
    if not isinstance(value, str):
        raise _fail(cls, f"{key} must be a string, got {type(value).__name__} {printable(repr(value))[:80]}")
    if len(value) > limit:
        raise _fail(cls, f"{key} is {len(value)} characters long, more than {limit}")
    return printable(value, newlines=newlines)


def _opt_text(value: Any, cls: str, key: str, **kw: Any) -> str | None:
    return None if value is None else text(value, cls, key, **kw)


def finite(value: Any, cls: str, key: str, low: float = -math.inf, high: float = math.inf,
           low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not (
            (low < value if low_open else low <= value) and value <= high):
        bound = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
        raise _fail(cls, f"{key} must be a finite number {bound}, got {printable(repr(value))[:80]}")
    return float(value)


def _triple(value: Any, cls: str, key: str) -> Sequence[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise _fail(cls, f"{key} must be 3 numbers (one per axis), got {printable(repr(value))[:80]}")
    return value


def _check_keys(cls: type, data: Any) -> dict[str, Any]:
    """``data`` as a dict holding exactly ``cls``'s fields plus ``version`` (== :data:`CFG_VERSION`)."""
    name = cls.__name__
    if not isinstance(data, Mapping):
        raise _fail(name, f"expected a JSON object, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields - {"version"})
    missing = sorted(fields - set(data)) + ([] if "version" in data else ["version"])
    if unknown or missing:
        parts = ([f"unknown key(s) {', '.join(map(repr, unknown))}"] if unknown else []) + (
            [f"missing key(s) {', '.join(map(repr, missing))}"] if missing else [])
        raise _fail(name, f"{'; '.join(parts)} (expected exactly: version, {', '.join(sorted(fields))})")
    if data["version"] != CFG_VERSION:
        raise _fail(name, f"version {printable(repr(data['version']))} is not supported (this rep3d reads version "
                    f"{CFG_VERSION}); upgrade rep3d or re-save the model")
    return {k: data[k] for k in fields}


class _Cfg:
    """``to_dict`` / ``from_dict`` shared by the config classes."""

    _freeze: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": CFG_VERSION}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = _plain(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):  # noqa: ANN206 - each subclass returns itself
        return cls(**_check_keys(cls, data))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class ModelCfg(_Cfg):
    """The architecture and its constructor arguments (checked against :mod:`rep3d.configs.model_args`; timm's
    factory options such as ``checkpoint_path`` are refused). ``block`` is ``"ux"`` for 3D UX-Net architectures."""

    architecture: str
    args: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arch = text(self.architecture, "ModelCfg", "architecture", limit=MAX_NAME)
        if not arch.replace("_", "").isalnum():
            raise _fail("ModelCfg", f"architecture must be a model name (letters, digits, '_'), got {arch!r}")
        if not isinstance(self.args, Mapping):
            raise _fail("ModelCfg", f"args must be a JSON object of constructor arguments, got "
                        f"{type(self.args).__name__}")
        block = "ux" if arch.startswith("uxnet3d") else None
        checked = check_model_args(arch, dict(self.args), block=block)
        object.__setattr__(self, "architecture", arch)
        object.__setattr__(self, "args", MappingProxyType(checked))


def _orientation(value: Any) -> str | None:
    if value is None:
        return None
    code = text(value, "InputCfg", "orientation", limit=6)
    if code == "native":  # keep the file's own voxel axes (models trained by nnU-Net)
        return code
    axes = sorted(next((i for i, pair in enumerate(ORIENTATION_AXES) if c in pair), -1) for c in code)
    if len(code) != 3 or axes != [0, 1, 2]:
        raise _fail("InputCfg", f"orientation must be 3 axis codes, one of L/R, one of P/A and one of I/S (e.g. "
                    f"'RAS', 'LPS'), or 'native', got {code!r}")
    return code


def _distribution(value: Any) -> Mapping[str, Any] | None:
    """The training input distribution: a flat mapping of finite numbers, short lists of numbers or short strings."""
    if value is None:
        return None
    cls, key = "InputCfg", "training_distribution"
    if not isinstance(value, Mapping) or len(value) > MAX_DISTRIBUTION_ENTRIES:
        raise _fail(cls, f"{key} must be a flat JSON object of at most {MAX_DISTRIBUTION_ENTRIES} entries")
    out: dict[str, Any] = {}
    for k, v in value.items():
        name = text(k, cls, f"{key} key", limit=64)
        where = f"{key}[{name!r}]"
        if isinstance(v, str):
            out[name] = text(v, cls, where, limit=256)
        elif isinstance(v, (list, tuple)):
            if len(v) > MAX_DISTRIBUTION_LIST:
                raise _fail(cls, f"{where} has {len(v)} values, more than {MAX_DISTRIBUTION_LIST}")
            out[name] = tuple(finite(x, cls, where) for x in v)
        else:
            out[name] = finite(v, cls, where)
    return MappingProxyType(out)


@dataclass(frozen=True)
class InputCfg(_Cfg):
    """The input the weights expect: ``roi_size`` (sliding-window patch, voxels), ``spacing`` (mm), the intensity
    ``window`` mapped to [0, 1], ``in_chans``, ``orientation`` (e.g. ``"RAS"``, or ``"native"``: the file's own
    voxel axes), ``modality`` and the
    ``training_distribution`` (a flat mapping: modality, spacing range, intensity statistics, foreground fraction,
    ...). Every number is finite and bounded; ``None`` means not recorded."""

    in_chans: int = 1
    roi_size: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    intensity_window: tuple[float, float] | None = None
    orientation: str | None = None
    modality: str | None = None
    training_distribution: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        cls = "InputCfg"
        chans = self.in_chans
        if isinstance(chans, bool) or not isinstance(chans, int) or not 1 <= chans <= MAX_IN_CHANS:
            raise _fail(cls, f"in_chans must be an int in [1, {MAX_IN_CHANS}], got {printable(repr(chans))[:40]}")
        roi = self.roi_size
        if roi is not None:
            roi = tuple(_triple(roi, cls, "roi_size"))
            if not all(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= MAX_ROI for r in roi) or \
                    math.prod(roi) > MAX_ROI_VOXELS:
                raise _fail(cls, f"roi_size must be 3 ints in [1, {MAX_ROI}] with at most {MAX_ROI_VOXELS:,} voxels "
                            f"(512^3), got {printable(repr(self.roi_size))[:80]}")
        spacing = self.spacing
        if spacing is not None:
            spacing = tuple(finite(s, cls, "spacing", 0.0, MAX_SPACING_MM, low_open=True)
                            for s in _triple(spacing, cls, "spacing"))
        window = self.intensity_window
        if window is not None:
            if isinstance(window, (str, bytes)) or not isinstance(window, Sequence) or len(window) != 2:
                raise _fail(cls, f"intensity_window must be [low, high], got {printable(repr(window))[:80]}")
            window = tuple(finite(v, cls, "intensity_window", -MAX_INTENSITY, MAX_INTENSITY) for v in window)
            if not window[0] < window[1]:
                raise _fail(cls, f"intensity_window must have low < high, got {list(window)}")
        object.__setattr__(self, "roi_size", roi)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "intensity_window", window)
        object.__setattr__(self, "orientation", _orientation(self.orientation))
        object.__setattr__(self, "modality", _opt_text(self.modality, cls, "modality", limit=128))
        object.__setattr__(self, "training_distribution", _distribution(self.training_distribution))


@dataclass(frozen=True)
class LabelCfg(_Cfg):
    """What the model outputs: ``count`` classes, optionally their ``names`` (one per class, index order)."""

    count: int
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        cls = "LabelCfg"
        if isinstance(self.count, bool) or not isinstance(self.count, int) or not 1 <= self.count <= MAX_CLASSES:
            raise _fail(cls, f"count must be an int in [1, {MAX_CLASSES}], got {printable(repr(self.count))[:40]}")
        names = self.names
        if names is not None:
            if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
                raise _fail(cls, f"names must be a list of strings, got {type(names).__name__}")
            names = tuple(text(n, cls, f"names[{i}]", limit=MAX_NAME) for i, n in enumerate(names))
            if len(names) != self.count:
                raise _fail(cls, f"{len(names)} names for {self.count} classes: there must be one name per class")
        object.__setattr__(self, "names", names)


@dataclass(frozen=True)
class Provenance(_Cfg):
    """Where the weights come from: ``source`` (``"registry"``, ``"local-dir"``, ``"hf-hub"``, ...), the registered
    ``tag``, their ``license``, whether the training data was ``synthetic``, the ``dataset``, a ``description`` and
    the ``origin`` (the registered weights they started from)."""

    source: str
    tag: str | None = None
    license: str | None = None
    synthetic: bool = False
    dataset: str | None = None
    description: str | None = None
    origin: str | None = None

    def __post_init__(self) -> None:
        cls = "Provenance"
        if not isinstance(self.synthetic, bool):
            raise _fail(cls, f"synthetic must be true or false, got {printable(repr(self.synthetic))[:40]}")
        object.__setattr__(self, "source", text(self.source, cls, "source", limit=64))
        for key, limit, newlines in (("tag", 64, False), ("license", 64, False), ("dataset", 256, False),
                                     ("description", MAX_TEXT, True), ("origin", 256, False)):
            object.__setattr__(self, key, _opt_text(getattr(self, key), cls, key, limit=limit, newlines=newlines))
