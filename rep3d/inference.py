"""Segment whole volumes: :class:`Predictor` (NIfTI / array in, label map on the input's own grid out) and the
``rep3d predict`` sub-command.

Pipeline (MONAI): load (``LoadImage``: NIfTI ``.nii`` / ``.nii.gz`` and whatever else MONAI's readers
take) -> ``Orientation`` -> ``Spacing`` (bilinear) -> ``ScaleIntensityRange`` (window -> [0, 1], clipped)
-> sliding-window inference (``monai.inferers.sliding_window_inference``; a volume smaller than the ROI is
padded by it with 0, the window's lower bound) -> optional flip test-time augmentation -> softmax -> back to
the input grid (bilinear resampling of the probabilities, slab by slab) -> argmax. The label map has exactly
the input's shape and affine.

Arrays use MONAI's channel-first NIfTI order ``[C, X, Y, Z]`` (``X, Y, Z`` = the file's voxel axes).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import itertools
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "AUTO",
    "FALLBACK_WINDOWS",
    "InputError",
    "Prediction",
    "Predictor",
    "build_model",
    "model_grid_affine",
    "output_stem",
]


class _Auto:
    """Sentinel: take the value from ``model.pretrained_cfg`` (or its documented fallback)."""

    def __repr__(self) -> str:
        return "AUTO"


AUTO: Any = _Auto()

FALLBACK_ROI = (96, 96, 96)
"""ROI used when neither the argument nor ``model.pretrained_cfg['roi_size']`` gives one (the paper's)."""

FALLBACK_WINDOWS: dict[str, tuple[float, float]] = {"CT": (-125.0, 275.0), "MRI": (0.0, 1000.0)}
"""Intensity window by ``pretrained_cfg['modality']`` when the cfg has no ``intensity_window`` (DESIGN §4)."""

NIFTI_SUFFIXES = (".nii.gz", ".nii")


class InputError(ValueError):
    """An input cannot be segmented (unreadable, not 3-D, wrong channel count); says what was expected."""


@dataclass
class Prediction:
    """Result of :class:`Predictor` on one volume, on the input's own voxel grid.

    ``label``: ``[X, Y, Z]`` uint8 (uint16 above 255 classes); ``affine``: ``[4, 4]`` voxel -> world (the
    input's); ``probabilities``: ``[K, X, Y, Z]`` float32 softmax or ``None``; ``header``: the input NIfTI
    header (``None`` for arrays / other formats); ``class_names``: from the model cfg, if any.
    """

    label: np.ndarray
    affine: np.ndarray
    probabilities: np.ndarray | None = None
    header: Any = None
    class_names: Sequence[str] | None = None
    source: str | None = None

    def save(self, path: str | Path) -> Path:
        """Write the label map as NIfTI, keeping the input header (qform, sform, units) where there is one."""
        img = _nifti_like(self.label, self.affine, self.header, intent="label")
        return _atomic_save(img, path)

    def save_probabilities(self, path: str | Path) -> Path:
        """Write the softmax as a 4-D float32 NIfTI ``[X, Y, Z, K]`` (classes last) on the input grid."""
        if self.probabilities is None:
            raise ValueError("no probabilities: call the Predictor with probabilities=True")
        data = np.moveaxis(self.probabilities.astype(np.float32, copy=False), 0, -1)
        img = _nifti_like(data, self.affine, self.header, intent="none")
        return _atomic_save(img, path)


def _nifti_like(data: np.ndarray, affine: np.ndarray, header: Any, intent: str):
    import nibabel as nib

    if isinstance(header, nib.Nifti1Header):
        klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        hdr = header.copy()
        hdr.set_data_dtype(data.dtype)
        hdr["cal_min"], hdr["cal_max"] = 0, 0
        hdr.set_intent(intent)
        hdr["descrip"] = b"rep3d prediction"
        hdr["scl_slope"], hdr["scl_inter"] = 1.0, 0.0
        if data.ndim == 4:  # the 4th axis holds classes, not time
            hdr.set_xyzt_units(xyz=hdr.get_xyzt_units()[0], t="unknown")
            hdr["pixdim"][4] = 1.0
        img = klass(data, None, header=hdr)  # affine None: keep the header's qform and sform as they are
        if not np.allclose(img.header.get_best_affine(), affine, atol=1e-4):
            raise AssertionError("header affine does not match the prediction's affine")  # pragma: no cover
        return img
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_intent(intent)
    return img


def _atomic_save(img, path: str | Path) -> Path:
    """Save via a temporary name in the same folder, so a crash never leaves a half-written output."""
    import nibabel as nib

    path = Path(path)
    name = path.name
    suffix = next((s for s in NIFTI_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        raise ValueError(f"output must end in .nii or .nii.gz, got {path}")
    tmp = path.with_name(f".{name[: -len(suffix)]}.{os.getpid()}.tmp{suffix}")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _lateral_permutation(class_names: Sequence[str] | None) -> list[int] | None:
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


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available here; use device='cpu'")
    return device


def model_grid_affine(orientation: str, spacing: Sequence[float]) -> np.ndarray:
    """Affine ``[4, 4]`` of an array whose axes already follow ``orientation`` (e.g. ``"RAS"``, ``"LPS"``)
    with voxel size ``spacing``: the grid on which ``Orientation`` and ``Spacing`` change nothing."""
    axis = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
    codes = orientation.upper()
    if len(codes) != 3 or sorted(axis[c][0] for c in codes if c in axis) != [0, 1, 2]:
        raise ValueError(f"orientation must be 3 axis codes like 'RAS' or 'LPS', got {orientation!r}")
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for i, (code, step) in enumerate(zip(codes, spacing, strict=True)):
        world, sign = axis[code]
        affine[world, i] = sign * float(step)
    return affine


def _triple(name: str, value: Any, kind: type) -> tuple:
    vals = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value,) * 3
    if len(vals) != 3:
        raise ValueError(f"{name} must have 3 values (one per spatial axis), got {value!r}")
    try:
        return tuple(kind(v) for v in vals)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be 3 numbers, got {value!r}") from err


class Predictor:
    """Sliding-window segmentation of whole volumes by a model ``[B, C, D, H, W] -> [B, K, D, H, W]``.

    Every ``AUTO`` argument comes from ``model.pretrained_cfg`` (rep3d keys) and otherwise falls back to:
    ``roi_size`` -> ``(96, 96, 96)``; ``spacing`` -> ``None`` (keep the input's spacing); ``orientation`` ->
    ``"RAS"``; ``intensity_window`` -> by ``modality`` (:data:`FALLBACK_WINDOWS`), else ``None`` (intensities
    used as they are); ``class_names`` -> ``None``. Pass ``None`` explicitly to switch a step off.

    Args:
        model: the network; moved to ``device`` and put in eval mode.
        roi_size: window size ``(D, H, W)`` in voxels of the resampled grid; must be divisible by the
            network's stride (``model.stride`` when it is an int).
        overlap: fraction of overlap between neighbouring windows, in ``[0, 1)``.
        blend: ``"gaussian"`` or ``"constant"`` weighting of overlapping windows.
        sw_batch_size: windows per forward pass.
        device: where the model runs (``"cuda"`` if available, else ``"cpu"``).
        stitch_device: where windows are accumulated: ``"auto"`` (the model's device unless the full-volume
            buffers would take more than a third of its free memory, then ``"cpu"``), or a device.
        amp: autocast (float16 on CUDA, bfloat16 on CPU); probabilities are accumulated in float32.
        tta: average the softmax over all flips of ``tta_axes`` (2^len(tta_axes) forward passes per window).
            Flips along the left-right axis swap the channels of left/right class pairs found in
            ``class_names`` (``left_kidney`` <-> ``right_kidney``) so lateralised classes stay correct.
        tta_axes: spatial axes (0, 1, 2 of the oriented grid) flipped by ``tta``.
        spacing: target voxel size (mm) along the oriented axes, or ``None``.
        orientation: axis codes (``"RAS"``) or ``None``.
        intensity_window: ``(lo, hi)`` mapped linearly to ``[0, 1]`` with clipping, or ``None``.
        class_names: names of the output channels (index = label value).
        progress: tqdm bar over the windows of each volume.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        roi_size: Sequence[int] | int = AUTO,
        overlap: float = 0.5,
        blend: str = "gaussian",
        sw_batch_size: int = 1,
        device: str | torch.device | None = None,
        stitch_device: str | torch.device = "auto",
        amp: bool = False,
        tta: bool = False,
        tta_axes: Sequence[int] = (0, 1, 2),
        spacing: Sequence[float] | None = AUTO,
        orientation: str | None = AUTO,
        intensity_window: tuple[float, float] | None = AUTO,
        class_names: Sequence[str] | None = AUTO,
        progress: bool = False,
    ) -> None:
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        if roi_size is AUTO:
            roi_size = cfg.get("roi_size") or FALLBACK_ROI
        self.roi_size = _triple("roi_size", roi_size, int)
        stride = getattr(model, "stride", None)
        self.size_divisor = stride if isinstance(stride, int) and stride > 0 else 1
        bad = [r for r in self.roi_size if r < 1 or r % self.size_divisor]
        if bad:
            up = tuple(-(-max(r, 1) // self.size_divisor) * self.size_divisor for r in self.roi_size)
            raise ValueError(
                f"roi_size {self.roi_size} must be positive multiples of the network stride "
                f"{self.size_divisor}; try roi_size={up}"
            )
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if blend not in ("gaussian", "constant"):
            raise ValueError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
        if int(sw_batch_size) < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        self.overlap, self.blend, self.sw_batch_size = float(overlap), blend, int(sw_batch_size)

        # axis_order "zyx": the model's axes are the (oriented) file axes reversed, as nnU-Net reads NIfTI; the cfg's
        # roi_size and spacing are then given in the model's axis order
        self.axis_order = str(cfg.get("axis_order") or "xyz")
        if self.axis_order not in ("xyz", "zyx"):
            raise ValueError(f"pretrained_cfg axis_order must be 'xyz' or 'zyx', got {self.axis_order!r}")
        self.spacing = cfg.get("spacing") if spacing is AUTO else spacing
        if self.spacing is not None:
            self.spacing = _triple("spacing", self.spacing, float)
            if spacing is AUTO and self.axis_order == "zyx":
                self.spacing = self.spacing[::-1]
            if min(self.spacing) <= 0:
                raise ValueError(f"spacing must be positive (mm), got {self.spacing}")
        self.orientation = (cfg.get("orientation") or "RAS") if orientation is AUTO else orientation
        if self.orientation == "native":  # keep the file's own voxel axes (nnU-Net's readers do)
            self.orientation = None
        # per-channel normalisation recorded by rep3d.integrations.nnunet; it replaces the intensity window
        self.normalization = cfg.get("normalization") if intensity_window is AUTO else None
        if self.normalization is not None:
            intensity_window = None
            _check_normalization(self.normalization, getattr(model, "in_chans", None))
        if intensity_window is AUTO:
            modality = str(cfg.get("modality", "")).upper()
            intensity_window = cfg.get("intensity_window") or FALLBACK_WINDOWS.get(modality)
        if intensity_window is not None:
            lo, hi = map(float, intensity_window)
            if not hi > lo:
                raise ValueError(f"intensity_window must be (lo, hi) with hi > lo, got {intensity_window}")
            intensity_window = (lo, hi)
        self.intensity_window = intensity_window
        if class_names is AUTO:
            class_names = cfg.get("class_names") or None
        self.class_names = list(class_names) if class_names is not None else None
        self.in_chans = getattr(model, "in_chans", None) or cfg.get("in_chans")
        self.num_classes = getattr(model, "num_classes", None) or cfg.get("num_classes")

        self.device = _resolve_device(device)
        self.stitch_device = stitch_device
        self.amp, self.tta, self.progress = bool(amp), bool(tta), bool(progress)
        self.tta_axes = tuple(int(a) for a in tta_axes)
        if any(a not in (0, 1, 2) for a in self.tta_axes):
            raise ValueError(f"tta_axes must be spatial axes among 0, 1, 2, got {tta_axes}")
        self.model = model.to(self.device).eval()
        self.forward_calls = 0  # model forwards made so far (for tests and logs)

    # ------------------------------------------------------------------------------------------------
    def __call__(self, data: Any, affine: Any = None, *, probabilities: bool = False) -> Prediction:
        """Segment one volume.

        Args:
            data: a file path (NIfTI or any format MONAI's ``LoadImage`` reads), or an array / tensor
                ``[C, X, Y, Z]`` (a MONAI ``MetaTensor`` brings its own affine).
            affine: ``[4, 4]`` voxel -> world (mm) for an array input. ``None`` means the array is already on
                the model's grid (spacing ``self.spacing``, orientation ``self.orientation``): nothing is
                resampled.
            probabilities: also return the softmax on the input grid (``[K, X, Y, Z]`` float32).

        Returns:
            :class:`Prediction` with ``label`` of exactly the input's spatial shape and ``affine``.

        Raises:
            InputError: unreadable file, not a 3-D volume, or a channel count other than the model's.
        """
        image, header, source = self._load(data, affine)
        in_affine = image.affine.detach().cpu().numpy().astype(np.float64)
        in_shape = tuple(int(s) for s in image.shape[1:])
        x = self._preprocess(image)
        grid_affine = x.affine.detach().cpu().numpy().astype(np.float64)
        probs = self._infer(x.as_tensor().float())  # [K, *grid] on the stitch device
        label, prob_out = _to_input_grid(probs, grid_affine, in_affine, in_shape, keep=probabilities)
        return Prediction(label, in_affine, prob_out, header, self.class_names, source)

    # ------------------------------------------------------------------------------------------------
    def _load(self, data: Any, affine: Any):
        from monai.data import MetaTensor

        header, source = None, None
        if isinstance(data, (str, os.PathLike)):
            path = Path(data)
            source = str(path)
            if not path.is_file():
                raise InputError(f"{path}: no such file")
            try:
                from monai.transforms import LoadImage

                image = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)(str(path))
            except Exception as err:  # noqa: BLE001 - any reader failure is the user's file
                raise InputError(f"{path}: cannot read it as an image ({type(err).__name__}: {err})") from err
            if path.name.endswith(NIFTI_SUFFIXES):
                import nibabel as nib

                header = nib.load(str(path)).header
            what = str(path)
        else:
            tensor = data if isinstance(data, torch.Tensor) else torch.as_tensor(np.asarray(data))
            if tensor.ndim != 4:
                raise InputError(
                    f"expected an array [C, X, Y, Z] (channel first, 3 spatial axes), got shape "
                    f"{tuple(tensor.shape)}; add a channel axis with x[None] for a single-channel volume"
                )
            if affine is None and isinstance(data, MetaTensor):
                affine = data.affine
            if affine is None:
                affine = model_grid_affine(self.orientation or "RAS", self.spacing or (1.0, 1.0, 1.0))
            affine = torch.as_tensor(np.asarray(affine, dtype=np.float64))
            if affine.shape != (4, 4):
                raise InputError(f"affine must be 4x4, got shape {tuple(affine.shape)}")
            image = MetaTensor(torch.as_tensor(tensor, dtype=torch.float32).detach().cpu(), affine=affine)
            what = "input array"
        spatial = tuple(image.shape[1:])
        if image.ndim != 4:
            raise InputError(
                f"{what}: expected a 3-D volume, got a {image.ndim - 1}-D image of shape {spatial}; "
                "rep3d models segment 3-D volumes"
            )
        if min(spatial) < 2:
            raise InputError(f"{what}: expected a 3-D volume, got shape {spatial} (a single slice)")
        if self.in_chans is not None and image.shape[0] != self.in_chans:
            raise InputError(
                f"{what}: the model expects {self.in_chans} channel(s), the input has {image.shape[0]} "
                f"(shape [C, X, Y, Z] = {tuple(image.shape)})"
            )
        return image, header, source

    def _preprocess(self, image):
        from monai.transforms import Orientation, ScaleIntensityRange, Spacing

        x = image
        if self.orientation is not None:
            x = Orientation(axcodes=self.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S")))(x)
        if self.normalization is not None:  # nnU-Net normalises before it resamples
            x = x.clone()
            for c, norm in enumerate(self.normalization):
                x[c] = _normalise_channel(x[c], norm)
        if self.spacing is not None:
            x = Spacing(pixdim=self.spacing, mode="bilinear", padding_mode="border")(x)
        if self.intensity_window is not None:
            lo, hi = self.intensity_window
            x = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(x)
        return x

    def _stitch_device_for(self, spatial: Sequence[int]) -> torch.device:
        if str(self.stitch_device) != "auto":
            return torch.device(self.stitch_device)
        if self.device.type != "cuda":
            return self.device
        classes = self.num_classes or 16
        padded = [max(s, r) for s, r in zip(spatial, self.roi_size, strict=True)]
        need = 4 * (classes + 1) * math.prod(padded)  # float32 output + weight-count buffers
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.device if need < free / 3 else torch.device("cpu")

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        """``x [C, *grid]`` (normalised) -> softmax ``[K, *grid]`` float32 on the stitch device."""
        from monai.inferers import sliding_window_inference

        stitch = self._stitch_device_for(x.shape[1:])
        perm = None
        lr_axis = None
        if self.tta and self.orientation is not None:
            lr_axis = next((i for i, c in enumerate(self.orientation.upper()) if c in "LR"), None)
            perm = _lateral_permutation(self.class_names)
        flips = [()]
        if self.tta:
            flips = [
                c for n in range(len(self.tta_axes) + 1) for c in itertools.combinations(self.tta_axes, n)
            ]
        use_amp = self.amp and self.device.type in ("cuda", "cpu")
        amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16

        def forward(window: torch.Tensor) -> torch.Tensor:
            total = None
            for axes in flips:
                dims = [a + 2 for a in axes]
                inp = torch.flip(window, dims) if dims else window
                ctx = (
                    torch.autocast(self.device.type, dtype=amp_dtype) if use_amp else contextlib.nullcontext()
                )
                with ctx:
                    out = self.model(inp)
                self.forward_calls += 1
                if isinstance(out, (list, tuple)):
                    out = out[0]
                if (
                    out.ndim != 5
                    or out.shape[0] != inp.shape[0]
                    or tuple(out.shape[2:]) != tuple(inp.shape[2:])
                ):
                    raise RuntimeError(
                        f"the model must map [B, C, D, H, W] to logits [B, K, D, H, W]; for input "
                        f"{tuple(inp.shape)} it returned {tuple(out.shape)}"
                    )
                prob = torch.softmax(out.float(), dim=1)
                if dims:
                    prob = torch.flip(prob, dims)
                    if perm is not None and lr_axis in axes and prob.shape[1] == len(perm):
                        prob = prob[:, perm]
                total = prob if total is None else total + prob
            return total / len(flips)

        if self.axis_order == "zyx":
            x = x.permute(0, 3, 2, 1)
        with torch.no_grad():
            out = sliding_window_inference(
                x[None],
                roi_size=self.roi_size,
                sw_batch_size=self.sw_batch_size,
                predictor=forward,
                overlap=self.overlap,
                mode=self.blend,
                padding_mode="constant",
                cval=0.0,
                sw_device=self.device,
                device=stitch,
                progress=self.progress,
            )
        return out[0].permute(0, 3, 2, 1) if self.axis_order == "zyx" else out[0]


NORMALIZATION_SCHEMES = ("clip_zscore", "zscore", "none")


def _check_normalization(norm: Any, in_chans: int | None) -> None:
    if not isinstance(norm, Sequence) or any(not isinstance(n, dict) or n.get("scheme") not in NORMALIZATION_SCHEMES
                                             for n in norm):
        raise ValueError(f"pretrained_cfg normalization must be a list of {{'scheme': one of "
                         f"{NORMALIZATION_SCHEMES}, ...}} per input channel, got {norm!r}")
    if in_chans is not None and len(norm) != in_chans:
        raise ValueError(f"pretrained_cfg normalization has {len(norm)} entries for a model with {in_chans} channels")


def _normalise_channel(x: torch.Tensor, norm: dict) -> torch.Tensor:
    """One channel ``[X, Y, Z]`` normalised as nnU-Net does (CTNormalization, ZScoreNormalization, none)."""
    if norm["scheme"] == "clip_zscore":
        lo, hi = norm["clip"]
        return (x.clamp(lo, hi) - norm["mean"]) / max(float(norm["std"]), 1e-8)
    if norm["scheme"] == "zscore":
        x64 = x.double()
        return ((x64 - x64.mean()) / max(float(x64.std(unbiased=False)), 1e-8)).float()
    return x


def _to_input_grid(
    probs: torch.Tensor,
    grid_affine: np.ndarray,
    in_affine: np.ndarray,
    in_shape: tuple[int, int, int],
    *,
    keep: bool,
    slab_voxels: int = 1 << 22,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample softmax ``probs [K, *grid]`` (voxel -> world ``grid_affine``) bilinearly onto the input grid
    (``in_affine``, ``in_shape``) and take the argmax; slab by slab along the first axis to bound memory.
    Returns ``(label [X, Y, Z], probabilities [K, X, Y, Z] or None)``."""
    import torch.nn.functional as F

    num_classes = probs.shape[0]
    label_dtype = np.uint8 if num_classes <= 256 else np.uint16
    if tuple(probs.shape[1:]) == in_shape and np.allclose(grid_affine, in_affine, atol=1e-6):
        label = probs.argmax(0).cpu().numpy().astype(label_dtype)
        return label, (probs.cpu().numpy() if keep else None)
    # input voxel (i, j, k) -> grid voxel coordinates
    to_grid = torch.as_tensor(np.linalg.inv(grid_affine) @ in_affine, dtype=torch.float64)
    grid_shape = torch.tensor(probs.shape[1:], dtype=torch.float64)
    X, Y, Z = in_shape
    slab = max(1, slab_voxels // (Y * Z))
    label = np.empty(in_shape, dtype=label_dtype)
    out_probs = np.empty((num_classes, *in_shape), dtype=np.float32) if keep else None
    jj, kk = torch.meshgrid(
        torch.arange(Y, dtype=torch.float64), torch.arange(Z, dtype=torch.float64), indexing="ij"
    )
    src = probs[None].float()
    for start in range(0, X, slab):
        ii = torch.arange(start, min(X, start + slab), dtype=torch.float64)
        ijk = torch.stack(
            [ii[:, None, None].expand(-1, Y, Z), jj.expand(len(ii), -1, -1), kk.expand(len(ii), -1, -1)],
            dim=-1,
        )
        coords = ijk @ to_grid[:3, :3].T + to_grid[:3, 3]
        # grid_sample (align_corners=True): -1 / +1 = centres of the first / last voxel; last dim is (W, H, D)
        norm = 2.0 * coords / (grid_shape - 1).clamp(min=1) - 1.0
        grid = norm.flip(-1)[None].to(dtype=torch.float32, device=src.device)
        out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
        label[start : start + len(ii)] = out.argmax(0).cpu().numpy().astype(label_dtype)
        if out_probs is not None:
            out_probs[:, start : start + len(ii)] = out.cpu().numpy()
    return label, out_probs


# ----------------------------------------------------------------------------------------------------
# ``rep3d predict``


def build_model(name: str, checkpoint: str | None = None) -> nn.Module:
    """The CLI's model: ``rep3d.create_model(name, pretrained=not checkpoint, checkpoint_path=...)``."""
    try:
        from rep3d import create_model
    except ImportError as err:
        raise RuntimeError("this rep3d installation has no model zoo (rep3d.create_model)") from err
    return create_model(name, pretrained=not checkpoint, checkpoint_path=checkpoint)


def output_stem(path: str | Path) -> str:
    """File name without ``.nii.gz`` / ``.nii`` (or its last suffix): ``case_01.nii.gz`` -> ``case_01``."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="registered model name, e.g. rep3d_tiny.phantom")
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="volumes (.nii / .nii.gz) or folders of them"
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUTDIR", help="folder for <name>_seg.nii.gz"
    )
    parser.add_argument(
        "--checkpoint", metavar="FILE", help="load these weights instead of the pretrained ones"
    )
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if available)"
    )
    parser.add_argument(
        "--stitch-device",
        default="auto",
        help="where windows are stitched: auto (the device unless the volume is too large for it), cpu, cuda",
    )
    parser.add_argument(
        "--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1) (default 0.5)"
    )
    parser.add_argument("--sw-batch-size", type=int, default=1, help="windows per forward pass (default 1)")
    parser.add_argument(
        "--roi-size", type=int, nargs=3, metavar=("D", "H", "W"), help="override the cfg's ROI"
    )
    parser.add_argument("--tta", action="store_true", help="average over flips (8x slower)")
    parser.add_argument(
        "--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU)"
    )
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also write <name>_prob.nii.gz: float32 softmax, classes last",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    # hook for tests and custom models: build the model with MODULE:FUNC(name, checkpoint) instead
    parser.add_argument("--model-factory", help=argparse.SUPPRESS)


def _expand_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    files, errors = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
            if not found:
                errors.append((item, "folder holds no .nii / .nii.gz files"))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            errors.append((item, "no such file or folder"))
    return files, errors


def _load_factory(spec: str) -> Callable[..., nn.Module]:
    module, _, func = spec.partition(":")
    if not module or not func:
        raise ValueError(f"--model-factory must be MODULE:FUNCTION, got {spec!r}")
    return getattr(importlib.import_module(module), func)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    def report(name: str, message: str) -> None:
        where = "" if message.startswith(name) else f"{name}: "
        tqdm.write(f"rep3d predict: error: {where}{message}", file=sys.stderr)

    outdir = Path(args.output)
    files, errors = _expand_inputs(args.inputs)
    jobs: list[tuple[Path, Path, Path | None]] = []
    claimed: dict[Path, Path] = {}
    for path in files:
        stem = output_stem(path)
        seg = outdir / f"{stem}_seg.nii.gz"
        prob = outdir / f"{stem}_prob.nii.gz" if args.probabilities else None
        if seg in claimed:
            errors.append((str(path), f"same output name {seg.name} as {claimed[seg]}; rename one of them"))
            continue
        claimed[seg] = path
        existing = [p for p in (seg, prob) if p is not None and p.exists()]
        if existing and not args.overwrite:
            errors.append((str(path), f"{existing[0]} exists; pass --overwrite to replace it"))
            continue
        jobs.append((path, seg, prob))
    for name, message in errors:
        report(name, message)

    done = 0
    if jobs:
        try:
            factory = _load_factory(args.model_factory) if args.model_factory else build_model
            model = factory(args.model, args.checkpoint)
        except Exception as err:  # noqa: BLE001 - report and stop: nothing can run without a model
            report(args.model, f"cannot build the model: {type(err).__name__}: {err}")
            return 1
        try:
            predictor = Predictor(
                model,
                roi_size=tuple(args.roi_size) if args.roi_size else AUTO,
                overlap=args.overlap,
                sw_batch_size=args.sw_batch_size,
                device=args.device,
                stitch_device=args.stitch_device,
                amp=args.amp,
                tta=args.tta,
                progress=not args.quiet,
            )
        except ValueError as err:
            print(f"rep3d predict: error: {err}", file=sys.stderr)
            return 1
        outdir.mkdir(parents=True, exist_ok=True)
        for path, seg, prob in tqdm(jobs, desc="volumes", unit="vol", disable=args.quiet):
            try:
                pred = predictor(path, probabilities=prob is not None)
                pred.save(seg)
                if prob is not None:
                    pred.save_probabilities(prob)
            except Exception as err:  # noqa: BLE001 - one bad file must not stop the others
                if isinstance(err, torch.cuda.OutOfMemoryError):
                    message = (
                        f"out of GPU memory; try --stitch-device cpu, --sw-batch-size 1 or --amp ({err})"
                    )
                else:
                    message = str(err) if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
                report(str(path), message)
                errors.append((str(path), message))
                continue
            done += 1
            if args.quiet:
                continue
            tqdm.write(f"{path} -> {seg}")
    summary = f"rep3d predict: segmented {done} volume(s) into {outdir}"
    if errors:
        summary += f"; {len(errors)} failed: " + ", ".join(Path(name).name for name, _ in errors)
    print(summary, file=sys.stderr)
    return 1 if errors else 0
