"""Segmentation metrics as pure functions on label maps."""

from __future__ import annotations

import math

import torch

from rep3d.errors import Rep3DValueError


def dice_per_class(prediction: torch.Tensor, target: torch.Tensor, num_classes: int) -> list[float]:
    """Dice of classes ``1..num_classes-1`` between two integer label maps of equal shape.

    A class absent from both maps gives ``nan`` (excluded by :func:`mean_dice`), absent from one of them ``0``.
    """
    if prediction.shape != target.shape:
        raise Rep3DValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    out = []
    for c in range(1, num_classes):
        p, t = prediction == c, target == c
        denom = int(p.sum()) + int(t.sum())
        out.append(math.nan if denom == 0 else 2.0 * int((p & t).sum()) / denom)
    return out


def mean_dice(per_class: list[float]) -> float:
    """Mean over the classes present (``nan`` entries skipped); ``nan`` if none is."""
    vals = [v for v in per_class if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan
