"""Teacher-kernel experiments: does a large kernel learn its centre before its periphery, and does it train stably?

A single :class:`~rep3d.layers.RepLKConv3d` (no BatchNorm, so its folded kernel is directly comparable) learns to
reproduce a depthwise conv with a known random teacher kernel from random inputs. The *effective* kernel (the
layer's :meth:`~rep3d.layers.RepLKConv3d.fused_kernel`: ``W * M``, plus the padded small branch for CSLA) is compared
with the teacher ring by ring (:func:`ring_errors`) as training goes on. :func:`stability_sweep` repeats short runs
over learning rates and seeds and reports how often each variant diverges and how much its final loss varies.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rep3d.errors import Rep3DValueError
from rep3d.layers import MASK_FORMS, RepLKConv3d, depthwise_conv3d, distance_prior, pad_kernel

VARIANTS: tuple[str, ...] = (*(f"lrbm-{form}" for form in MASK_FORMS), "fixed", "vanilla", "csla")
"""Student layers: ``lrbm-<mask_form>`` (learnable mask), ``fixed`` (M = P), ``vanilla`` (no mask), ``csla``
(large kernel + parallel 3³ branch)."""
TEACHER_ENVELOPES: tuple[str, ...] = ("uniform", "prior")


def student_layer(variant: str, channels: int, kernel_size: int, *, conv_backend: str = "fft") -> RepLKConv3d:
    """The student :class:`RepLKConv3d` of ``variant`` (no BatchNorm, no bias)."""
    if variant not in VARIANTS:
        raise Rep3DValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    kwargs: dict[str, Any] = dict(norm=False, conv_backend=conv_backend)
    if variant.startswith("lrbm-"):
        kwargs.update(modulation="lrbm", mask_form=variant.removeprefix("lrbm-"))
    elif variant == "fixed":
        kwargs.update(modulation="fixed")
    else:
        kwargs.update(modulation=None, small_kernel=3 if variant == "csla" else None)
    return RepLKConv3d(channels, kernel_size, **kwargs)


def ring_index(kernel_size: Sequence[int]) -> np.ndarray:
    """Ring of each kernel offset: its Euclidean distance from the centre, rounded (``[kd, kh, kw]`` ints)."""
    axes = [np.arange(k, dtype=np.float64) - (k - 1) / 2 for k in kernel_size]
    grids = np.meshgrid(*axes, indexing="ij")
    return np.rint(np.sqrt(sum(g * g for g in grids))).astype(np.int64)


def ring_errors(kernel: np.ndarray | torch.Tensor, teacher: np.ndarray | torch.Tensor) -> np.ndarray:
    """Relative error per distance ring: ``||K - T||_ring / ||T||_ring`` over all channels, ring r = 0, 1, ...

    ``kernel`` and ``teacher`` are ``[C, 1, kd, kh, kw]`` (or any shape ending in the three kernel axes).
    """
    k = np.asarray(kernel.detach().cpu() if isinstance(kernel, torch.Tensor) else kernel, dtype=np.float64)
    t = np.asarray(teacher.detach().cpu() if isinstance(teacher, torch.Tensor) else teacher, dtype=np.float64)
    if k.shape != t.shape or k.ndim < 3:
        raise Rep3DValueError(f"ring_errors: kernel {k.shape} and teacher {t.shape} must have one shape, >= 3-D")
    ring = np.broadcast_to(ring_index(k.shape[-3:]), k.shape).ravel()
    err = np.bincount(ring, weights=((k - t) ** 2).ravel())
    ref = np.bincount(ring, weights=(t**2).ravel())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(err / ref)


def teacher_kernel(channels: int, kernel_size: int, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                   envelope: str = "uniform") -> torch.Tensor:
    """A seeded random teacher ``[C, 1, k, k, k]``, i.i.d. normal, scaled to unit output variance for unit-variance
    input. ``envelope="uniform"``: the same scale at every offset, so that no ring starts easier (and the prior of a
    masked student is no help); ``"prior"``: multiplied by the distance prior ``P`` (the kind of kernel the prior
    assumes, large at the centre and decaying outwards)."""
    if envelope not in TEACHER_ENVELOPES:
        raise Rep3DValueError(f"teacher envelope must be one of {TEACHER_ENVELOPES}, got {envelope!r}")
    gen = torch.Generator().manual_seed(10_000 + seed)
    kernel = torch.randn((channels, 1, kernel_size, kernel_size, kernel_size), generator=gen, dtype=torch.float64)
    if envelope == "prior":
        kernel = kernel * distance_prior(kernel_size, dtype=torch.float64)
    # unit output variance: sum of squared weights per channel = 1 in expectation
    scale = (kernel.pow(2).sum(dim=(1, 2, 3, 4)).mean()) ** -0.5
    return (kernel * scale).to(dtype)


@torch.no_grad()
def set_effective_kernel(layer: RepLKConv3d, kernel: torch.Tensor) -> None:
    """Set ``layer``'s large weight so that its effective kernel equals ``kernel`` (mask and small branch as they
    are). Refuses a mask with zeros, which no weight can undo."""
    target = kernel.to(layer.weight.dtype)
    if layer.small_weight is not None:
        target = target - pad_kernel(layer.small_weight, layer.kernel_size)
    if getattr(layer, "modulation", None) is not None:
        mask = layer.modulation.mask().to(target.dtype)
        if (mask == 0).any():
            raise Rep3DValueError("set_effective_kernel: the mask has zeros; no weight reaches those offsets")
        target = target / mask
    layer.weight.copy_(target)


def kernel_convergence(
    variant: str,
    *,
    channels: int = 4,
    size: int = 24,
    kernel_size: int = 21,
    steps: int = 300,
    lr: float = 1e-3,
    batch_size: int = 2,
    record_every: int = 10,
    seed: int = 0,
    teacher: torch.Tensor | None = None,
    teacher_envelope: str = "uniform",
    start_at_teacher: bool = False,
    optimizer: str = "adam",
    dtype: torch.dtype = torch.float32,
    conv_backend: str = "fft",
    divergence_factor: float = 1e3,
) -> dict[str, Any]:
    """Train one student layer of ``variant`` to reproduce ``y = depthwise_conv3d(x, teacher)`` (MSE loss,
    fresh ``[batch_size, channels, size³]`` standard-normal inputs each step) and record the error of its effective
    kernel per distance ring.

    Args:
        variant: one of :data:`VARIANTS`.
        teacher: ``[C, 1, k, k, k]``; default :func:`teacher_kernel` (seeded by ``seed``, ``teacher_envelope``).
        start_at_teacher: set the student's effective kernel to the teacher before training, and use that folded
            kernel (equal to ``teacher`` up to rounding) as the teacher: a check of the instrument, whose loss,
            gradient and ring errors are then exactly zero at every step.
        optimizer: ``"adam"`` (default) or ``"sgd"`` (no momentum), both without weight decay.
        conv_backend: the engine for student and teacher; keep ``"fft"`` (native 21³ backward takes minutes).
        divergence_factor: stop and flag ``diverged`` when the loss is not finite or exceeds this multiple of the
            teacher output's mean square (the loss of a zero kernel) at step 0.

    Returns:
        ``{"variant", "lr", "seed", "steps": [...], "loss": [...], "ring_error": [[per ring] per record],
        "final_loss", "diverged", "wall_s", ...}``; records at step 0, every ``record_every`` steps and at the end.
        ``ring_error[i][r]`` is :func:`ring_errors` at ring ``r`` after ``steps[i]`` steps.
    """
    torch.manual_seed(seed)
    teacher_given = teacher
    student = student_layer(variant, channels, kernel_size, conv_backend=conv_backend).to(dtype)
    if teacher is None:
        teacher = teacher_kernel(channels, kernel_size, seed=seed, dtype=dtype, envelope=teacher_envelope)
    teacher = teacher.to(dtype)
    if tuple(teacher.shape) != (channels, 1, kernel_size, kernel_size, kernel_size):
        raise Rep3DValueError(f"kernel_convergence: teacher must be [{channels}, 1, {kernel_size}, {kernel_size}, "
                              f"{kernel_size}], got {tuple(teacher.shape)}")
    if start_at_teacher:
        set_effective_kernel(student, teacher)
        # W = T / M gives W * M = T only up to rounding, and Adam turns rounding-level gradients (|g| << eps) into
        # steps of lr * g / eps, which grow geometrically; the exact answer as the student represents it is its own
        # fused kernel, so that is the teacher of this check.
        teacher = student.fused_kernel()[0]
    if optimizer not in ("adam", "sgd"):
        raise Rep3DValueError(f"kernel_convergence: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(student.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    record: dict[str, Any] = {"variant": variant, "lr": lr, "seed": seed, "channels": channels, "size": size,
                              "kernel_size": kernel_size, "batch_size": batch_size, "dtype": str(dtype),
                              "optimizer": optimizer, "conv_backend": conv_backend,
                              "teacher_envelope": teacher_envelope if teacher_given is None else "given",
                              "steps": [], "loss": [], "ring_error": [], "diverged": False}

    def log(step: int, loss: float) -> None:
        record["steps"].append(step)
        record["loss"].append(loss)
        record["ring_error"].append(ring_errors(student.fused_kernel()[0], teacher).tolist())

    start = time.perf_counter()
    reference, loss_value = None, math.nan
    for step in range(steps + 1):
        x = torch.randn((batch_size, channels, size, size, size), generator=gen, dtype=dtype)
        with torch.no_grad():
            y = depthwise_conv3d(x, teacher, backend=conv_backend)
        loss = torch.nn.functional.mse_loss(student(x), y)
        loss_value = float(loss.detach())
        reference = float(y.pow(2).mean()) if reference is None else reference
        if not math.isfinite(loss_value) or loss_value > divergence_factor * reference:
            record["diverged"] = True
            log(step, loss_value)
            break
        if step % record_every == 0 or step == steps:
            log(step, loss_value)
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    record["final_loss"] = loss_value
    record["wall_s"] = time.perf_counter() - start
    return record


def stability_sweep(
    variants: Sequence[str] = VARIANTS,
    lrs: Sequence[float] = (1e-4, 3e-4, 1e-3),
    seeds: Sequence[int] = (0, 1, 2),
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`kernel_convergence` for every variant x learning rate x seed (``kwargs`` go to it). Returns
    ``{"runs": [records], "summary": {variant: {lr: {"divergence_rate", "final_loss_mean", "final_loss_var",
    "n"}}}}``; mean and variance of the final loss are over the seeds that did not diverge (``nan`` if none)."""
    runs = [kernel_convergence(v, lr=lr, seed=s, **kwargs) for v in variants for lr in lrs for s in seeds]
    return {"runs": runs, "summary": summarise_stability(runs)}


def summarise_stability(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per variant and learning rate (as ``f"{lr:g}"``): divergence rate, mean and variance (ddof 0) of the final
    loss over the non-diverged seeds, and the number of runs."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["variant"], run["lr"]), []).append(run)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (variant, lr), group in groups.items():
        finals = np.array([r["final_loss"] for r in group if not r["diverged"]], dtype=np.float64)
        out.setdefault(variant, {})[f"{lr:g}"] = {
            "divergence_rate": float(np.mean([r["diverged"] for r in group])),
            "final_loss_mean": float(finals.mean()) if finals.size else math.nan,
            "final_loss_var": float(finals.var()) if finals.size else math.nan,
            "n": len(group),
        }
    return out
