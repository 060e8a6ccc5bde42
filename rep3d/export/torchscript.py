"""TorchScript: ``torch.jit.script`` of the folded model (the eager engine restated in TorchScript: any size)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def export_torchscript(model: nn.Module, path: str | Path) -> Path:
    """``torch.jit.script`` of the model (any batch and spatial size), saved with ``torch.jit.save``."""
    path = Path(path)
    scripted = torch.jit.script(model)
    torch.jit.save(scripted, str(path))
    return path


def load_torchscript(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.jit.load`` on CPU, in eval mode."""
    module = torch.jit.load(str(path), map_location="cpu")
    module.eval()
    return module
