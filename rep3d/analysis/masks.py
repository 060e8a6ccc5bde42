"""The learned receptive-field masks of a model against their distance prior, block by block."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from rep3d.errors import Rep3DValueError
from rep3d.layers import ModulatedKernelParam


def ratio_by_ring(mask: np.ndarray, prior: np.ndarray) -> dict[str, list[float]]:
    """Mean, min and max of ``M / P`` on each distance ring ``round(||k - c||) = 0, 1, ...`` of a ``[kd, kh, kw]``
    mask (pure). Returns ``{"ring": [...], "mean": [...], "min": [...], "max": [...]}`` over the non-empty rings."""
    mask, prior = np.asarray(mask, dtype=np.float64), np.asarray(prior, dtype=np.float64)
    if mask.shape != prior.shape or mask.ndim != 3:
        raise Rep3DValueError(f"ratio_by_ring: mask {mask.shape} and prior {prior.shape} must be one 3-D shape")
    axes = [np.arange(k, dtype=np.float64) - (k - 1) / 2 for k in mask.shape]
    ring = np.rint(np.sqrt(sum(g * g for g in np.meshgrid(*axes, indexing="ij")))).astype(np.int64)
    ratio = mask / prior
    out: dict[str, list[float]] = {"ring": [], "mean": [], "min": [], "max": []}
    for r in np.unique(ring):
        values = ratio[ring == r]
        out["ring"].append(int(r))
        out["mean"].append(float(values.mean()))
        out["min"].append(float(values.min()))
        out["max"].append(float(values.max()))
    return out


@torch.no_grad()
def mask_report(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per masked block (keyed by module name): the mask ``M`` and prior ``P`` as ``[kd, kh, kw]`` float64 arrays,
    ``M/P`` by ring (:func:`ratio_by_ring`), the block's ``mask_stats()``, mode and form.

    Raises :class:`~rep3d.errors.Rep3DValueError` for a model with no mask (unmodulated, CSLA or deployed: there is
    no mask left to show).
    """
    report = {}
    for name, module in model.named_modules():
        if not isinstance(module, ModulatedKernelParam):
            continue
        mask = module.mask()[0, 0].double().cpu().numpy()
        prior = module.prior_volume()[0, 0].double().cpu().numpy()
        report[name.removesuffix(".modulation")] = {
            "mode": module.mode,
            "mask_form": module.mask_form if module.generator is not None else None,
            "kernel_size": list(module.kernel_size),
            "mask": mask,
            "prior": prior,
            "ratio_by_ring": ratio_by_ring(mask, prior),
            "mask_stats": module.mask_stats(),
        }
    if not report:
        raise Rep3DValueError(f"{type(model).__name__} has no receptive-field mask (an unmodulated, CSLA or deployed "
                              "model); rep3d masks needs an lrbm or fixed model in training form")
    return report
