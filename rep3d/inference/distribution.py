"""The input distribution a model was trained on, and how far a new scan is from it.

A model's config records, under :data:`TRAINING_DISTRIBUTION_KEY`, a flat summary of its training scans
(:func:`summarise`): modality, the range of voxel spacings, and, per statistic of :func:`scan_statistics`, the
smallest and largest value over the training scans (``<stat>_min`` / ``<stat>_max``). :func:`compare` places one
input against it:

* **far** (the prediction would be invented, :class:`OutOfDistributionError`): no voxel inside the intensity window
  (an all-air scan), intensities in other units than the training scans' (an MR volume or an unrescaled CT through a
  CT model: none of the low values every training scan had), a voxel spacing more than :data:`FAR_FACTOR` times
  outside the training range, or a statistic many training ranges away;
* **near** (a warning, recorded in the output's sidecar): any statistic or spacing outside the training range by
  more than a small tolerance.

Far findings that are about the *training data* (not about units or modality) say so: a real CT in HU through a
model trained on synthetic phantoms is reported as outside that model's training distribution, not as a wrong
modality.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from rep3d.data.nifti import read_nifti, read_nifti_array
from rep3d.errors import Rep3DDataError
from rep3d.inference.io import InputError, InputWarning

TRAINING_DISTRIBUTION_KEY = "training_distribution"

STATISTICS = ("in_window_fraction", "below_window_fraction", "in_window_mean", "in_window_std", "intensity_p01",
              "intensity_p99")
"""Per-scan statistics (input units, before the window): fraction of voxels inside / below the window, mean and
standard deviation of the voxels inside it, 1st and 99th percentile of all voxels."""

FAR_FACTOR = 3.0
"""A spacing more than this factor coarser than the training range is far (the resampled scan lacks the detail the
model was trained on); finer scans are resampled down, so they are at most near (a warning)."""
NEAR_FACTOR = 1.5
"""A spacing between the training range and this factor outside it is close enough for no warning."""
STAT_NEAR = 0.25
"""A statistic is near (warned) when it leaves the training range by more than this fraction of the window width."""
STAT_FAR = 1.0
"""... and far when it leaves it by more than this fraction of the window width (or, for fractions, 3x)."""
MIN_IN_WINDOW_FRACTION = 0.001
"""Fewer voxels than this inside the window: nothing the model was trained to segment (e.g. an all-air scan)."""


class OutOfDistributionError(InputError):
    """An input is far outside the distribution the model was trained on; its segmentation would be invented."""


class OutOfDistributionWarning(InputWarning):
    """An input is near the edge of (or, allowed explicitly, far outside) the model's training distribution."""


