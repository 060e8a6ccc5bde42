"""Validation during training: mean Dice per class of sliding-window predictions on volumes already on the model's
grid (the validation split is preprocessed once, so nothing is resampled here)."""

from __future__ import annotations

import torch
from torch import nn

from rep3d.inference import LabelledCase, Predictor, evaluate_cases
from rep3d.train.recipes import TrainConfig

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: nn.Module, volumes: list[dict[str, torch.Tensor]], cfg: TrainConfig, class_names: list[str],
             device: torch.device, autocast_dtype: torch.dtype | None = None) -> list[float]:
    """Mean Dice per class (``class_names[1:]``) of sliding-window predictions over volumes already on the model
    grid (``{"image": [C, *grid], "label": [1, *grid]}``): :func:`rep3d.inference.evaluate_cases` with a
    :class:`Predictor` that resamples nothing. The model's train/eval mode is restored afterwards."""
    was_training = model.training
    predictor = Predictor(model, roi_size=cfg.roi_size, overlap=cfg.sw_overlap, sw_batch_size=cfg.sw_batch_size,
                          device=device, stitch_device=device, amp=autocast_dtype is not None, spacing=None,
                          orientation=None, intensity_window=None, class_names=class_names)
    cases = (LabelledCase(f"volume {i}", v["image"], v["label"][0]) for i, v in enumerate(volumes))
    result = evaluate_cases(predictor, cases, class_names)
    model.train(was_training)
    return list(result["mean_dice"].values())
