"""Segment whole volumes: :class:`Predictor` (NIfTI / array in, label map on the input's own grid out).

Pipeline (MONAI): load (:func:`rep3d.inference.io.load_volume`) -> the shared preprocessing
(:func:`rep3d.inference.preprocess.model_space_transforms`: orientation, spacing, intensity window)
-> sliding-window inference (a volume smaller than the ROI is padded with 0, the window's lower bound)
-> optional flip test-time augmentation -> softmax -> back to the input grid (bilinear resampling of the
probabilities, slab by slab) -> argmax. The label map has exactly the input's shape and affine.

Its options come in two groups (:mod:`rep3d.inference.options`): :class:`InferenceCfg` (how the sliding window runs)
and :class:`InputPolicy` (what happens to the input); what it warns about is in :mod:`rep3d.inference.notices`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rep3d.errors import Rep3DValueError
from rep3d.inference.distribution import (
    OutOfDistributionError,
    OutOfDistributionWarning,
    compare,
    scan_statistics,
    spacing_of,
)
from rep3d.inference.io import Prediction, load_volume
from rep3d.inference.model_cfg import ModelConfig, model_config
from rep3d.inference.notices import (
    NonFiniteInputWarning,
    SyntheticWeightsWarning,
    cropped_report,
    replace_nonfinite,
    synthetic_notice,
)
from rep3d.inference.options import (
    AUTO,
    FALLBACK_ROI,
    FALLBACK_WINDOWS,
    PRECISIONS,
    InferenceCfg,
    InputPolicy,
    checked_precision,
    lateral_permutation,
    nonfinite_policy,
    resolve_device,
    split_options,
    triple,
    tta_axes,
)
from rep3d.inference.preprocess import (
    apply_window,
    body_box,
    body_floor,
    check_normalization,
    foreground_box,
    to_model_space,
)
from rep3d.inference.resample import model_grid_affine, to_input_grid

__all__ = ["AUTO", "FALLBACK_ROI", "FALLBACK_WINDOWS", "PRECISIONS", "InferenceCfg", "InputPolicy",
           "NonFiniteInputWarning", "Predictor", "SyntheticWeightsWarning", "resolve_device", "synthetic_notice"]


def _is_rep3d_network(model: nn.Module) -> bool:
    """Whether ``model`` is one of rep3d's networks, whose layers all accept ``channels_last_3d`` input."""
    from rep3d.models.rep3d_net import Rep3D

    return isinstance(model, Rep3D)


