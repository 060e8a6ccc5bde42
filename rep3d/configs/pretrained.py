"""The typed view of a model's ``pretrained_cfg`` dict: what the rest of rep3d reads instead of string keys.

A model keeps timm's ``pretrained_cfg`` dict (timm's factory, ``timm.create_model("hf-hub:...")`` and timm's tools
read and write it). :class:`PretrainedCfg` is a frozen snapshot of that dict with one attribute per key rep3d acts
on, built by :meth:`PretrainedCfg.from_dict` -- the one place where the keys are spelled. A typo in an attribute is
an ``AttributeError``, not a silent default. Values are taken as they are: a model's own cfg is trusted code data; a
stranger's ``config.json`` is checked on the way in (:mod:`rep3d.configs.folder`).

Changing a cfg makes a new dict (:func:`with_values`, :func:`without_keys`); nothing here mutates one in place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rep3d.configs.keys import LABEL_NAME_KEYS


@dataclass(frozen=True)
class WeightSource:
    """Where a cfg's weights are: a local ``file`` (or ``rep3d-bundled:NAME``), a ``bundled`` file name, a Hub
    repository (``hf_hub_id``, ``hf_hub_filename``, ``hf_revision``), a ``url`` (refused by the loader), the file's
    ``sha256`` and the ``source`` kind timm or rep3d recorded (``"hf-hub"``, ``"local-dir"``, ...)."""

    source: str | None = None
    file: str | None = None
    url: str | None = None
    bundled: str | None = None
    hf_hub_id: str | None = None
    hf_hub_filename: str | None = None
    hf_revision: str | None = None
    sha256: str | None = None

    @property
    def names_weights(self) -> bool:
        """Whether any weight file is named (a local file, a bundled file, a Hub repository or a URL)."""
        return any((self.file, self.bundled, self.hf_hub_id, self.url))


@dataclass(frozen=True)
class PretrainedCfg:
    """A model's cfg, typed: identity (``architecture``, ``tag``), the input it expects (``roi_size`` in voxels,
    ``spacing`` in mm, ``intensity_window``, ``orientation``, ``modality``, ``in_chans``, ``axis_order``,
    ``normalization``, ``training_distribution``), its outputs (``num_classes``, ``class_names``), test-time
    ``tta_flip_axes``, provenance (``synthetic``, ``dataset``, ``description``, ``origin``, ``license``,
    ``weights_source``, ``paper_name``, ``paper_ids``, ``metrics``, ``command``, ``training``), timm's ``classifier``
    and ``input_size``, and the weight ``weights`` (:class:`WeightSource`). ``None``: not recorded."""

    architecture: str | None = None
    tag: str | None = None
    num_classes: int | None = None
    in_chans: int | None = None
    class_names: tuple[str, ...] | None = None
    roi_size: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    intensity_window: tuple[float, ...] | None = None
    orientation: str | None = None
    modality: str | None = None
    axis_order: str | None = None
    normalization: Any = None
    training_distribution: Mapping[str, Any] | None = None
    tta_flip_axes: tuple[int, ...] | None = None
    synthetic: bool = False
    dataset: str | None = None
    description: str | None = None
    origin: str | None = None
    license: str | None = None
    weights_source: str | None = None
    paper_name: str | None = None
    paper_ids: Any = None
    metrics: Mapping[str, Any] | None = None
    command: str | None = None
    training: Any = None
    classifier: str | None = None
    input_size: tuple[int, ...] | None = None
    weights: WeightSource = field(default_factory=WeightSource)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> PretrainedCfg:
        """The typed view of a ``pretrained_cfg`` dict (``None`` or an empty dict: nothing recorded). Falsy values
        (``""``, ``[]``) read as not recorded, as the dict readers treated them."""
        cfg = cfg or {}

        def get(key: str) -> Any:
            value = cfg.get(key)
            return None if value is None or (not isinstance(value, (bool, int, float)) and not value) else value

        def tup(key: str) -> tuple | None:
            value = get(key)
            return tuple(value) if isinstance(value, (list, tuple)) else value

        names = next((cfg[k] for k in LABEL_NAME_KEYS if cfg.get(k) is not None), None)
        return cls(
            architecture=get("architecture"), tag=get("tag"), num_classes=get("num_classes"), in_chans=get("in_chans"),
            class_names=tuple(names) if isinstance(names, (list, tuple)) else names,
            roi_size=tup("roi_size"), spacing=tup("spacing"), intensity_window=tup("intensity_window"),
            orientation=get("orientation"), modality=get("modality"), axis_order=get("axis_order"),
            normalization=get("normalization"), training_distribution=get("training_distribution"),
            tta_flip_axes=tuple(cfg["tta_flip_axes"]) if isinstance(cfg.get("tta_flip_axes"), (list, tuple)) else
            cfg.get("tta_flip_axes"),
            synthetic=bool(cfg.get("synthetic", False)), dataset=get("dataset"), description=get("description"),
            origin=get("origin"), license=get("license"), weights_source=get("weights_source"),
            paper_name=get("paper_name"), paper_ids=get("paper_ids"), metrics=get("metrics"), command=get("command"),
            training=get("training"), classifier=get("classifier"), input_size=tup("input_size"),
            weights=WeightSource(source=get("source"), file=get("file"), url=get("url"), bundled=get("bundled"),
                                 hf_hub_id=get("hf_hub_id"), hf_hub_filename=get("hf_hub_filename"),
                                 hf_revision=get("hf_revision"), sha256=get("sha256")),
        )

    @classmethod
    def of(cls, model: Any) -> PretrainedCfg:
        """The typed view of ``model.pretrained_cfg`` (an object without one: nothing recorded)."""
        cfg = getattr(model, "pretrained_cfg", None)
        return cls.from_dict(cfg if isinstance(cfg, Mapping) else None)

    @property
    def name(self) -> str:
        """How messages name the weights: ``"arch.tag"``, ``"arch"`` or ``"this model"``."""
        return (self.architecture or "this model") + (f".{self.tag}" if self.tag else "")


@dataclass(frozen=True)
class WeightFileMetadata:
    """The strings rep3d writes into a safetensors header next to the tensors: the ``architecture`` they were saved
    from, their ``form`` (``"train"`` / ``"deploy"``) and the rep3d ``version``. A file another tool wrote has none
    of them (``None``)."""

    architecture: str | None = None
    form: str | None = None
    version: str | None = None

    @classmethod
    def from_dict(cls, metadata: Mapping[str, str] | None) -> WeightFileMetadata:
        header = metadata or {}
        form = header.get("rep3d_form")
        return cls(architecture=header.get("rep3d_architecture") or None,
                   form=form if form in ("train", "deploy") else None, version=header.get("rep3d_version") or None)

    def to_dict(self) -> dict[str, str]:
        """The header entries (safetensors metadata is a flat ``str -> str`` map; ``format`` is PyTorch's)."""
        return {"format": "pt", "rep3d_architecture": str(self.architecture), "rep3d_form": str(self.form),
                "rep3d_version": str(self.version)}


def with_values(cfg: Mapping[str, Any] | None, **values: Any) -> dict[str, Any]:
    """A new cfg dict: ``cfg`` with ``values`` set (``cfg`` is not changed)."""
    return {**(cfg or {}), **values}


def without_keys(cfg: Mapping[str, Any] | None, keys: Iterable[str]) -> dict[str, Any]:
    """A new cfg dict: ``cfg`` without ``keys`` (``cfg`` is not changed)."""
    drop = set(keys)
    return {k: v for k, v in (cfg or {}).items() if k not in drop}


def select_keys(cfg: Mapping[str, Any] | None, keys: Iterable[str]) -> dict[str, Any]:
    """A new cfg dict holding only ``keys`` of ``cfg``."""
    keep = set(keys)
    return {k: v for k, v in (cfg or {}).items() if k in keep}


def drop_mismatched_class_names(cfg: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
    """A new cfg dict: ``cfg`` without each of ``class_names`` / ``label_names`` that does not name exactly
    ``num_classes`` classes."""
    return without_keys(cfg, [key for key in LABEL_NAME_KEYS if cfg.get(key) is not None and (
        not isinstance(cfg[key], (list, tuple)) or len(cfg[key]) != num_classes)])


def factory_cfgs(kwargs: Mapping[str, Any]) -> tuple[Any, Mapping[str, Any]]:
    """timm's ``pretrained_cfg`` (a dict, a tag string or ``None``) and ``pretrained_cfg_overlay`` (a dict, empty
    when not given) among a model entrypoint's keyword arguments."""
    return kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay") or {}


def pop_factory_cfgs(kwargs: dict[str, Any]) -> tuple[Any, Mapping[str, Any] | None]:
    """Remove timm's ``pretrained_cfg`` and ``pretrained_cfg_overlay`` from ``kwargs`` and return them (``None``
    where not given): the builder consumes them, the model constructor must not see them."""
    return kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None)


def model_arg(model: Any, name: str, default: Any = None) -> Any:
    """One constructor argument recorded in ``model.model_args`` (``default`` when the model has none recorded)."""
    args = getattr(model, "model_args", None)
    return args.get(name, default) if isinstance(args, Mapping) else default
