"""ONNX: ``torch.onnx.export(dynamo=True)`` with the FFT engine's transforms written for onnxruntime."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from rep3d.errors import Rep3DValueError
from rep3d.export.prepare import dynamic_shapes
from rep3d.layers.dft_matmul import dft_as_matmul
from rep3d.layers.settings import engine_settings

ONNX_OPSET = 18
FFTTransforms = Literal["matmul", "dft"]
FFT_TRANSFORMS: tuple[FFTTransforms, ...] = ("matmul", "dft")


def export_onnx(model: nn.Module, path: str | Path, x: torch.Tensor, dynamic: Collection[str] = (),
                opset: int = ONNX_OPSET, fft_transforms: FFTTransforms = "matmul") -> Path:
    """ONNX via ``torch.onnx.export(dynamo=True)``, weights inside the file; input ``image``, output ``logits``.

    ``fft_transforms``: how the FFT engine's transforms are written: ``"matmul"`` (:mod:`rep3d.layers.dft_matmul`,
    the fast one in onnxruntime) or ``"dft"`` (ONNX ``DFT`` ops, power-of-two lengths; kept for comparison).
    """
    if opset < 17:
        raise Rep3DValueError(f"ONNX opset must be >= 17 (DFT and LayerNormalization), got {opset}")
    if fft_transforms not in FFT_TRANSFORMS:
        raise Rep3DValueError(f"fft_transforms must be 'matmul' or 'dft', got {fft_transforms!r}")
    path = Path(path)
    # onnxruntime's DFT kernel is slow, its MatMul is a tuned GEMM (rep3d.layers.dft_matmul)
    with dft_as_matmul() if fft_transforms == "matmul" else power_of_two_fft_lengths():
        program = torch.onnx.export(
            model, (x,), dynamo=True, opset_version=opset, dynamic_shapes=dynamic_shapes(model, dynamic),
            input_names=["image"], output_names=["logits"], external_data=False, verbose=False,
        )
    program.save(str(path), external_data=False)
    return path


@contextlib.contextmanager
def power_of_two_fft_lengths() -> Iterator[None]:
    """Within the block the FFT engine pads to powers of two instead of 5-smooth lengths (still exact): the engine
    setting ``fft_lengths="power-of-two"`` (:func:`rep3d.layers.engine_settings`).

    onnxruntime's CPU ``DFT`` kernel runs radix-2 on power-of-two lengths and Bluestein's algorithm (three
    transforms of at least twice the length) otherwise: measured on one 12-channel 32^3 layer with a 21^3 kernel,
    ORT took 16x PyTorch's time with length 48 and 7.7x with length 64 (benchmarks/README.md, "Export").
    """
    with engine_settings(fft_lengths="power-of-two"):
        yield


def load_onnx(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """An onnxruntime CPU session as a function ``[B, C, D, H, W] -> logits``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
