"""Effective receptive fields (ERFs): how much each input voxel moves the central output voxel.

Two definitions (``definition=``):

- ``"rep3d"`` (default): ``mean_n |d y_c / d x_n|`` summed over input channels, where ``y_c`` is the central output
  voxel summed over channels -- the magnitude of every input voxel's influence, signed contributions cancelling only
  inside the network. Summaries on the raw map: :func:`high_contribution_area_ratios` (the smallest centred box
  holding a fraction of the total) and :func:`mass_within_radii` (the fraction within a distance of the centre).
- ``"replknet"``: what RepLKNet's published ERF code computes, in 3-D: the gradient of ``sum_c relu(y_c)`` (a sample
  whose central output is negative contributes nothing), its positive part ``relu(g)`` summed over batch and
  channels, averaged over inputs, then ``log10(1 + .)`` and divided by its maximum; the area ratios grow a centred
  cube of side 3, 5, ... until its share of the map's sum exceeds t (:func:`replknet_area_ratios`). The two differ
  where gradients are negative (dropped, not counted by magnitude) and through the logarithm, whose effect depends
  on the gradient's scale (``log10(1 + g)`` is close to linear for small ``g``): compare variants within one
  definition, not across.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rep3d.errors import Rep3DValueError

TARGETS: tuple[str, ...] = ("logits", "stage1", "stage2", "stage3", "stage4")
DEFINITIONS: tuple[str, ...] = ("rep3d", "replknet")
AREA_THRESHOLDS: tuple[float, ...] = (0.2, 0.3, 0.5, 0.99)
MASS_RADII: tuple[float, ...] = (1, 2, 4, 8, 16, 32)


@dataclass
class ERFResult:
    """An ERF map ``[D, H, W]`` (float64, input grid), the input-grid point it is centred on, and its summaries."""

    erf: np.ndarray
    centre: tuple[float, float, float]
    target: str
    n_samples: int
    summary: dict[str, Any] = field(default_factory=dict)
    definition: str = "rep3d"

    def to_json(self) -> dict[str, Any]:
        """The numbers (not the map) as plain JSON values."""
        return {"definition": self.definition, "target": self.target, "n_samples": self.n_samples,
                "shape": list(self.erf.shape), "centre": list(self.centre), **self.summary}


def _target_output(model: nn.Module, x: torch.Tensor, target: str) -> torch.Tensor:
    if target == "logits":
        return model(x)
    if not hasattr(model, "forward_intermediates"):
        raise Rep3DValueError(f"effective_receptive_field: target={target!r} needs a model with forward_intermediates "
                              f"(a rep3d model); {type(model).__name__} has none: use target='logits'")
    stage = int(target.removeprefix("stage")) - 1
    # the raw stage output: after the feature LayerNorm (over channels) the channel sum is a constant, and the
    # gradient of the traced quantity would be zero
    return model.forward_intermediates(x, indices=[stage], norm=False, intermediates_only=True)[0]


def _input_centre(in_shape: Sequence[int], out_shape: Sequence[int], out_centre: Sequence[int]) -> tuple[float, ...]:
    """Centre (input voxel coordinates) of the block of input voxels the central output voxel stands for."""
    centre = []
    for n_in, n_out, c in zip(in_shape, out_shape, out_centre):
        stride = n_in / n_out
        centre.append(float(c) if stride == 1 else (c + 0.5) * stride - 0.5)
    return tuple(centre)


def effective_receptive_field(
    model: nn.Module,
    inputs: torch.Tensor | Iterable[torch.Tensor],
    *,
    target: str = "logits",
    n_samples: int | None = None,
    radii: Sequence[float] = MASS_RADII,
    thresholds: Sequence[float] = AREA_THRESHOLDS,
    definition: str = "rep3d",
) -> ERFResult:
    """ERF of ``target`` over ``inputs``: ``mean_n |d(sum_c y[n, c, centre]) / d x_n|``, summed over input channels.

    Args:
        model: in eval mode for the measurement (restored afterwards), so BatchNorm uses its running statistics
            and samples never mix. ``target="stageN"`` needs ``forward_intermediates`` (rep3d models).
        inputs: ``[N, C, D, H, W]`` or an iterable of ``[C, D, H, W]`` / ``[1, C, D, H, W]`` volumes
            (see :func:`random_inputs`, :func:`msd_crops`); all of the same shape.
        target: ``"logits"`` (the model output) or ``"stage1"`` .. ``"stage4"`` (the raw stage outputs, before the
            feature LayerNorm, whose channel sum would not depend on the input).
        n_samples: use at most this many inputs (default: all).
        radii: mass radii for the summaries (:func:`erf_summary`).
        thresholds: area thresholds for the summaries (:func:`erf_summary`).
        definition: ``"rep3d"`` (``mean |g|``, raw map) or ``"replknet"`` (RepLKNet's code: ``relu`` of the central
            output and of the gradient, ``log10(1 + .)``, normalised to a maximum of 1; its area ratios by
            :func:`replknet_area_ratios`). See the module docstring.

    Returns:
        :class:`ERFResult`; ``erf`` is ``[D, H, W]`` float64, centred on the input point under the central output
        voxel (``size // 2`` for the logits).
    """
    if target not in TARGETS:
        raise Rep3DValueError(f"effective_receptive_field: target must be one of {TARGETS}, got {target!r}")
    if definition not in DEFINITIONS:
        raise Rep3DValueError(f"effective_receptive_field: definition must be one of {DEFINITIONS}, got "
                              f"{definition!r}")
    replknet = definition == "replknet"
    if isinstance(inputs, torch.Tensor):
        if inputs.ndim != 5:
            raise Rep3DValueError(
                f"effective_receptive_field: inputs must be [N, C, D, H, W], got {tuple(inputs.shape)}")
        inputs = list(inputs)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    total, count, in_shape, centre = None, 0, None, None
    try:
        for x in inputs:
            if n_samples is not None and count >= n_samples:
                break
            x = x if x.ndim == 5 else x[None]
            if in_shape is not None and tuple(x.shape[2:]) != in_shape:
                raise Rep3DValueError(f"effective_receptive_field: inputs differ in shape: {tuple(x.shape[2:])} "
                                      f"after {in_shape}; crop them to one ROI")
            x = x.detach().to(device=device, dtype=dtype).requires_grad_(True)
            y = _target_output(model, x, target)
            out_centre = [s // 2 for s in y.shape[2:]]
            # the input's gradient only: parameters' .grad stay as they were (an ERF taken mid-training must not
            # add to the next optimizer step)
            central = y[(slice(None), slice(None), *out_centre)]
            (grad,) = torch.autograd.grad((torch.relu(central) if replknet else central).sum(), x)
            grad = (torch.relu(grad) if replknet else grad.abs()).detach().sum(dim=(0, 1)).double().cpu()
            total = grad if total is None else total + grad
            if in_shape is None:
                in_shape = tuple(x.shape[2:])
                centre = _input_centre(in_shape, y.shape[2:], out_centre)
            count += 1
    finally:
        model.train(was_training)
    if count == 0:
        raise Rep3DValueError("effective_receptive_field: no inputs given (n_samples=0 or an empty iterable)")
    erf = (total / count).numpy()
    if replknet:
        erf = np.log10(erf + 1.0)
        if erf.max() > 0:
            erf = erf / erf.max()
        summary = erf_summary(erf, centre, radii=radii, thresholds=thresholds)
        summary["area_ratio"] = {f"{t:g}": r for t, r in replknet_area_ratios(erf, centre, thresholds).items()}
    else:
        summary = erf_summary(erf, centre, radii=radii, thresholds=thresholds)
    return ERFResult(erf=erf, centre=centre, target=target, n_samples=count, summary=summary, definition=definition)


def erf_summary(erf: np.ndarray, centre: Sequence[float], *, radii: Sequence[float] = MASS_RADII,
                thresholds: Sequence[float] = AREA_THRESHOLDS) -> dict[str, Any]:
    """All summary numbers of an ERF map, as plain JSON values: ``area_ratio`` (threshold -> fraction of the
    volume), ``mass_within`` (radius -> fraction of the total) and ``radial_profile`` (mean per distance ring)."""
    return {
        "area_ratio": {f"{t:g}": r for t, r in high_contribution_area_ratios(erf, centre, thresholds).items()},
        "mass_within": {f"{r:g}": m for r, m in mass_within_radii(erf, centre, radii).items()},
        "radial_profile": radial_profile(erf, centre).tolist(),
    }


def _distances(shape: Sequence[int], centre: Sequence[float]) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) - c for n, c in zip(shape, centre)], indexing="ij")
    return np.sqrt(sum(g * g for g in grids))


def _check_map(erf: np.ndarray, centre: Sequence[float]) -> np.ndarray:
    erf = np.asarray(erf, dtype=np.float64)
    if erf.ndim != 3 or len(centre) != 3:
        raise Rep3DValueError(f"ERF summaries need a 3-D map and a 3-D centre, got shapes {erf.shape} and {centre}")
    if not np.isfinite(erf).all() or (erf < 0).any():
        raise Rep3DValueError("ERF summaries need a finite, non-negative map (|gradient|)")
    return erf


def high_contribution_area_ratios(erf: np.ndarray, centre: Sequence[float],
                                  thresholds: Sequence[float] = AREA_THRESHOLDS) -> dict[float, float]:
    """For each threshold t: the volume fraction of the smallest box centred on ``centre`` (half-width r voxels
    on every axis, clipped to the volume) whose sum reaches ``t`` of the total (RepLKNet's high-contribution area
    ratio, in 3-D, on the raw map). A small ratio at a high threshold means the contribution is concentrated."""
    erf = _check_map(erf, centre)
    total = erf.sum()
    if total <= 0:
        raise Rep3DValueError("ERF summaries: the map is zero everywhere (no gradient reached the input)")
    # Chebyshev distance to the centre: the box of half-width r holds the voxels with dist <= r
    grids = np.meshgrid(*[np.abs(np.arange(n, dtype=np.float64) - c) for n, c in zip(erf.shape, centre)],
                        indexing="ij")
    cheb = np.maximum.reduce(grids)
    levels = np.unique(cheb)
    mass = np.array([erf[cheb <= r].sum() for r in levels]) / total
    size = np.array([(cheb <= r).sum() for r in levels]) / erf.size
    out = {}
    for t in thresholds:
        # relative tolerance: a box holding all of the mass must count as reaching t = 1
        hit = np.nonzero(mass >= t * (1 - 1e-12))[0]
        out[float(t)] = float(size[hit[0]]) if hit.size else 1.0
    return out


def replknet_area_ratios(erf: np.ndarray, centre: Sequence[float], thresholds: Sequence[float] = AREA_THRESHOLDS
                         ) -> dict[float, float]:
    """RepLKNet's high-contribution area ratio in 3-D: for each threshold t, the volume fraction of the first cube of
    side ``2i + 1`` (``i = 1, 2, ...``, centred on the voxel nearest ``centre``) whose share of the map's sum
    *exceeds* t; 1.0 when no such cube fits inside the volume. Apply it to the processed map
    (``log10(1 + g)``, see :func:`effective_receptive_field`), as RepLKNet does."""
    erf = _check_map(erf, centre)
    total = erf.sum()
    if total <= 0:
        raise Rep3DValueError("ERF summaries: the map is zero everywhere (no gradient reached the input)")
    c = [int(round(x)) for x in centre]
    half = min(min(ci, n - 1 - ci) for ci, n in zip(c, erf.shape))
    shares = [erf[c[0] - i:c[0] + i + 1, c[1] - i:c[1] + i + 1, c[2] - i:c[2] + i + 1].sum() / total
              for i in range(1, half + 1)]
    out = {}
    for t in thresholds:
        hit = next((i for i, share in enumerate(shares, start=1) if share > t), None)
        out[float(t)] = float((2 * hit + 1) ** 3 / erf.size) if hit is not None else 1.0
    return out


def mass_within_radii(erf: np.ndarray, centre: Sequence[float], radii: Sequence[float] = MASS_RADII
                      ) -> dict[float, float]:
    """Fraction of the total ERF within Euclidean distance ``r`` (voxels, inclusive) of ``centre``, per radius."""
    erf = _check_map(erf, centre)
    total = erf.sum()
    if total <= 0:
        raise Rep3DValueError("ERF summaries: the map is zero everywhere (no gradient reached the input)")
    dist = _distances(erf.shape, centre)
    return {float(r): float(erf[dist <= r + 1e-9].sum() / total) for r in radii}


def radial_profile(values: np.ndarray, centre: Sequence[float]) -> np.ndarray:
    """Mean of ``values`` on each distance ring ``round(||p - centre||) = 0, 1, 2, ...`` (``nan`` for empty rings)."""
    values = np.asarray(values, dtype=np.float64)
    ring = np.rint(_distances(values.shape, centre)).astype(np.int64)
    sums = np.bincount(ring.ravel(), weights=values.ravel())
    counts = np.bincount(ring.ravel())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def random_inputs(shape: Sequence[int], n: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` seeded standard-normal volumes ``[n, C, D, H, W]`` for ``shape = (C, D, H, W)``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=gen)


def msd_crops(data_dir: str | Path, roi: Sequence[int], n: int, *, seed: int = 0, spacing: Sequence[float] | None,
              orientation: str | None, intensity_window: tuple[float, float] | None,
              in_chans: int | None = None) -> list[torch.Tensor]:
    """``n`` seeded random crops ``[C, *roi]`` of the images of an MSD-layout dataset, each brought onto the model
    grid by the shared preprocessing (:func:`rep3d.inference.to_model_space`; pass the model's ``spacing``,
    ``orientation`` and ``intensity_window``, e.g. a :class:`rep3d.inference.Predictor`'s). Volumes smaller than
    ``roi`` are zero-padded. Images are drawn round-robin from a seeded order of all listed cases."""
    from rep3d.data.msd import load_msd_dataset
    from rep3d.inference import load_volume, to_model_space

    dataset = load_msd_dataset(data_dir)
    images = sorted({d["image"] for d in dataset.train + dataset.val + dataset.test_labeled + dataset.test})
    if not images:
        raise Rep3DValueError(f"{data_dir}: the dataset lists no images")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    cache: dict[str, torch.Tensor] = {}
    crops = []
    for i in range(n):
        path = images[order[i % len(images)]]
        if path not in cache:
            image, _, _ = load_volume(path, None, in_chans, lambda: np.eye(4))
            vol = torch.as_tensor(np.asarray(to_model_space(image, spacing=spacing, orientation=orientation,
                                                            intensity_window=intensity_window)), dtype=torch.float32)
            pads = []
            for size, want in zip(reversed(vol.shape[1:]), reversed(list(roi))):
                extra = max(0, want - size)
                pads += [extra // 2, extra - extra // 2]
            cache[path] = torch.nn.functional.pad(vol, pads)
        vol = cache[path]
        starts = [int(rng.integers(0, s - r + 1)) for s, r in zip(vol.shape[1:], roi)]
        crops.append(vol[(slice(None), *(slice(s, s + r) for s, r in zip(starts, roi)))].clone())
    return crops
