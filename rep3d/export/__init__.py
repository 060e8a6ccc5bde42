"""Export a folded rep3d model to ONNX, TorchScript, a ``torch.export`` program or a MONAI bundle, verified.

Every exporter writes its file, loads it back in its own runtime (onnxruntime, ``torch.jit.load``,
``torch.export.load``) and compares it with eager PyTorch on a fresh random input before it reports success
(:func:`verify`). The files need no rep3d to run: TorchScript and exported programs hold plain ``aten`` graphs.

Which large-kernel conv path a graph holds:

* TorchScript: the eager engine restated in TorchScript (:mod:`rep3d.layers.scripted_engine`: the same crop,
  choice and FFT per call), so batch and spatial sizes are dynamic and outputs equal eager's.
* exported program / ONNX with static shapes: the engine ``conv_backend`` picks at the export ROI, per layer
  (``"auto"``: the cost model), the kernel cropped to what meets a map of that size. In ONNX the FFT engine's
  transforms become ``MatMul`` ops with the shortest exact lengths (:mod:`rep3d.layers.dft_matmul`): onnxruntime's
  ``DFT`` kernel was an order of magnitude slower than this on CPU (benchmarks/README.md, "Export").
* exported program / ONNX with ``dynamic={"batch"}`` or ``{"spatial"}``: the direct engine (its graph does not
  depend on the sizes; dynamic spatial sizes also drop the size-dependent crop). Spatial sizes stay multiples of
  the network's stride (16) and at least two strides.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rep3d.errors import Rep3DError, Rep3DValueError
from rep3d.extras import require
from rep3d.layers import RepLKConv3d
from rep3d.layers.depthwise import BACKENDS, cached_backend, useful_kernel_size
from rep3d.layers.dft_matmul import dft_as_matmul
from rep3d.models.deploy import is_deployed, reparameterize_model
from rep3d.outputs import (
    check_file_output,
    check_folder_output,
    install_file,
    install_tree,
    read_files,
)

FORMATS = ("onnx", "torchscript", "exported-program", "monai-bundle")
DYNAMIC_AXES = ("batch", "spatial")
TOLERANCE = 1e-4
"""Largest accepted ``max |exported - eager|`` relative to the eager output's range (max - min)."""
ONNX_OPSET = 18
MAX_DYNAMIC_STRIDES = 32  # dynamic spatial sizes go up to 32 strides (512 voxels at stride 16)


class ExportVerificationError(Rep3DError, RuntimeError):
    """The exported file, run in its own runtime, does not reproduce the eager model."""


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


# ----------------------------------------------------------------------------------------------------------
# preparing the model


def prepare_model(model: nn.Module, backend: str | None = None) -> tuple[nn.Module, bool]:
    """A CPU, eval-mode, folded copy of ``model``; ``folded`` says whether it had to be re-parameterised.

    ``backend`` (``"auto"``, ``"direct"``, ``"fft"``) replaces every large-kernel conv's ``conv_backend``.
    """
    if backend is not None and backend not in BACKENDS:
        raise Rep3DValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    model = copy.deepcopy(model).cpu().float().eval()
    convs = [m for m in model.modules() if isinstance(m, RepLKConv3d)]
    folded = bool(convs) and not is_deployed(model)
    if folded:
        model = reparameterize_model(model, inplace=True)
    if backend is not None:
        for m in convs:
            m.conv_backend = backend
    for p in model.parameters():
        p.requires_grad_(False)
    return model, folded


