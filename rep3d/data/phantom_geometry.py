"""Geometry of the synthetic phantom: random rotations and smooth warps, the body frame (normalised coordinates on
the voxel grid), deformed ellipsoids, painting and a separable Gaussian blur. All vectorised numpy on float32 grids;
:mod:`rep3d.data.phantom` composes them into organs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["BodyFrame", "ellipsoid", "gaussian_blur", "paint", "random_modes", "random_rotation", "warp"]




def random_rotation(rng: np.random.Generator, max_deg: Sequence[float]) -> np.ndarray:
    """Random rotation R = Rz @ Ry @ Rx with angles uniform in +-max_deg (degrees) about x, y, z."""
    ax, ay, az = (math.radians(rng.uniform(-m, m)) for m in max_deg)
    cx, sx, cy, sy, cz, sz = (
        math.cos(ax),
        math.sin(ax),
        math.cos(ay),
        math.sin(ay),
        math.cos(az),
        math.sin(az),
    )
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_modes(rng: np.random.Generator, count: int, amplitude: float, freq: tuple[float, float]) -> list[tuple]:
    """``count`` random sinusoidal displacement modes: (wave vector [3], phase, amplitude vector [3])."""
    out = []
    for _ in range(count):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = direction * rng.uniform(*freq)
        out.append((k, rng.uniform(0, 2 * math.pi), rng.normal(size=3) * amplitude / math.sqrt(count)))
    return out


def warp(v: list[np.ndarray], modes: list[tuple]) -> list[np.ndarray]:
    """Smooth displacement ``v + sum_m a_m sin(k_m . v + phi_m)`` of coordinates ``v = [vx, vy, vz]``."""
    out = [c.copy() for c in v]
    for k, phase, amp in modes:
        s = np.sin(
            np.float32(k[0]) * v[0] + np.float32(k[1]) * v[1] + np.float32(k[2]) * v[2] + np.float32(phase)
        )
        for axis in range(3):
            out[axis] += np.float32(amp[axis]) * s
    return out


class BodyFrame:
    """Normalised body-frame coordinates ``u`` (body half-widths = 1, half FOV in z = 1) on the voxel grid."""

    def __init__(self, shape, affine, centre, theta, half_axes, warp_modes):
        self.shape = shape
        self.affine = affine
        self.centre = np.asarray(centre, dtype=np.float64)
        self.theta = theta
        self.half_axes = np.asarray(half_axes, dtype=np.float64)
        c, s = math.cos(theta), math.sin(theta)
        self.rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])  # body -> world
        idx = [np.arange(n, dtype=np.float32) for n in shape]
        spacing = np.diag(affine)[:3]
        world = [
            (idx[a] * np.float32(spacing[a]) + np.float32(affine[a, 3] - self.centre[a])) for a in range(3)
        ]
        wx, wy, wz = np.meshgrid(*world, indexing="ij", sparse=True)
        rt = self.rot.T.astype(np.float32)
        ux = (rt[0, 0] * wx + rt[0, 1] * wy) / np.float32(self.half_axes[0])
        uy = (rt[1, 0] * wx + rt[1, 1] * wy) / np.float32(self.half_axes[1])
        uz = np.broadcast_to(wz / np.float32(self.half_axes[2]), shape)
        ux, uy = np.broadcast_to(ux, shape), np.broadcast_to(uy, shape)
        self.u = warp([ux, uy, np.ascontiguousarray(uz)], warp_modes)

    def box(
        self, centre_u: Sequence[float], radius_u: float, margin: float = 1.35
    ) -> tuple[slice, slice, slice]:
        """Index-space bounding box of a ball of ``radius_u`` (body units) around ``centre_u``."""
        world = self.centre + self.rot @ (np.asarray(centre_u) * self.half_axes)
        spacing = np.diag(self.affine)[:3]
        index = (world - self.affine[:3, 3]) / spacing
        r_mm = (
            radius_u * margin * np.array([self.half_axes[:2].max()] * 2 + [self.half_axes[2]])
            + 0.1 * self.half_axes
        )
        r_idx = r_mm / spacing
        return tuple(
            slice(
                int(max(0, math.floor(index[a] - r_idx[a]))),
                int(min(self.shape[a], math.ceil(index[a] + r_idx[a]) + 1)),
            )
            for a in range(3)
        )

    def sub(self, box) -> list[np.ndarray]:
        return [c[box] for c in self.u]


def ellipsoid(u, centre, half_axes, rot, modes, exponent: float = 2.0) -> np.ndarray:
    """Implicit function (< 1 inside) of a deformed (super-)ellipsoid in body units."""
    d = [u[a] - np.float32(centre[a]) for a in range(3)]
    rt = rot.T.astype(np.float32)
    v = [(rt[a, 0] * d[0] + rt[a, 1] * d[1] + rt[a, 2] * d[2]) / np.float32(half_axes[a]) for a in range(3)]
    v = warp(v, modes)
    if exponent == 2.0:
        return v[0] ** 2 + v[1] ** 2 + v[2] ** 2
    e = np.float32(exponent)
    return np.abs(v[0]) ** e + np.abs(v[1]) ** e + np.abs(v[2]) ** e


def paint(label, hu, box, inside, value_label, value_hu) -> None:
    if value_label is not None:
        label[box][inside] = value_label
    hu[box][inside] = value_hu


def gaussian_blur(x: np.ndarray, sigma_vox: float) -> np.ndarray:
    """Separable Gaussian blur (edge-replicated), sigma in voxels; deterministic pure numpy."""
    if sigma_vox <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma_vox)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_vox) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    for axis in range(x.ndim):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        xp = np.pad(x, pad, mode="edge")
        out = np.zeros_like(x)
        n = x.shape[axis]
        for t, w in enumerate(taps):
            out += w * np.take(xp, np.arange(t, t + n), axis=axis)
        x = out
    return x