class Predictor:
    """Sliding-window segmentation of whole volumes by a model ``[B, C, D, H, W] -> [B, K, D, H, W]``.

    Every ``AUTO`` option comes from ``model.pretrained_cfg`` (rep3d keys) and otherwise falls back to:
    ``roi_size`` -> :data:`rep3d.presets.DEFAULT_ROI` (96³); ``spacing`` -> ``None`` (keep the input's spacing);
    ``orientation`` -> ``"RAS"``; ``intensity_window`` -> by ``modality`` (:data:`FALLBACK_WINDOWS`), else ``None``
    (intensities used as they are); ``class_names`` -> ``None``. Pass ``None`` explicitly to switch a step off.

    On a CPU, call :func:`rep3d.keep_freed_memory` once in your process (the ``rep3d`` executable does): with
    glibc's default allocator every activation over 32 MiB page-faults in fresh memory, a large part of a 96³
    forward (``benchmarks/model_forward.py``).

    Args:
        model: the network; moved to the device and put in eval mode.
        config: how the sliding window runs (:class:`InferenceCfg`: ``roi_size``, ``overlap``, ``blend``,
            ``sw_batch_size``, ``device``, ``stitch_device``, ``amp``, ``precision``, ``channels_last``, ``tta``,
            ``tta_axes``, ``progress``).
        inputs: what happens to the input (:class:`InputPolicy`: ``spacing``, ``orientation``,
            ``intensity_window``, ``class_names``, ``crop_foreground``, ``nonfinite``,
            ``allow_out_of_distribution``).
        **options: any of those fields by name (``Predictor(model, roi_size=(64, 64, 64), tta=True)``); they
            replace the matching field of ``config`` / ``inputs``.
    """

    def __init__(self, model: nn.Module, config: InferenceCfg | None = None, inputs: InputPolicy | None = None,
                 **options: Any) -> None:
        config, inputs = split_options(config, inputs, options)
        self.config, self.inputs = config, inputs
        self.model_config = cfg = model_config(model)
        self._set_window(model, cfg.input.roi_size or FALLBACK_ROI if config.roi_size is AUTO else config.roi_size,
                         config.overlap, config.blend, config.sw_batch_size)
        self._set_grid(cfg, inputs.spacing, inputs.orientation, inputs.intensity_window)
        class_names = cfg.class_names if inputs.class_names is AUTO else inputs.class_names
        self.class_names = list(class_names) if class_names is not None else None
        self.in_chans, self.num_classes = cfg.in_chans, cfg.num_classes

        self.device = resolve_device(config.device)
        if str(config.stitch_device) != "auto":
            try:
                resolve_device(config.stitch_device)
            except Rep3DValueError as err:
                raise Rep3DValueError(f"stitch_device: {err} (or 'auto')") from None
        self.stitch_device = config.stitch_device
        self.amp, self.tta, self.progress = bool(config.amp), bool(config.tta), bool(config.progress)
        self.tta_axes = tta_axes(cfg.name, cfg.tta_flip_axes, config.tta_axes) if self.tta else ()
        self.nonfinite = nonfinite_policy(inputs.nonfinite)
        self.crop_foreground = (self.intensity_window is not None and self.normalization is None
                                if inputs.crop_foreground is AUTO else bool(inputs.crop_foreground))
        self.precision = checked_precision(config.precision, self.amp, self.device)
        self.training_distribution = cfg.input.training_distribution or None
        self.modality = cfg.input.modality or None
        self.allow_out_of_distribution = bool(inputs.allow_out_of_distribution)
        self.model = model.to(self.device).eval()
        self.notice = synthetic_notice(cfg)
        self._profile: dict[str, Any] = {}
        channels_last = config.channels_last
        if channels_last is AUTO:
            channels_last = self.device.type == "cpu" and _is_rep3d_network(model)
        self.channels_last = bool(channels_last)
        self._runner, self._runner_weights = self.model, None

    def _weights_version(self) -> tuple:
        """Identity and in-place version of every parameter and buffer: changes when the weights do."""
        return tuple((id(t), t._version) for t in itertools.chain(self.model.parameters(), self.model.buffers()))

    def _current_runner(self) -> nn.Module:
        """The module that runs the windows: ``self.model``, or its channels-last copy, refreshed whenever the
        model's weights changed since the copy was made (the user's model keeps its own layout: training
        validation passes the model it is training)."""
        if not self.channels_last:
            return self.model
        version = self._weights_version()
        if version != self._runner_weights:
            from rep3d.models.deploy import optimize_for_inference

            self._runner, self._runner_weights = optimize_for_inference(self.model.eval()), version
        return self._runner

    def check_distribution(self, image: torch.Tensor, affine: np.ndarray, what: str) -> dict[str, Any]:
        """Compare one input (``[C, X, Y, Z]`` in its own units, its affine) with the model's recorded training
        distribution (:mod:`rep3d.inference.distribution`); returns the record for the prediction's report.

        Far outside: :class:`OutOfDistributionError`, unless ``allow_out_of_distribution`` (then a warning). Near the
        edge: :class:`OutOfDistributionWarning`. Only for models with an intensity window (raw-unit inputs)."""
        if self.intensity_window is None or self.normalization is not None:
            return {"status": "not checked (the model normalises each scan itself)"}
        stats = scan_statistics(image, self.intensity_window)
        spacing = spacing_of(affine)
        findings = compare(stats, spacing, self.training_distribution, self.intensity_window)
        far = [f for f in findings if f.severity == "far"]
        record = {"status": "far" if far else "near" if findings else "inside",
                  "recorded": self.training_distribution is not None,
                  "findings": [f.to_dict() for f in findings], "statistics": stats, "spacing": list(spacing)}
        if far and not self.allow_out_of_distribution:
            raise OutOfDistributionError(
                f"{what}: far outside the model's training input: {'; '.join(f.message for f in far)}; its "
                "segmentation would be invented. If you know the model applies, rerun with "
                "--allow-out-of-distribution (Predictor(allow_out_of_distribution=True)): the finding is then a "
                "warning, recorded in the output's <name>_seg.json")
        if findings:
            record["allowed"] = bool(far)
            warnings.warn(f"{what}: {'outside' if far else 'near the edge of'} the model's training input "
                          f"({'allowed' if far else 'check the result'}): "
                          f"{'; '.join(f.message for f in findings)}", OutOfDistributionWarning, stacklevel=3)
        return record

    def _set_window(self, model: nn.Module, roi_size: Any, overlap: float, blend: str, sw_batch_size: int) -> None:
        self.roi_size = triple("roi_size", roi_size, int)
        stride = getattr(model, "stride", None)
        self.size_divisor = stride if isinstance(stride, int) and stride > 0 else 1
        # a rep3d network's deepest stage must hold more than one voxel: its largest input axis reaches two strides
        minimum = int(getattr(model, "min_input_size", None) or 1)
        bad = [r for r in self.roi_size if r < 1 or r % self.size_divisor] or max(self.roi_size) < minimum
        if bad:
            up = [-(-max(r, 1) // self.size_divisor) * self.size_divisor for r in self.roi_size]
            up[up.index(max(up))] = max(max(up), minimum)
            raise Rep3DValueError(
                f"roi_size {self.roi_size} must be positive multiples of the network stride {self.size_divisor}, the "
                f"largest at least {minimum} (the model's smallest input); try roi_size={tuple(up)}"
            )
        if not 0.0 <= float(overlap) < 1.0:
            raise Rep3DValueError(f"overlap must be in [0, 1), got {overlap}")
        if blend not in ("gaussian", "constant"):
            raise Rep3DValueError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
        if int(sw_batch_size) < 1:
            raise Rep3DValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        self.overlap, self.blend, self.sw_batch_size = float(overlap), blend, int(sw_batch_size)

    def _set_grid(self, cfg: ModelConfig, spacing: Any, orientation: Any, intensity_window: Any) -> None:
        # axis_order "zyx": the model's axes are the (oriented) file axes reversed, as nnU-Net reads NIfTI; the cfg's
        # roi_size and spacing are then in the model's axis order
        self.axis_order = str(cfg.axis_order or "xyz")
        if self.axis_order not in ("xyz", "zyx"):
            raise Rep3DValueError(f"pretrained_cfg axis_order must be 'xyz' or 'zyx', got {self.axis_order!r}")
        self.spacing = cfg.input.spacing if spacing is AUTO else spacing
        if self.spacing is not None:
            self.spacing = triple("spacing", self.spacing, float)
            if spacing is AUTO and self.axis_order == "zyx":
                self.spacing = self.spacing[::-1]
            if min(self.spacing) <= 0:
                raise Rep3DValueError(f"spacing must be positive (mm), got {self.spacing}")
        self.orientation = (cfg.input.orientation or "RAS") if orientation is AUTO else orientation
        if self.orientation == "native":  # keep the file's own voxel axes (nnU-Net's readers do)
            self.orientation = None
        # per-channel normalisation recorded by rep3d nnunet-export; it replaces the intensity window
        self.normalization = cfg.normalization if intensity_window is AUTO else None
        if self.normalization is not None:
            intensity_window = None
            check_normalization(self.normalization, cfg.in_chans)
        if intensity_window is AUTO:
            modality = str(cfg.input.modality or "").upper()
            intensity_window = cfg.input.intensity_window or FALLBACK_WINDOWS.get(modality)
        if intensity_window is not None:
            lo, hi = map(float, intensity_window)
            if not hi > lo:
                raise Rep3DValueError(f"intensity_window must be (lo, hi) with hi > lo, got {intensity_window}")
            intensity_window = (lo, hi)
        self.intensity_window = intensity_window

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

        Warns:
            SyntheticWeightsWarning: on every call when the weights' provenance says synthetic (also recorded in the
                prediction's ``notices`` and so in its sidecar).
        """
        if self.notice:
            warnings.warn(self.notice, SyntheticWeightsWarning, stacklevel=2)
        # profile: a handful of perf_counter calls per volume, nothing per voxel
        self._profile = profile = {"timings_s": {}, "windows": 0, "forward_s": 0.0}
        timings = profile["timings_s"]
        start = time.perf_counter()
        image, header, source = load_volume(
            data, affine, self.in_chans,
            lambda: model_grid_affine(self.orientation or "RAS", self.spacing or (1.0, 1.0, 1.0)),
        )
        image = replace_nonfinite(image, self.nonfinite, source or "input array")
        in_affine = image.affine.detach().cpu().numpy().astype(np.float64)
        checked = self.check_distribution(image.as_tensor(), in_affine, source or "input array")
        in_shape = tuple(int(s) for s in image.shape[1:])
        timings["read"] = time.perf_counter() - start
        start = time.perf_counter()
        raw = to_model_space(image, spacing=self.spacing, orientation=self.orientation, intensity_window=None,
                             normalization=self.normalization)
        grid_affine = raw.affine.detach().cpu().numpy().astype(np.float64)
        raw = raw.as_tensor().float()
        x = apply_window(raw, self.intensity_window) if self.intensity_window is not None else raw
        box = body_box(raw, body_floor(self.intensity_window, self.modality)) \
            if self.crop_foreground and self.intensity_window is not None else None
        cropped = cropped_report(raw, box)
        timings["resample"] = time.perf_counter() - start
        profile["input_shape"], profile["model_grid_shape"] = list(in_shape), [int(n) for n in x.shape[1:]]
        start = time.perf_counter()
        probs = self.infer_cropped(x, box)  # [K, *grid] on the stitch device
        windowed = time.perf_counter() - start
        # infer: time inside the network; stitch: the sliding window's own work (cutting windows, Gaussian
        # blending, accumulating, the foreground box)
        timings["infer"] = profile.pop("forward_s")
        timings["stitch"] = max(windowed - timings["infer"], 0.0)
        if not bool(torch.isfinite(probs).all()):  # never an argmax over NaN (all background) with success
            raise Rep3DValueError(f"{source or 'input array'}: the model's output is not finite (NaN or inf) although "
                                  "the input is; check the weights (e.g. load them with --checkpoint again)")
        start = time.perf_counter()
        label, prob_out = to_input_grid(probs, grid_affine, in_affine, in_shape, keep=probabilities)
        timings["resample"] += time.perf_counter() - start  # the way back to the input grid (with the argmax)
        notices = {"synthetic_training_data": self.notice} if self.notice else {}
        return Prediction(label, in_affine, prob_out, header, self.class_names, source, notices=notices,
                          profile=profile, report={"out_of_distribution": checked, "cropped_away": cropped})

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

    def _flips(self) -> list[tuple[int, ...]]:
        if not self.tta:
            return [()]
        return [c for n in range(len(self.tta_axes) + 1) for c in itertools.combinations(self.tta_axes, n)]

    def _forward(self, window: torch.Tensor) -> torch.Tensor:
        """Softmax ``[B, K, *roi]`` float32 of one batch of windows ``[B, C, *roi]``, averaged over the flips."""
        perm, lr_axis = None, None
        if self.tta and self.orientation is not None:
            lr_axis = next((i for i, c in enumerate(self.orientation.upper()) if c in "LR"), None)
            perm = lateral_permutation(self.class_names)
        use_amp = (self.amp or self.precision == "bf16") and self.device.type in ("cuda", "cpu")
        amp_dtype = torch.float16 if self.device.type == "cuda" and self.precision != "bf16" else torch.bfloat16
        if self.channels_last:
            window = window.contiguous(memory_format=torch.channels_last_3d)
        flips = self._flips()
        total = None
        start = time.perf_counter()
        for axes in flips:
            dims = [a + 2 for a in axes]
            inp = torch.flip(window, dims) if dims else window
            ctx = torch.autocast(self.device.type, dtype=amp_dtype) if use_amp else contextlib.nullcontext()
            with ctx:
                out = self._runner(inp)
            if isinstance(out, (list, tuple)):
                out = out[0]
            if out.ndim != 5 or out.shape[0] != inp.shape[0] or tuple(out.shape[2:]) != tuple(inp.shape[2:]):
                raise Rep3DValueError(
                    f"the model must map [B, C, D, H, W] to logits [B, K, D, H, W]; for input "
                    f"{tuple(inp.shape)} it returned {tuple(out.shape)}"
                )
            prob = torch.softmax(out.float(), dim=1)
            if dims:
                prob = torch.flip(prob, dims)
                if perm is not None and lr_axis in axes and prob.shape[1] == len(perm):
                    prob = prob[:, perm]
            total = prob if total is None else total + prob
        if "forward_s" in self._profile:
            self._profile["forward_s"] += time.perf_counter() - start
            self._profile["windows"] += int(window.shape[0])
        return total / len(flips)

    def infer_cropped(self, x: torch.Tensor, box: tuple[slice, ...] | None = AUTO) -> torch.Tensor:
        """:meth:`infer` on the foreground box of ``x [C, *grid]`` (with ``crop_foreground``), the rest background:
        softmax ``[K, *grid]`` float32 on the stitch device."""
        if box is AUTO:
            box = foreground_box(x) if self.crop_foreground else None
        # recorded as segmented: the body's box, the whole grid when the box is all of it, None without a crop
        whole = [[0, int(n)] for n in x.shape[1:]] if self.crop_foreground else None
        self._profile["foreground_box"] = [[b.start, b.stop] for b in box] if box is not None else whole
        if box is None or all(b.stop - b.start == n for b, n in zip(box, x.shape[1:])):
            return self.infer(x)
        inside = self.infer(x[(slice(None), *box)])
        probs = inside.new_zeros((inside.shape[0], *x.shape[1:]))
        probs[0] = 1.0  # outside the body: background with certainty
        probs[(slice(None), *box)] = inside
        return probs

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """``x [C, *grid]`` already on the model grid (preprocessed) -> softmax ``[K, *grid]`` float32 on the
        stitch device."""
        from monai.inferers import sliding_window_inference

        if self.axis_order == "zyx":
            x = x.permute(0, 3, 2, 1)
        self._current_runner()
        with torch.no_grad():
            out = sliding_window_inference(
                x[None],
                roi_size=self.roi_size,
                sw_batch_size=self.sw_batch_size,
                predictor=self._forward,
                overlap=self.overlap,
                mode=self.blend,
                padding_mode="constant",
                cval=0.0,
                sw_device=self.device,
                device=self._stitch_device_for(x.shape[1:]),
                progress=self.progress,
            )
        return out[0].permute(0, 3, 2, 1) if self.axis_order == "zyx" else out[0]
