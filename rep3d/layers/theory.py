"""Learning-rate fields induced by re-parameterization, as pure functions (docs/design.md, "Learning-rate fields").

Training a re-parameterized kernel is equivalent to training the merged kernel ``W'`` with an element-wise learning
rate. These fields are what the Rep3D mask makes explicit; tests check them against real optimizer trajectories.
"""

from collections.abc import Sequence
from typing import Literal

import torch

from rep3d.errors import Rep3DValueError
from rep3d.layers.checks import kernel_size_3d
from rep3d.layers.fusion import pad_kernel

Optimizer = Literal["sgd", "adam"]


def csla_lr_field(
    kernel_size: int | Sequence[int],
    small_kernel: int | Sequence[int],
    a_large: float,
    a_small: float,
    lr_large: float,
    lr_small: float,
    optimizer: Optimizer = "sgd",
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Element-wise learning rate on ``W' = a_L W_L + a_S pad(W_S)`` equivalent to training both branches.

    SGD (momentum allowed, no weight decay): ``a_L² lr_L + a_S² lr_S · C``; Adam with ``eps = 0``:
    ``|a_L| lr_L + |a_S| lr_S · C``, where ``C`` is the indicator of the central small kernel. Shape ``[kd, kh, kw]``.
    """
    centre = pad_kernel(torch.ones(1, 1, *kernel_size_3d(small_kernel), dtype=dtype), kernel_size)[0, 0]
    if optimizer == "sgd":
        return a_large**2 * lr_large + a_small**2 * lr_small * centre
    if optimizer == "adam":
        return abs(a_large) * lr_large + abs(a_small) * lr_small * centre
    raise Rep3DValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")


def mask_lr_field(mask: torch.Tensor, lr: float, optimizer: Optimizer = "sgd") -> torch.Tensor:
    """Element-wise learning rate on ``W_eff = M ⊙ W`` for a constant mask: SGD ``lr · M²``, Adam (eps = 0)
    ``lr · |M|``."""
    if optimizer == "sgd":
        return lr * mask**2
    if optimizer == "adam":
        return lr * mask.abs()
    raise Rep3DValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")

