"""The export formats in one table: how each is written, loaded back for verification, and what it needs."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rep3d.errors import Rep3DValueError
from rep3d.export.exported_program import export_program, load_program
from rep3d.export.monai_bundle import load_monai_bundle, write_monai_bundle
from rep3d.export.onnx import export_onnx, load_onnx
from rep3d.export.torchscript import export_torchscript, load_torchscript
from rep3d.extras import require

Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ExportJob:
    """What a writer gets: the folded CPU model, its example input ``[B, C, *roi]``, the dynamic axes, the ONNX
    opset and the extra MONAI bundle metadata."""

    model: nn.Module
    example: torch.Tensor
    roi: Sequence[int]
    dynamic: Collection[str] = ()
    opset: int = 18
    bundle_metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ExportFormat:
    """One format: ``write(job, path)`` writes it, ``load(path)`` runs it in its own runtime (CPU, float32);
    ``scripted``: a TorchScript graph (direct engine, any batch and volume size); ``folder``: written as a folder;
    ``modules``: optional modules needed to write and verify it."""

    name: str
    write: Callable[[ExportJob, Path], object]
    load: Callable[[Path], Runner]
    scripted: bool = False
    folder: bool = False
    modules: tuple[str, ...] = field(default=())


EXPORT_FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("onnx", lambda job, path: export_onnx(job.model, path, job.example, job.dynamic, job.opset),
                 load_onnx, modules=("onnx", "onnxscript", "onnxruntime")),
    ExportFormat("torchscript", lambda job, path: export_torchscript(job.model, path), load_torchscript,
                 scripted=True),
    ExportFormat("exported-program", lambda job, path: export_program(job.model, path, job.example, job.dynamic),
                 load_program),
    ExportFormat("monai-bundle", lambda job, path: write_monai_bundle(job.model, path, roi=job.roi,
                                                                      metadata=job.bundle_metadata),
                 load_monai_bundle, scripted=True, folder=True),
)}
FORMATS = tuple(EXPORT_FORMATS)
FORMAT_MODULES: dict[str, tuple[str, ...]] = {f.name: f.modules for f in EXPORT_FORMATS.values() if f.modules}
"""Optional modules each format needs to be written (torch.onnx's exporter) and verified (onnxruntime)."""


def export_format(fmt: str) -> ExportFormat:
    """The :class:`ExportFormat` named ``fmt``; a one-line error naming the formats otherwise."""
    if fmt not in EXPORT_FORMATS:
        raise Rep3DValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return EXPORT_FORMATS[fmt]


def require_format(fmt: str) -> None:
    """Raise a one-line :class:`rep3d.extras.Rep3DMissingExtra` (``pip install "rep3d[export]"``) when a module
    ``fmt`` needs is not installed; called before any model is built or file written."""
    for module in FORMAT_MODULES.get(fmt, ()):
        require(module, f"export --format {fmt}")
