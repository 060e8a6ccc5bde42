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


def live_taps(kernel_size: tuple[int, int, int] | list[int], feature_size: tuple[int, int, int] | list[int]
              ) -> np.ndarray:
    """Boolean ``[kd, kh, kw]`` map of the kernel taps that touch data on a ``feature_size`` map (pure).

    A 'same'-padded conv applies tap offset ``o`` (from the kernel centre) at output ``p`` to input ``p + o``; that
    input exists for some ``p`` only when ``|o| <= n - 1`` on every axis of an ``n``-voxel map. The other taps only
    ever multiply zero padding: their mask values cannot affect the output (dead taps).
    """
    if len(kernel_size) != 3 or len(feature_size) != 3:
        raise Rep3DValueError(f"live_taps: need 3 kernel sizes and 3 feature sizes, got {kernel_size} and "
                              f"{feature_size}")
    axes = [np.abs(np.arange(k) - (k - 1) / 2) <= n - 1 for k, n in zip(kernel_size, feature_size)]
    return axes[0][:, None, None] & axes[1][None, :, None] & axes[2][None, None, :]


def _live_summary(mask: np.ndarray, prior: np.ndarray, live: np.ndarray, feature_size: list[int]) -> dict[str, Any]:
    """Live / dead tap counts, the share of ``|M|`` on live taps, and ``M/P`` by ring over the live taps only."""
    kept = np.where(live, mask, np.nan)
    ring = ratio_by_ring(np.where(live, mask, prior), prior)  # dead taps at M/P = 1, then dropped below
    axes = [np.arange(k, dtype=np.float64) - (k - 1) / 2 for k in mask.shape]
    dist = np.rint(np.sqrt(sum(g * g for g in np.meshgrid(*axes, indexing="ij")))).astype(np.int64)
    live_rings = {int(r) for r in np.unique(dist[live])}
    by_ring = {k: [v for r, v in zip(ring["ring"], ring[k]) if r in live_rings] for k in ("mean", "min", "max")}
    by_ring["ring"] = sorted(live_rings)
    # min/max over live taps only (a ring may be partly dead): recompute them from the live values
    ratio = kept / prior
    for i, r in enumerate(by_ring["ring"]):
        values = ratio[(dist == r) & live]
        by_ring["mean"][i], by_ring["min"][i], by_ring["max"][i] = (float(values.mean()), float(values.min()),
                                                                    float(values.max()))
    return {
        "feature_size": list(feature_size),
        "live_taps": int(live.sum()),
        "dead_taps": int(live.size - live.sum()),
        "live_fraction": float(live.mean()),
        "abs_mask_on_live": float(np.abs(mask[live]).sum() / np.abs(mask).sum()),
        "ratio_by_ring_live": by_ring,
    }


def _conv_name(mask_module_name: str) -> str:
    """The conv a mask belongs to: ``X.modulation`` (RepLKConv3d) or ``X.parametrizations.weight.0``."""
    return mask_module_name.removesuffix(".parametrizations.weight.0").removesuffix(".modulation")


def _feature_sizes(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, list[int]]:
    """Spatial size of the input map of every masked conv for one ``input_size`` volume (a forward pass on zeros)."""
    sizes: dict[str, list[int]] = {}
    hooks = []
    for name, module in model.named_modules():
        if not isinstance(module, ModulatedKernelParam):
            continue
        conv_name = _conv_name(name)

        def hook(mod: nn.Module, args: tuple, conv_name: str = conv_name) -> None:
            sizes[conv_name] = list(args[0].shape[2:])
        hooks.append(model.get_submodule(conv_name).register_forward_pre_hook(hook))
    param = next(iter(model.parameters()))
    in_chans = getattr(model, "in_chans", 1)
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros((1, in_chans, *input_size), device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return sizes


@torch.no_grad()
def mask_report(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> dict[str, dict[str, Any]]:
    """Per masked block (keyed by module name): the mask ``M`` and prior ``P`` as ``[kd, kh, kw]`` float64 arrays,
    ``M/P`` by ring (:func:`ratio_by_ring`), the block's ``mask_stats()``, mode and form.

    With ``input_size`` (the ``D, H, W`` of the model's input), each block also gets ``"live"``: the size of the map
    its conv sees, its live and dead taps (:func:`live_taps`: at 64³ a 21³ kernel at 1/16 resolution touches data
    with 7³ of its 21³ taps), the share of ``|M|`` on live taps, and ``M/P`` by ring over live taps only -- the
    numbers a statement about what the mask does to the data should use.

    Raises :class:`~rep3d.errors.Rep3DValueError` for a model with no mask (unmodulated, CSLA or deployed: there is
    no mask left to show).
    """
    report = {}
    sizes = _feature_sizes(model, input_size) if input_size is not None else {}
    for name, module in model.named_modules():
        if not isinstance(module, ModulatedKernelParam):
            continue
        mask = module.mask()[0, 0].double().cpu().numpy()
        prior = module.prior_volume()[0, 0].double().cpu().numpy()
        report[name.removesuffix(".modulation")] = {
            "mode": module.modulation,
            "mask_form": module.mask_form if module.generator is not None else None,
            "kernel_size": list(module.kernel_size),
            "mask": mask,
            "prior": prior,
            "ratio_by_ring": ratio_by_ring(mask, prior),
            "mask_stats": module.mask_stats(),
        }
        conv_name = _conv_name(name)
        if conv_name in sizes:
            live = live_taps(list(module.kernel_size), sizes[conv_name])
            report[name.removesuffix(".modulation")]["live"] = _live_summary(mask, prior, live, sizes[conv_name])
    if not report:
        raise Rep3DValueError(f"{type(model).__name__} has no receptive-field mask (an unmodulated, CSLA or deployed "
                              "model); rep3d masks needs an lrbm or fixed model in training form")
    return report