@dataclasses.dataclass
class Finding:
    """One way an input differs from the training distribution."""

    severity: str  # "far" or "near"
    kind: str  # "units", "empty", "spacing", "statistics"
    message: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def scan_statistics(image: torch.Tensor | np.ndarray, window: Sequence[float]) -> dict[str, float]:
    """:data:`STATISTICS` of ``image`` (``[C, X, Y, Z]`` or ``[X, Y, Z]``, input units, all channels pooled)."""
    x = torch.as_tensor(image).detach().float().flatten()
    x = x[torch.isfinite(x)]
    lo, hi = float(window[0]), float(window[1])
    if x.numel() > 2_000_000:  # percentiles of a strided subsample: same to well under a HU, much faster
        x = x[:: x.numel() // 1_000_000]
    inside = x[(x >= lo) & (x <= hi)]
    n = max(int(x.numel()), 1)
    q = torch.quantile(x.double(), torch.tensor([0.01, 0.99], dtype=torch.float64)) if x.numel() else [math.nan] * 2
    return {
        "in_window_fraction": float(inside.numel()) / n,
        "below_window_fraction": float((x < lo).sum()) / n,
        "in_window_mean": float(inside.mean()) if inside.numel() else math.nan,
        "in_window_std": float(inside.std(unbiased=False)) if inside.numel() else math.nan,
        "intensity_p01": float(q[0]),
        "intensity_p99": float(q[1]),
    }


def spacing_of(affine: np.ndarray | torch.Tensor) -> tuple[float, float, float]:
    """Voxel size (mm) along the file's axes: the column norms of a ``[4, 4]`` voxel -> world affine."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    return tuple(float(v) for v in np.linalg.norm(a, axis=0))  # type: ignore[return-value]


def summarise(scans: Iterable[tuple[Mapping[str, float], Sequence[float], float | None]], *, modality: str,
              window: Sequence[float], source: str) -> dict[str, Any]:
    """The flat ``training_distribution`` mapping of ``scans``: ``(scan_statistics, spacing, foreground_fraction)``
    per training scan (``foreground_fraction``: labelled voxels / all voxels, or ``None``)."""
    stats, spacings, fg = [], [], []
    for s, spacing, foreground in scans:
        stats.append(dict(s))
        spacings.append([float(v) for v in spacing])
        if foreground is not None:
            fg.append(float(foreground))
    if not stats:
        raise Rep3DDataError("no training scans to summarise")
    sp = np.asarray(spacings)
    out: dict[str, Any] = {"modality": str(modality), "n_scans": len(stats), "source": str(source),
                           "window": [float(window[0]), float(window[1])],
                           "spacing_min": [round(float(v), 4) for v in sp.min(0)],
                           "spacing_max": [round(float(v), 4) for v in sp.max(0)]}
    for key in STATISTICS:
        values = [s[key] for s in stats if math.isfinite(s[key])]
        if values:
            out[f"{key}_min"] = round(float(min(values)), 6)
            out[f"{key}_max"] = round(float(max(values)), 6)
    if fg:
        out["foreground_fraction_min"] = round(min(fg), 6)
        out["foreground_fraction_max"] = round(max(fg), 6)
    return out


def compare(stats: Mapping[str, float], spacing: Sequence[float], dist: Mapping[str, Any] | None,
            window: Sequence[float] | None) -> list[Finding]:
    """How an input (its :func:`scan_statistics` and spacing) differs from the recorded training distribution
    ``dist`` (``None``: only the checks that need no record, e.g. an empty window)."""
    findings: list[Finding] = []
    if stats.get("in_window_fraction", 1.0) < MIN_IN_WINDOW_FRACTION:
        lo, hi = (window or (math.nan, math.nan))[:2]
        findings.append(Finding("far", "empty", f"only {stats['in_window_fraction']:.2%} of the voxels lie inside the "
                                                f"model's intensity window [{lo:g}, {hi:g}] (e.g. a scan of air): "
                                                "there is nothing the model was trained to segment"))
    if not dist:
        return findings
    width = float(dist["window"][1] - dist["window"][0]) if "window" in dist else 1.0
    trained = _trained_on(dist)
    # units: every training scan had low values (air in CT) that this input lacks entirely, or vice versa
    p01_max, p01_min = dist.get("intensity_p01_max"), dist.get("intensity_p01_min")
    if p01_max is not None and stats["intensity_p01"] > p01_max + 1.5 * width:
        findings.append(Finding("far", "units", (
            f"its intensities do not look like the {dist.get('modality', '?')} the model was trained on: the 1st "
            f"percentile is {stats['intensity_p01']:.0f}, the training scans' was at most {p01_max:.0f} "
            f"(e.g. air at -1000 HU in CT); an MR volume, or a CT not in HU (apply the rescale slope/intercept)")))
    elif p01_min is not None and stats["intensity_p01"] < p01_min - 10 * width:
        findings.append(Finding("far", "units", (
            f"its intensities reach far below the training scans' (1st percentile {stats['intensity_p01']:.0f}, "
            f"training at least {p01_min:.0f}): another unit or scaling than the {dist.get('modality', '?')} the "
            "model was trained on")))
    # spacing: the network's kernels cover a fixed number of voxels of the model grid; resampling from a much
    # finer or coarser scan changes what the model sees
    lo_sp, hi_sp = dist.get("spacing_min"), dist.get("spacing_max")
    if lo_sp is not None and hi_sp is not None:
        for axis, (v, a, b) in enumerate(zip(spacing, lo_sp, hi_sp, strict=False)):
            factor = a / v if v < a else v / b if v > b else 1.0
            if factor > FAR_FACTOR and v > b:  # much coarser: detail the model relies on is not in the scan
                findings.append(Finding("far", "spacing", (
                    f"its voxel spacing along axis {axis} is {v:.3g} mm, {factor:.1f}x outside the {a:g}-{b:g} mm "
                    f"of the {trained}")))
            elif factor > NEAR_FACTOR:
                findings.append(Finding("near", "spacing", (
                    f"its voxel spacing along axis {axis} is {v:.3g} mm, outside the {a:g}-{b:g} mm of the "
                    f"{trained}")))
    if any(f.kind == "units" for f in findings):
        return findings  # the statistics below would only restate it
    for key in ("in_window_mean", "in_window_std"):
        a, b, v = dist.get(f"{key}_min"), dist.get(f"{key}_max"), stats.get(key)
        if a is None or b is None or v is None or not math.isfinite(v):
            continue
        off = (a - v if v < a else v - b if v > b else 0.0) / width
        if off > STAT_NEAR:
            findings.append(Finding("far" if off > STAT_FAR else "near", "statistics", (
                f"{key.replace('_', ' ')} {v:.1f} is outside the {trained}: {a:.1f}-{b:.1f}")))
    for key in ("in_window_fraction", "below_window_fraction"):
        a, b, v = dist.get(f"{key}_min"), dist.get(f"{key}_max"), stats.get(key)
        if a is None or b is None or v is None:
            continue
        ratio = a / max(v, 1e-9) if v < a else max(v, 1e-9) / max(b, 1e-9) if v > b else 1.0
        if ratio > 1.5:
            findings.append(Finding("far" if ratio > 10 and key == "in_window_fraction" else "near", "statistics", (
                f"{key.replace('_', ' ')} {v:.3f} is outside the {trained}: {a:.3f}-{b:.3f}")))
    return findings


def dataset_distribution(items: Sequence[Mapping[str, Any]], *, modality: str, window: Sequence[float],
                         source: str) -> dict[str, Any]:
    """:func:`summarise` of MSD items ``[{"image": path, "label": path}]`` read as files (input units and spacing,
    before any preprocessing): what ``rep3d train`` records for a new model."""

    def one(item: Mapping[str, Any]) -> tuple[dict[str, float], tuple[float, float, float], float | None]:
        data, affine = read_nifti(item["image"], dtype=np.float32)
        foreground = None
        if item.get("label"):
            label = read_nifti_array(item["label"])
            foreground = float((label > 0).mean())
        return scan_statistics(torch.from_numpy(data), window), spacing_of(affine), foreground

    return summarise((one(item) for item in items), modality=modality, window=window, source=source)


def _trained_on(dist: Mapping[str, Any]) -> str:
    what = str(dist.get("source") or "training scans")
    return f"model's training distribution ({dist.get('n_scans', '?')} {what})"


__all__ = ["FAR_FACTOR", "Finding", "OutOfDistributionError", "OutOfDistributionWarning", "STATISTICS",
           "TRAINING_DISTRIBUTION_KEY", "compare", "dataset_distribution", "scan_statistics", "spacing_of",
           "summarise"]
