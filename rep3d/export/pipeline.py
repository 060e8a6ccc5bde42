"""``export_model``: fold, write to a staging place, verify, then install; and the report of what was done."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from rep3d.errors import Rep3DValueError
from rep3d.export.conv_plan import Engine, conv_plan, scripted_plan
from rep3d.export.formats import ExportJob, export_format, require_format
from rep3d.export.onnx import ONNX_OPSET
from rep3d.export.prepare import DYNAMIC_AXES, example_input, model_roi, parse_dynamic, prepare_model
from rep3d.export.verify import TOLERANCE, verification_input, verify
from rep3d.inference.model_cfg import model_config
from rep3d.outputs import check_file_output, check_folder_output, install_file, install_tree, read_files


@dataclasses.dataclass
class ExportReport:
    """What one export produced and how it was checked."""

    format: str
    path: Path
    input_shape: tuple[int, ...]
    max_abs_error: float
    output_range: float
    conv_path: str
    dynamic: tuple[str, ...] = ()
    folded: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / max(self.output_range, 1e-12)

    def summary(self) -> str:
        dyn = ", ".join(self.dynamic) if self.dynamic else "none (static shapes)"
        lines = [
            f"wrote {self.format} to {self.path}",
            f"verified: max |exported - eager| = {self.max_abs_error:.3g} on input {list(self.input_shape)} "
            f"({self.relative_error:.2g} of the output range {self.output_range:.3g}; tolerance {TOLERANCE:g})",
            f"dynamic axes: {dyn}",
            f"large-kernel conv path: {self.conv_path}",
        ]
        return "\n".join(lines + self.notes)


def export_model(
    model: nn.Module,
    fmt: str,
    output: str | Path,
    *,
    roi: Sequence[int] | None = None,
    dynamic: str | Collection[str] | None = None,
    backend: str | None = None,
    opset: int = ONNX_OPSET,
    overwrite: bool = False,
    bundle_metadata: dict[str, Any] | None = None,
    reads: Iterable[str | os.PathLike] = (),
) -> ExportReport:
    """Fold, export, reload and verify ``model`` as ``fmt`` at ``output`` (a file; a folder for monai-bundle).

    The file is written to a temporary place and moved to ``output`` only after it verified: an export that fails
    leaves nothing behind. With ``overwrite=True`` an existing ``output`` is replaced only if an earlier rep3d
    command wrote it (:mod:`rep3d.outputs`); the model's own weights file (``ModelConfig.weights_file``) and
    ``reads`` (e.g. the ``--checkpoint``) are never written over, and a folder is never replaced (a bundle's files
    are written into it one by one; a non-empty folder rep3d did not create is refused).
    """
    spec = export_format(fmt)
    require_format(fmt)
    output = Path(output)
    cfg_file = model_config(model).weights_file
    protected = read_files([*reads, cfg_file if isinstance(cfg_file, (str, os.PathLike)) else None])
    if spec.folder:
        check_folder_output(output, overwrite=overwrite, reads=protected)
    else:
        check_file_output(output, overwrite=overwrite, reads=protected)
    dyn = parse_dynamic(dynamic)
    if backend == "fft" and "spatial" in dyn:
        raise Rep3DValueError("--backend fft cannot be exported with --dynamic spatial: the FFT graph depends on the "
                              "volume size (its padded lengths are fixed at export); drop --backend fft (dynamic "
                              "shapes use the direct engine) or export static shapes with --roi")
    if spec.scripted:
        if backend not in (None, "auto", "direct"):
            raise Rep3DValueError(f"{fmt} always holds the direct engine (TorchScript); --backend {backend} is not "
                                  "possible there")
        dyn = DYNAMIC_AXES  # a scripted graph takes any batch and volume size
    deployed, folded = prepare_model(model, backend)
    roi = model_roi(deployed, roi)
    batch = 2 if "batch" in dyn else 1  # torch.export specialises a dimension of size 1
    x = example_input(deployed, roi, batch=batch)
    plan = scripted_plan(deployed) if spec.scripted else conv_plan(deployed, x, dyn)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        target = staging / output.name
        spec.write(ExportJob(deployed, x, roi, dyn, opset, bundle_metadata), target)
        check = verification_input(deployed, roi, dyn)
        error, span = verify(fmt, target, deployed, check)
        command = f"rep3d export --format {fmt}"
        if spec.folder:
            for name in (p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()):
                check_file_output(output / name, overwrite=overwrite, reads=protected, root=output)
            install_tree(target, output, overwrite=overwrite, command=command)
        else:
            install_file(target, output, overwrite=overwrite, command=command)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    notes = []
    if fmt == "onnx":
        notes.append(f"ONNX opset {opset}")
        if Engine.FFT in plan.engines:
            notes.append("FFT layers hold their transforms as MatMul ops (onnxruntime's DFT is much slower)")
    return ExportReport(fmt, output, tuple(check.shape), error, span, plan.text, dyn, folded, notes)


def report_json(report: ExportReport) -> str:
    data = dataclasses.asdict(report)
    data["path"] = str(report.path)
    data["relative_error"] = report.relative_error
    return json.dumps(data, indent=2)
