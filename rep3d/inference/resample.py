"""Grids: the affine of the model's grid, and the way back from it to the input's grid (bilinear resampling of the
softmax, then argmax)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rep3d.errors import Rep3DValueError


def model_grid_affine(orientation: str, spacing: Sequence[float]) -> np.ndarray:
    """Affine ``[4, 4]`` of an array whose axes already follow ``orientation`` (e.g. ``"RAS"``, ``"LPS"``)
    with voxel size ``spacing``: the grid on which ``Orientation`` and ``Spacing`` change nothing."""
    axis = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
    codes = orientation.upper()
    if len(codes) != 3 or sorted(axis[c][0] for c in codes if c in axis) != [0, 1, 2]:
        raise Rep3DValueError(f"orientation must be 3 axis codes like 'RAS' or 'LPS', got {orientation!r}")
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for i, (code, step) in enumerate(zip(codes, spacing, strict=True)):
        world, sign = axis[code]
        affine[world, i] = sign * float(step)
    return affine



def to_input_grid(
    probs: torch.Tensor,
    grid_affine: np.ndarray,
    in_affine: np.ndarray,
    in_shape: tuple[int, int, int],
    *,
    keep: bool,
    slab_voxels: int = 1 << 20,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample softmax ``probs [K, *grid]`` (voxel -> world ``grid_affine``) bilinearly onto the input grid
    (``in_affine``, ``in_shape``) and take the argmax; slab by slab along the first axis to bound memory: a slab of
    ``slab_voxels`` input voxels holds about ``84 + 4 K`` bytes per voxel of float64 coordinates and float32
    samples, so the default keeps the way back near 100 MiB for ten classes.
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

