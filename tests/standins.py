"""Tiny stand-in models for predictor tests (the model zoo is not needed to test the pipeline)."""

from __future__ import annotations

import torch
from torch import nn


class ThresholdOracle(nn.Module):
    """2 classes: foreground where the (normalised) input exceeds 0.5; sharp logits."""

    in_chans, num_classes = 1, 2

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.cat([-(x - 0.5) * 40, (x - 0.5) * 40], 1)


class WindowMean(nn.Module):
    """2 classes; the class-1 logit is constant over each window: ``mean(window) - offset``."""

    in_chans, num_classes = 1, 2

    def __init__(self, offset: float = 0.0) -> None:
        super().__init__()
        self.offset = offset
        self.calls = 0
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.batch_sizes.append(x.shape[0])
        z = x.mean(dim=(1, 2, 3, 4), keepdim=True) - self.offset
        return torch.cat([torch.zeros_like(x), z.expand_as(x)], 1)


class SideOracle(nn.Module):
    """3 classes: foreground (input > 0.5) is class 1 in the low-index half of axis 0 (patient's left in RAS)
    and class 2 in the high-index half -- a model that only knows position, like a left/right kidney model."""

    in_chans, num_classes = 1, 3

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0  # forwards made so far: what a test of test-time augmentation counts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        fg = (x > 0.5).float()
        n = x.shape[2]
        low = (torch.arange(n, dtype=x.dtype) < n / 2).float().view(1, 1, n, 1, 1)
        return 30 * torch.cat([1 - fg, fg * low, fg * (1 - low)], 1)


class RGBOracle(ThresholdOracle):
    in_chans = 3


def threshold_oracle(name: str, checkpoint: str | None = None) -> nn.Module:
    """A stand-in for ``create_model(name, ...)``: ignores the name, windows [0, 100] via its cfg."""
    model = ThresholdOracle()
    model.pretrained_cfg = {
        "roi_size": (16, 16, 16),
        "spacing": (2.0, 2.0, 2.0),
        "intensity_window": (0, 100),
        "orientation": "RAS",
        "class_names": ["background", "bright"],
        "modality": "CT",
        "tta_flip_axes": (0, 1, 2),  # a threshold is mirror-symmetric: every flip is safe
    }
    return model
