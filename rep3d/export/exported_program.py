"""``torch.export``: an exported program of the folded model, saved as a ``.pt2`` archive."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

import torch
from torch import nn

from rep3d.export.prepare import dynamic_shapes


def export_program(model: nn.Module, path: str | Path, x: torch.Tensor, dynamic: Collection[str] = ()) -> Path:
    """``torch.export.export`` of the model saved with ``torch.export.save`` (a ``.pt2`` archive)."""
    path = Path(path)
    with torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes(model, dynamic))
    torch.export.save(program, str(path))
    return path


def load_program(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.export.load(path).module()``."""
    return torch.export.load(str(path)).module()
