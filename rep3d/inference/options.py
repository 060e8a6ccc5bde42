"""How a :class:`~rep3d.inference.Predictor` runs (:class:`InferenceCfg`) and what it does with its input
(:class:`InputPolicy`): two frozen groups of options, each defaulting to the model's recorded config (``AUTO``).

``Predictor(model, roi_size=..., tta=True, ...)`` still takes every option as a keyword: :func:`split_options` sorts
them into the two groups.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rep3d.errors import Rep3DValueError
from rep3d.presets import DEFAULT_ROI, MODALITY_WINDOWS


class _Auto:
    """Sentinel: take the value from ``model.pretrained_cfg`` (or its documented fallback)."""

    def __repr__(self) -> str:
        return "AUTO"


AUTO: Any = _Auto()

FALLBACK_ROI = DEFAULT_ROI
"""ROI used when neither the argument nor ``model.pretrained_cfg['roi_size']`` gives one (the paper's)."""

FALLBACK_WINDOWS: dict[str, tuple[float, float]] = MODALITY_WINDOWS
"""Intensity window by ``pretrained_cfg['modality']`` when the cfg has no ``intensity_window`` (the paper's
recipe: CT [-125, 275], MRI [0, 1000])."""

PRECISIONS = ("fp32", "bf16")
"""Values of ``Predictor(precision=...)`` and ``rep3d predict/evaluate --precision``."""


@dataclass(frozen=True)
class InferenceCfg:
    """How the sliding window runs: window, blending, device, precision, test-time augmentation.

    Attributes:
        roi_size: window size ``(D, H, W)`` in voxels of the resampled grid; must be divisible by the network's
            stride (``model.stride`` when it is an int). ``AUTO``: the model cfg's, else
            :data:`rep3d.presets.DEFAULT_ROI` (96³).
        overlap: fraction of overlap between neighbouring windows, in ``[0, 1)``.
        blend: ``"gaussian"`` or ``"constant"`` weighting of overlapping windows.
        sw_batch_size: windows per forward pass.
        device: where the model runs (``None`` / ``"auto"``: ``"cuda"`` if available, else ``"cpu"``).
        stitch_device: where windows are accumulated: ``"auto"`` (the model's device unless the full-volume
            buffers would take more than a third of its free memory, then ``"cpu"``), or a device.
        amp: autocast (float16 on CUDA, bfloat16 on CPU); probabilities are accumulated in float32.
        precision: ``"fp32"`` (default) or ``"bf16"``: bfloat16 autocast on any device (convolutions in bfloat16,
            activations stored in bfloat16; the FFT engine's transforms and the softmax stay float32). Faster on CPUs
            with AVX-512 BF16 or AMX (``benchmarks/model_forward.py``); a test checks that it moves the phantom
            Dice by at most 0.002. Not together with ``amp``.
        channels_last: run a copy of the model prepared by :func:`rep3d.models.optimize_for_inference`
            (``channels_last_3d`` layout, format-keeping instance norms: the same function, faster on CPU).
            ``AUTO``: on for rep3d's own networks on CPU.
        tta: average the softmax over all flips of ``tta_axes`` (2^len(tta_axes) forward passes per window).
            Only flips the weights were trained to be invariant to are used: training records the flip axes of its
            augmentation in ``pretrained_cfg['tta_flip_axes']`` (``[]``: trained without flips). TTA is refused
            for a model trained without flips (flipping a model that never saw mirrored anatomy lowers Dice) and
            for a model whose cfg does not record it. Flips along the left-right axis swap the channels of
            left/right class pairs found in ``class_names`` (``left_kidney`` <-> ``right_kidney``).
        tta_axes: spatial axes (0, 1, 2 of the oriented grid) flipped by ``tta``; ``AUTO``: all the recorded ones,
            otherwise a subset of them.
        progress: tqdm bar over the windows of each volume.
    """

    roi_size: Sequence[int] | int = AUTO
    overlap: float = 0.5
    blend: str = "gaussian"
    sw_batch_size: int = 1
    device: str | torch.device | None = None
    stitch_device: str | torch.device = "auto"
    amp: bool = False
    precision: str = "fp32"
    channels_last: bool = AUTO
    tta: bool = False
    tta_axes: Sequence[int] = AUTO
    progress: bool = False


@dataclass(frozen=True)
class InputPolicy:
    """What happens to an input before and around the network: its grid, intensities, crop and checks. Every
    ``AUTO`` comes from the model cfg (``spacing`` -> ``None``, keep the input's spacing; ``orientation`` ->
    ``"RAS"``; ``intensity_window`` -> by ``modality`` (:data:`FALLBACK_WINDOWS`), else ``None``: intensities used
    as they are; ``class_names`` -> ``None``). Pass ``None`` explicitly to switch a step off.

    Attributes:
        spacing: target voxel size (mm) along the oriented axes, or ``None``.
        orientation: axis codes (``"RAS"``) or ``None``.
        intensity_window: ``(lo, hi)`` mapped linearly to ``[0, 1]`` with clipping, or ``None``.
        class_names: names of the output channels (index = label value).
        crop_foreground: segment only the box around the foreground (:func:`rep3d.inference.foreground_box`: voxels
            above the intensity window's floor, the body of a CT), as training crops each volume; every voxel
            outside it is background. ``AUTO``: on when an intensity window is applied (rep3d-trained models), off
            for nnU-Net normalisations and raw intensities.
        nonfinite: what to do with NaN / infinite input voxels, which the FFT engine would spread over whole
            feature maps (an all-background result): ``"error"`` (default) refuses the volume with
            :class:`~rep3d.inference.InputError`; a finite number replaces them with that value (in the input's
            units, before the intensity window) and warns with :class:`~rep3d.inference.NonFiniteInputWarning`. A
            volume with no finite voxel is always refused.
        allow_out_of_distribution: segment an input that is far outside the model's recorded training distribution
            (``pretrained_cfg['training_distribution']``: an all-air scan, MR through a CT model, a much coarser
            spacing, ...) with an :class:`~rep3d.inference.OutOfDistributionWarning` instead of refusing it with
            :class:`~rep3d.inference.OutOfDistributionError`. Either way the comparison is in the prediction's
            ``report``.
    """

    spacing: Sequence[float] | None = AUTO
    orientation: str | None = AUTO
    intensity_window: tuple[float, float] | None = AUTO
    class_names: Sequence[str] | None = AUTO
    crop_foreground: bool = AUTO
    nonfinite: str | float = "error"
    allow_out_of_distribution: bool = False


INFERENCE_OPTIONS = tuple(f.name for f in dataclasses.fields(InferenceCfg))
INPUT_OPTIONS = tuple(f.name for f in dataclasses.fields(InputPolicy))


def split_options(config: InferenceCfg | None, inputs: InputPolicy | None, options: Mapping[str, Any],
                  caller: str = "Predictor") -> tuple[InferenceCfg, InputPolicy]:
    """``config`` and ``inputs`` (defaults when ``None``) with the keyword ``options`` put in their group; an option
    of neither group is a ``TypeError``, as for any unknown keyword argument."""
    unknown = sorted(set(options) - set(INFERENCE_OPTIONS) - set(INPUT_OPTIONS))
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
    config = dataclasses.replace(config or InferenceCfg(), **{k: v for k, v in options.items()
                                                               if k in INFERENCE_OPTIONS})
    inputs = dataclasses.replace(inputs or InputPolicy(), **{k: v for k, v in options.items() if k in INPUT_OPTIONS})
    return config, inputs


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` / ``"auto"`` -> cuda if available else cpu; otherwise the device named, refused (with the fix) when
    torch does not know it or it is not here."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise Rep3DValueError(f"device {device!r} is not a device torch knows; use cpu, cuda, cuda:N or auto") from err
    if device.type not in ("cpu", "cuda"):
        raise Rep3DValueError(f"device {str(device)!r} is not supported by rep3d inference; use cpu, cuda, cuda:N "
                              "or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Rep3DValueError(f"device {device} requested but CUDA is not available here; use device='cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise Rep3DValueError(f"device {device} requested but there are {torch.cuda.device_count()} CUDA device(s); "
                              f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return device


def checked_precision(value: str, amp: bool, device: torch.device | None = None) -> str:
    """``value`` if it is one of :data:`PRECISIONS`, not combined with ``amp``, and (on a CPU ``device``) one this
    CPU computes natively: without oneDNN's bfloat16 kernels PyTorch emulates bfloat16 convolutions, which ran
    about 100x slower than float32 on an AVX2-only CPU (``rep3d_tiny`` at 64³: 59 s against 0.54 s)."""
    if value not in PRECISIONS:
        raise Rep3DValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
    if amp and value != "fp32":
        raise Rep3DValueError(f"amp=True (float16 on CUDA, bfloat16 on CPU) and precision={value!r} both choose the "
                              "autocast dtype; pass only one of them")
    if device is not None and device.type == "cpu" and (value == "bf16" or amp):
        from rep3d.layers.onednn_conv import onednn_supports

        if not onednn_supports(torch.bfloat16):
            asked = "precision='bf16'" if value == "bf16" else "amp=True (bfloat16 on CPU)"
            raise Rep3DValueError(
                f"{asked} on this CPU: it has no bfloat16 convolution kernels (oneDNN needs AVX-512 BW/VL/DQ or "
                "AVX-NE-CONVERT; AVX512-BF16 or AMX to be fast), so PyTorch would emulate them, about 100x slower "
                "than float32. Use precision 'fp32' (the default) here, or run bf16 on a CPU with AVX512-BF16/AMX "
                "(Linux: lscpu | grep bf16) or on a GPU")
    return value


def nonfinite_policy(value: str | float) -> str | float:
    """``"error"`` or the finite number that replaces NaN / inf voxels."""
    if isinstance(value, str) and value == "error":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not math.isfinite(number):
        raise Rep3DValueError(f"nonfinite must be 'error' or a finite number to put in place of NaN / inf voxels, "
                              f"got {value!r}")
    return number


def triple(name: str, value: Any, kind: type) -> tuple:
    """``value`` (one number or three) as three ``kind`` values, one per spatial axis."""
    vals = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value,) * 3
    if len(vals) != 3:
        raise Rep3DValueError(f"{name} must have 3 values (one per spatial axis), got {value!r}")
    try:
        return tuple(kind(v) for v in vals)
    except (TypeError, ValueError) as err:
        raise Rep3DValueError(f"{name} must be 3 numbers, got {value!r}") from err


def tta_axes(name: str, recorded: Sequence[int] | None, requested: Any) -> tuple[int, ...]:
    """The flip axes TTA may use: those training recorded (``tta_flip_axes`` of the model ``name``), or the
    requested subset of them."""
    if recorded is None:
        raise Rep3DValueError(
            f"tta: the config of {name} does not record which flips its training used (pretrained_cfg key "
            "'tta_flip_axes'), and flip TTA on a model trained without flips lowers Dice (anatomy is not "
            "mirror-symmetric); run without --tta, or, if it was trained with flips along axes A, set "
            "model.pretrained_cfg['tta_flip_axes'] = [A, ...]"
        )
    allowed = tuple(int(a) for a in recorded)
    if not allowed:
        raise Rep3DValueError(
            f"tta: {name} was trained without flips (tta_flip_axes: []), so flip TTA would lower its Dice "
            "(anatomy is not mirror-symmetric); run without --tta (tta=False)"
        )
    axes = allowed if requested is AUTO else tuple(int(a) for a in requested)
    if any(a not in (0, 1, 2) for a in axes):
        raise Rep3DValueError(f"tta_axes must be spatial axes among 0, 1, 2, got {requested}")
    if not set(axes) <= set(allowed):
        raise Rep3DValueError(f"tta_axes {axes}: {name} was trained with flips along axes {allowed} only; flips "
                              f"along other axes lower its Dice: use a subset of {allowed}")
    return axes


def lateral_permutation(class_names: Sequence[str] | None) -> list[int] | None:
    """Channel permutation that swaps left/right classes (``left_kidney`` <-> ``right_kidney``, ``x_L`` <->
    ``x_R``, ...); ``None`` when there are no such pairs."""
    if not class_names:
        return None
    swap = {"left": "right", "right": "left", "l": "r", "r": "l", "lt": "rt", "rt": "lt"}

    def mirrored(name: str) -> str:
        parts = re.split(r"([\s_\-.]+)", name)
        return "".join(_match_case(swap.get(p.lower(), p), p) for p in parts)

    index = {n: k for k, n in enumerate(class_names)}
    perm = [index.get(mirrored(n), k) for k, n in enumerate(class_names)]
    return perm if perm != list(range(len(class_names))) else None


def _match_case(new: str, old: str) -> str:
    return new.upper() if old.isupper() else new.title() if old.istitle() else new
