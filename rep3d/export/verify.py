"""The verification every export goes through: the written file, run in its own runtime, against eager PyTorch."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import torch
from torch import nn

from rep3d.errors import Rep3DError
from rep3d.export.formats import export_format
from rep3d.export.prepare import example_input, network_stride

TOLERANCE = 1e-4
"""Largest accepted ``max |exported - eager|`` relative to the eager output's range (max - min)."""


class ExportVerificationError(Rep3DError, RuntimeError):
    """The exported file, run in its own runtime, does not reproduce the eager model."""


def load_runner(fmt: str, path: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """Load an exported file in its own runtime: a function ``[B, C, D, H, W] -> logits`` (CPU, float32)."""
    return export_format(fmt).load(Path(path))


def verify(fmt: str, path: str | Path, model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Run the exported file and the eager model on ``x``; ``(max abs error, eager output range)``.

    Raises :class:`ExportVerificationError` when the error exceeds :data:`TOLERANCE` of the output range.
    """
    run = load_runner(fmt, path)
    with torch.no_grad():
        expected = model(x)
        got = run(x)
    if tuple(got.shape) != tuple(expected.shape):
        raise ExportVerificationError(
            f"{path}: the exported {fmt} returned shape {tuple(got.shape)} for input {tuple(x.shape)}, "
            f"eager PyTorch {tuple(expected.shape)}"
        )
    error = float((got.float() - expected).abs().max())
    span = float(expected.max() - expected.min())
    if not math.isfinite(error) or error > TOLERANCE * max(span, 1e-12):
        raise ExportVerificationError(
            f"{path}: the exported {fmt} differs from eager PyTorch by up to {error:.3g} "
            f"(output range {span:.3g}, tolerance {TOLERANCE:g} of it); the file is not trustworthy"
        )
    return error, span


def verification_input(model: nn.Module, roi: Sequence[int], dynamic: Collection[str]) -> torch.Tensor:
    """A fresh input for :func:`verify`: another batch size / volume size where those are dynamic."""
    batch = 2 if "batch" in dynamic else 1
    if "spatial" in dynamic:
        stride = network_stride(model)
        roi = [r + stride if i == 0 else r for i, r in enumerate(roi)]  # a different depth
    return example_input(model, roi, batch=batch, seed=1)