def model_roi(model: nn.Module, roi: Sequence[int] | None = None) -> tuple[int, int, int]:
    """``roi`` or the model cfg's ``roi_size`` (96³ if none), checked against the network's stride."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    roi = tuple(int(r) for r in (roi or cfg.get("roi_size") or (96, 96, 96)))
    stride = _stride(model)
    minimum = minimum_roi(model)
    if len(roi) != 3 or any(r < 1 or r % stride for r in roi) or max(roi) < minimum:
        raise Rep3DValueError(f"--roi must be three multiples of the network stride {stride}, the largest at least "
                              f"{minimum} (the model's smallest input: its deepest stage must hold more than one "
                              f"voxel), got {list(roi)}")
    return roi  # type: ignore[return-value]


def minimum_roi(model: nn.Module) -> int:
    """The size the largest input axis must reach (``model.min_input_size``: two strides for rep3d networks)."""
    return int(getattr(model, "min_input_size", None) or _stride(model))


def parse_dynamic(spec: str | Collection[str] | None) -> tuple[str, ...]:
    """``"batch,spatial"`` / ``["batch"]`` / None -> a sorted tuple of known dynamic axes."""
    if spec is None:
        return ()
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [s for s in items if s not in DYNAMIC_AXES]
    if bad:
        raise Rep3DValueError(f"dynamic axes must be among {DYNAMIC_AXES} (comma-separated), got {bad}")
    return tuple(a for a in DYNAMIC_AXES if a in items)


def example_input(model: nn.Module, roi: Sequence[int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A reproducible random ``[batch, in_chans, *roi]`` float32 input."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, int(getattr(model, "in_chans", 1)), *roi, generator=gen)


def conv_path(model: nn.Module, x: torch.Tensor, dynamic: Collection[str] = ()) -> str:
    """Which engine each large-kernel conv runs at input ``x`` (as exported), and why, in one line."""
    convs = [m for m in model.modules() if isinstance(m, RepLKConv3d)]
    if not convs:
        return "no large-kernel convs"
    shapes: dict[int, tuple[int, ...]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: shapes.__setitem__(id(mod), tuple(args[0].shape)))
             for m in convs]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    counts: dict[str, list[str]] = {}
    for m in convs:
        shape = shapes[id(m)]
        if dynamic:
            engine = "direct"
        elif m.conv_backend != "auto":
            engine = m.conv_backend
        else:
            ksize = useful_kernel_size(m.kernel_size, shape[2:])
            engine = cached_backend(shape, ksize, "cpu", torch.float32, False)
        counts.setdefault(engine, []).append("x".join(map(str, shape[2:])))
    parts = []
    for engine, sizes in sorted(counts.items()):
        maps = ", ".join(sorted(set(sizes), key=_volume, reverse=True))
        parts.append(f"{engine} on {len(sizes)} of {len(convs)} ({maps} maps)")
    if dynamic:
        why = "dynamic shapes: the direct engine's graph does not depend on the sizes"
    elif all(m.conv_backend == "auto" for m in convs):
        why = "chosen per layer by the cost model at this ROI (--backend direct/fft forces one)"
    else:
        why = "forced by --backend"
    return f"{'; '.join(parts)} -- {why}"


# ----------------------------------------------------------------------------------------------------------
# the formats


def export_onnx(model: nn.Module, path: str | Path, x: torch.Tensor, dynamic: Collection[str] = (),
                opset: int = ONNX_OPSET, fft_transforms: str = "matmul") -> Path:
    """ONNX via ``torch.onnx.export(dynamo=True)``, weights inside the file; input ``image``, output ``logits``.

    ``fft_transforms``: how the FFT engine's transforms are written: ``"matmul"`` (:mod:`rep3d.layers.dft_matmul`,
    the fast one in onnxruntime) or ``"dft"`` (ONNX ``DFT`` ops, power-of-two lengths; kept for comparison).
    """
    if opset < 17:
        raise Rep3DValueError(f"ONNX opset must be >= 17 (DFT and LayerNormalization), got {opset}")
    if fft_transforms not in ("matmul", "dft"):
        raise Rep3DValueError(f"fft_transforms must be 'matmul' or 'dft', got {fft_transforms!r}")
    path = Path(path)
    # onnxruntime's DFT kernel is slow, its MatMul is a tuned GEMM (rep3d.layers.dft_matmul)
    with dft_as_matmul() if fft_transforms == "matmul" else power_of_two_fft_lengths():
        program = torch.onnx.export(
            model, (x,), dynamo=True, opset_version=opset, dynamic_shapes=_dynamic_shapes(model, dynamic),
            input_names=["image"], output_names=["logits"], external_data=False, verbose=False,
        )
    program.save(str(path), external_data=False)
    return path


@contextlib.contextmanager
def power_of_two_fft_lengths() -> Iterator[None]:
    """Within the block the FFT engine pads to powers of two instead of 5-smooth lengths (still exact).

    onnxruntime's CPU ``DFT`` kernel runs radix-2 on power-of-two lengths and Bluestein's algorithm (three
    transforms of at least twice the length) otherwise: measured on one 12-channel 32^3 layer with a 21^3 kernel,
    ORT took 16x PyTorch's time with length 48 and 7.7x with length 64 (benchmarks/README.md, "Export").
    """
    from rep3d.layers import fft_conv

    saved = fft_conv.fast_fft_length
    fft_conv.fast_fft_length = _next_power_of_two
    try:
        yield
    finally:
        fft_conv.fast_fft_length = saved


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def export_torchscript(model: nn.Module, path: str | Path) -> Path:
    """``torch.jit.script`` of the model (any batch and spatial size), saved with ``torch.jit.save``."""
    path = Path(path)
    scripted = torch.jit.script(model)
    torch.jit.save(scripted, str(path))
    return path


def export_program(model: nn.Module, path: str | Path, x: torch.Tensor, dynamic: Collection[str] = ()) -> Path:
    """``torch.export.export`` of the model saved with ``torch.export.save`` (a ``.pt2`` archive)."""
    path = Path(path)
    with torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes=_dynamic_shapes(model, dynamic))
    torch.export.save(program, str(path))
    return path


def _stride(model: nn.Module) -> int:
    stride = getattr(model, "stride", 1)
    return stride if isinstance(stride, int) and stride > 0 else 1


def _dynamic_shapes(model: nn.Module, dynamic: Collection[str]) -> tuple[dict[int, Any]] | None:
    from torch.export import Dim

    if not dynamic:
        return None
    axes: dict[int, Any] = {}
    if "batch" in dynamic:
        axes[0] = Dim("batch", min=1, max=1024)
    if "spatial" in dynamic:
        stride = _stride(model)
        for axis, name in zip((2, 3, 4), ("depth", "height", "width"), strict=True):
            # at least two strides: the deepest stage keeps two voxels per axis
            axes[axis] = stride * Dim(f"{name}_strides", min=2, max=MAX_DYNAMIC_STRIDES)
    return (axes,)


# ----------------------------------------------------------------------------------------------------------
# loading back and verifying


def load_runner(fmt: str, path: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """Load an exported file in its own runtime: a function ``[B, C, D, H, W] -> logits`` (CPU, float32)."""
    path = Path(path)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    if fmt in ("torchscript", "monai-bundle"):
        file = path if fmt == "torchscript" else path / "models" / "model.ts"
        module = torch.jit.load(str(file), map_location="cpu")
        module.eval()
        return module
    if fmt == "exported-program":
        return torch.export.load(str(path)).module()
    raise Rep3DValueError(f"format must be one of {FORMATS}, got {fmt!r}")


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
        stride = _stride(model)
        roi = [r + stride if i == 0 else r for i, r in enumerate(roi)]  # a different depth
    return example_input(model, roi, batch=batch, seed=1)


FORMAT_MODULES: dict[str, tuple[str, ...]] = {"onnx": ("onnx", "onnxscript", "onnxruntime")}
"""Optional modules each format needs to be written (torch.onnx's exporter) and verified (onnxruntime)."""


def require_format(fmt: str) -> None:
    """Raise a one-line :class:`rep3d.extras.Rep3DMissingExtra` (``pip install "rep3d[export]"``) when a module
    ``fmt`` needs is not installed; called before any model is built or file written."""
    for module in FORMAT_MODULES.get(fmt, ()):
        require(module, f"export --format {fmt}")


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
    command wrote it (:mod:`rep3d.outputs`); the model's own weights file (``pretrained_cfg["file"]``) and
    ``reads`` (e.g. the ``--checkpoint``) are never written over, and a folder is never replaced (a bundle's files
    are written into it one by one; a non-empty folder rep3d did not create is refused).
    """
    if fmt not in FORMATS:
        raise Rep3DValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    require_format(fmt)
    output = Path(output)
    cfg_file = (getattr(model, "pretrained_cfg", None) or {}).get("file")
    protected = read_files([*reads, cfg_file if isinstance(cfg_file, (str, os.PathLike)) else None])
    if fmt == "monai-bundle":
        check_folder_output(output, overwrite=overwrite, reads=protected)
    else:
        check_file_output(output, overwrite=overwrite, reads=protected)
    dyn = parse_dynamic(dynamic)
    if backend == "fft" and "spatial" in dyn:
        raise Rep3DValueError("--backend fft cannot be exported with --dynamic spatial: the FFT graph depends on the "
                              "volume size (its padded lengths are fixed at export); drop --backend fft (dynamic "
                              "shapes use the direct engine) or export static shapes with --roi")
    if fmt in ("torchscript", "monai-bundle"):
        if backend not in (None, "auto", "direct"):
            raise Rep3DValueError(f"{fmt} always holds the direct engine (TorchScript); --backend {backend} is not "
                                  "possible there")
        dyn = DYNAMIC_AXES  # a scripted graph takes any batch and volume size
    deployed, folded = prepare_model(model, backend)
    roi = model_roi(deployed, roi)
    batch = 2 if "batch" in dyn else 1  # torch.export specialises a dimension of size 1
    x = example_input(deployed, roi, batch=batch)
    if fmt in ("torchscript", "monai-bundle"):
        path_note = ("direct (native conv3d, uncropped kernel) on every large-kernel conv -- TorchScript cannot hold "
                     "the FFT engine's autograd.Function, and a script graph must fit any size")
    else:
        path_note = conv_path(deployed, x, dyn)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        target = staging / output.name
        if fmt == "onnx":
            export_onnx(deployed, target, x, dyn, opset)
        elif fmt == "torchscript":
            export_torchscript(deployed, target)
        elif fmt == "exported-program":
            export_program(deployed, target, x, dyn)
        else:
            from rep3d.export.monai_bundle import write_monai_bundle

            write_monai_bundle(deployed, target, roi=roi, metadata=bundle_metadata)
        check = verification_input(deployed, roi, dyn)
        error, span = verify(fmt, target, deployed, check)
        command = f"rep3d export --format {fmt}"
        if fmt == "monai-bundle":
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
        if "fft on" in path_note:
            notes.append("FFT layers hold their transforms as MatMul ops (onnxruntime's DFT is much slower)")
    return ExportReport(fmt, output, tuple(check.shape), error, span, path_note, dyn, folded, notes)


def report_json(report: ExportReport) -> str:
    data = dataclasses.asdict(report)
    data["path"] = str(report.path)
    data["relative_error"] = report.relative_error
    return json.dumps(data, indent=2)


def _volume(size: str) -> int:
    return math.prod(int(s) for s in size.split("x"))
