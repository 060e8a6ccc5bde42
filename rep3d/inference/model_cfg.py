"""A model's config as inference and export read it: ``model.pretrained_cfg`` read once into rep3d's typed classes
(:class:`~rep3d.configs.cfg.InputCfg`, :class:`~rep3d.configs.cfg.LabelCfg`,
:class:`~rep3d.configs.cfg.Provenance`), plus the inference keys those classes do not hold (``tta_flip_axes``,
``axis_order``, ``normalization``) and the descriptive ones a model card or MONAI bundle repeats.

:class:`~rep3d.configs.pretrained.PretrainedCfg` reads the cfg dict's keys; this module groups what inference and
export need into the validated classes, and the rest of :mod:`rep3d.inference` and :mod:`rep3d.export` reads the
attributes of :class:`ModelConfig`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from rep3d.configs.cfg import InputCfg, LabelCfg, Provenance
from rep3d.configs.pretrained import PretrainedCfg


@dataclass(frozen=True)
class ModelConfig:
    """What a model's cfg says, typed.

    Attributes:
        input: the input the weights expect (``input.roi_size`` etc. are ``None`` where the cfg records none).
        provenance: source, tag, license, synthetic or not, dataset, description.
        architecture: the registered architecture name, ``None`` if not recorded.
        in_chans / num_classes: the model's (its attributes first, then the cfg), ``None`` if neither says.
        class_names: the output channels' names (``LabelCfg.names`` when they match ``num_classes``).
        tta_flip_axes: the flips training used (``()``: none), ``None`` if not recorded.
        axis_order: ``"xyz"`` or ``"zyx"`` as recorded, ``None`` if not recorded.
        normalization: per-channel normalisation (models exported from nnU-Net), ``None`` if not recorded.
        weights_file: the file the weights were loaded from, if the cfg names one.
        metrics / paper_name / paper_ids: what a bundle's metadata repeats from the model card.
    """

    input: InputCfg
    provenance: Provenance
    architecture: str | None = None
    in_chans: int | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    tta_flip_axes: tuple[int, ...] | None = None
    axis_order: str | None = None
    normalization: Sequence[Mapping[str, Any]] | None = None
    weights_file: str | os.PathLike | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    paper_name: str = ""
    paper_ids: str = ""

    @property
    def name(self) -> str:
        """``architecture.tag`` (``"this model"`` when no architecture is recorded)."""
        tag = self.provenance.tag
        return (self.architecture or "this model") + (f".{tag}" if tag else "")

    @property
    def labels(self) -> LabelCfg | None:
        """The output classes as :class:`LabelCfg` (``None`` when the class count is unknown)."""
        if not self.num_classes:
            return None
        names = self.class_names if self.class_names and len(self.class_names) == self.num_classes else None
        return LabelCfg(self.num_classes, names)


def model_config(model: nn.Module) -> ModelConfig:
    """:class:`ModelConfig` of ``model`` (its ``pretrained_cfg``, ``in_chans`` and ``num_classes``)."""
    return read_config(getattr(model, "pretrained_cfg", None) or {}, in_chans=getattr(model, "in_chans", None),
                       num_classes=getattr(model, "num_classes", None))


def read_config(cfg: Mapping[str, Any], *, in_chans: int | None = None, num_classes: int | None = None
                ) -> ModelConfig:
    """:class:`ModelConfig` of a cfg mapping; ``in_chans`` / ``num_classes`` (the model's) take precedence over the
    cfg's. The keys are read by :class:`~rep3d.configs.pretrained.PretrainedCfg` (the one place that spells them);
    values are checked by the typed classes (a Rep3DValueError names the bad one)."""
    view = PretrainedCfg.from_dict(cfg)
    in_chans = in_chans or view.in_chans or None
    num_classes = num_classes or view.num_classes or None
    inputs = {name: value for name, value in (
        ("roi_size", view.roi_size), ("spacing", view.spacing), ("intensity_window", view.intensity_window),
        ("orientation", view.orientation), ("modality", view.modality),
        ("training_distribution", view.training_distribution)) if value is not None}
    provenance = Provenance(source=str(view.weights.source or "unknown"), synthetic=view.synthetic,
                            **{name: value for name, value in (
                                ("tag", view.tag), ("license", view.license), ("dataset", view.dataset),
                                ("description", view.description), ("origin", view.origin)) if value})
    return ModelConfig(
        input=InputCfg(in_chans=int(in_chans or 1), **inputs),
        provenance=provenance,
        architecture=view.architecture,
        in_chans=in_chans,
        num_classes=num_classes,
        class_names=view.class_names,
        tta_flip_axes=None if view.tta_flip_axes is None else tuple(int(a) for a in view.tta_flip_axes),
        axis_order=view.axis_order,
        normalization=view.normalization,
        weights_file=view.weights.file,
        metrics=dict(view.metrics or {}),
        paper_name=str(view.paper_name or ""),
        paper_ids="" if view.paper_ids is None else str(view.paper_ids),
    )
