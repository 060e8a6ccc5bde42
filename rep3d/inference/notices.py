"""What a prediction warns about or records beside its labels: synthetic weights, replaced non-finite voxels, the
region the body crop left out."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from rep3d.inference.io import InputError, InputWarning
from rep3d.inference.model_cfg import ModelConfig, read_config


class SyntheticWeightsWarning(UserWarning):
    """The weights were trained on synthetic data (``pretrained_cfg['synthetic']``): their labels on a real scan are a
    pipeline demonstration, not a segmentation. :class:`~rep3d.inference.Predictor` emits it on every call."""


# shown on every call, not once per call site (Python's default for UserWarning); a user's own filters still win
warnings.filterwarnings("always", category=SyntheticWeightsWarning, append=True)


class NonFiniteInputWarning(InputWarning):
    """A :class:`~rep3d.inference.Predictor` with ``nonfinite=VALUE`` replaced NaN / infinite input voxels by
    ``VALUE``."""


def synthetic_notice(cfg: ModelConfig | Mapping[str, Any]) -> str | None:
    """The one-line notice for weights whose provenance says synthetic, else ``None``; ``cfg`` is a model's
    :class:`~rep3d.inference.model_cfg.ModelConfig` or its ``pretrained_cfg``."""
    if not isinstance(cfg, ModelConfig):
        cfg = read_config(cfg)
    if not cfg.provenance.synthetic:
        return None
    dataset = cfg.provenance.dataset
    data = f" ({dataset})" if dataset else ""
    return (f"{cfg.name} was trained on SYNTHETIC data{data}, not on patient scans: its labels on a real scan are a "
            "pipeline demonstration, not a segmentation")


def replace_nonfinite(image: torch.Tensor, policy: str | float, what: str) -> torch.Tensor:
    """Apply the ``nonfinite`` policy (``"error"`` or a finite replacement value) to ``image [C, X, Y, Z]``."""
    finite = torch.isfinite(image)
    if bool(finite.all()):
        return image
    bad, total = int((~finite).sum()), finite.numel()
    how = ("replace them with a stated value: rep3d predict --nonfinite replace:VALUE, "
           "Predictor(nonfinite=VALUE) (e.g. -1024, air in CT HU)")
    if bad == total:
        raise InputError(f"{what}: all {total} voxels are NaN or infinite; there is nothing to segment")
    if policy == "error":
        raise InputError(f"{what}: {bad} of {total} voxels are NaN or infinite, which would corrupt the whole "
                         f"segmentation; fix the scan, or {how}")
    warnings.warn(f"{what}: replaced {bad} of {total} NaN / infinite voxels with {policy:g}",
                  NonFiniteInputWarning, stacklevel=3)
    return torch.where(finite, image, torch.as_tensor(policy, dtype=image.dtype))


def cropped_report(raw: torch.Tensor, box: tuple[slice, ...] | None) -> dict[str, Any] | None:
    """What the body crop left out (segmented as background without running the model): its share of the grid and
    the largest intensity there (air, if the crop was right); ``None`` when nothing was cropped."""
    if box is None:
        return None
    inside = torch.zeros(raw.shape[1:], dtype=torch.bool)
    inside[box] = True
    outside = raw[:, ~inside]
    return {"box_on_model_grid": [[b.start, b.stop] for b in box], "model_grid_shape": list(raw.shape[1:]),
            "voxels_outside": int((~inside).sum()), "fraction_outside": float((~inside).float().mean()),
            "max_intensity_outside": float(outside.max()) if outside.numel() else None}
