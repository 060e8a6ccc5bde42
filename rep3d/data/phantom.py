"""Synthetic CT-like abdominal phantoms (the ``rep3d phantom`` command writes them as a dataset).

Everything here is **synthetic**: no patient data, no anatomy beyond cartoon geometry. The phantom is
built so that one pair of classes -- the right and left kidney -- is drawn from one shape/intensity
distribution that is symmetric under left-right mirroring: a kidney seen on its own carries no information
about its side. Telling them apart needs context (which side of the spine, liver or spleen next to it), i.e.
a wide receptive field.

Axis convention (the same as nibabel and MONAI's ``LoadImage`` for NIfTI, minus the channel axis): arrays
are indexed ``[X, Y, Z]`` = ``[i, j, k]`` and the returned affine maps ``(i, j, k, 1)`` to RAS+ world
millimetres: +X towards the patient's right, +Y anterior, +Z superior. So the right kidney has world
``x > 0`` and array index ``i > X/2``; the liver sits at high ``i``, the spleen at low ``i``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from rep3d.data.phantom_geometry import BodyFrame, ellipsoid, gaussian_blur, paint, random_modes, random_rotation
from rep3d.errors import Rep3DValueError
from rep3d.presets import PHANTOM, PHANTOM_CLASSES

PHANTOM_HU: dict[str, float] = {
    # organs (labelled); mean HU before the per-volume jitter of +-``ORGAN_HU_JITTER``
    "liver": 60.0,
    "spleen": 45.0,
    "right_kidney": 150.0,
    "left_kidney": 150.0,
    "aorta": 200.0,
    "pancreas": 100.0,
    "stomach": 20.0,
    "bladder": 5.0,
    # background tissues (label 0)
    "air": -1000.0,
    "subcutaneous_fat": -100.0,
    "visceral_fat": -70.0,
    "muscle": 45.0,
    "bowel": 30.0,
    "bone_cortex": 700.0,
    "bone_marrow": 250.0,
}
"""Mean Hounsfield units per tissue, before partial-volume blur and noise."""

ORGAN_HU_JITTER = 5.0
"""Standard deviation (HU) of the per-volume, per-organ shift of the organ mean (default setting)."""

SOFT_TISSUE_HU = 50.0
"""Reference intensity that a setting's ``organ_contrast`` pulls the organ means towards."""


@dataclass(frozen=True)
class PhantomSetting:
    """How hard a phantom is to segment; the anatomy (shapes, positions, random draws) is the same in every setting.

    Attributes:
        name: the key in :data:`PHANTOM_SETTINGS`.
        organ_contrast: organ mean HU become ``SOFT_TISSUE_HU + organ_contrast * (PHANTOM_HU[organ] - SOFT_TISSUE_HU)``;
            below 1 the organs move towards each other and towards muscle and bowel.
        organ_jitter: standard deviation (HU) of the per-volume shift of each organ's mean.
        noise_range: white-noise standard deviation (HU) drawn uniformly from this range per volume.
        shared_intensity: ``{organ: other}``: ``organ`` takes ``other``'s mean intensity, so only shape and
            position tell the two apart.
    """

    name: str
    organ_contrast: float = 1.0
    organ_jitter: float = ORGAN_HU_JITTER
    noise_range: tuple[float, float] = (10.0, 20.0)
    shared_intensity: tuple[tuple[str, str], ...] = ()


PHANTOM_SETTINGS: dict[str, PhantomSetting] = {
    "default": PhantomSetting("default"),
    # Low contrast, heavy noise, overlapping organ intensities and a second position-only pair (spleen looks like
    # liver): local texture says little, so a model has to use context. The ablation study trains on this setting.
    "hard": PhantomSetting("hard", organ_contrast=0.35, organ_jitter=10.0, noise_range=(35.0, 50.0),
                           shared_intensity=(("spleen", "liver"),)),
}
"""Named phantom settings; ``default`` is the one the demo and the bundled weights use."""


def get_phantom_setting(setting: str | PhantomSetting) -> PhantomSetting:
    """``setting`` itself, or the entry of :data:`PHANTOM_SETTINGS` it names (a clear error otherwise)."""
    if isinstance(setting, PhantomSetting):
        return setting
    try:
        return PHANTOM_SETTINGS[setting]
    except KeyError:
        raise Rep3DValueError(
            f"unknown phantom setting {setting!r}; choose one of {sorted(PHANTOM_SETTINGS)}"
        ) from None


DEFAULT_SHAPE = (96, 96, 80)
DEFAULT_SPACING = PHANTOM.spacing
FIELD_OF_VIEW_MM = tuple(n * s for n, s in zip(DEFAULT_SHAPE, DEFAULT_SPACING))
"""(192, 192, 200) mm: the extent of the default phantom, and of every phantom the bundled ``rep3d_tiny.phantom``
weights were trained and tested on. The anatomy fills the field of view whatever its size, so organs have the size
that model expects only at this field of view."""
DEFAULT_WINDOW = PHANTOM.intensity_window
"""The CT window of the paper's recipe ([-125, 275] HU); use it to display or normalise phantoms."""


class Phantom(NamedTuple):
    """One synthetic volume. ``image``: float32 HU ``[X, Y, Z]``; ``label``: uint8 ``[X, Y, Z]`` with values
    indexing :data:`PHANTOM_CLASSES`; ``affine``: float64 ``[4, 4]`` voxel -> RAS+ mm."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


def phantom_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """RAS+ affine ``[4, 4]`` with voxel ``spacing`` (mm) and the volume centre at world (0, 0, 0)."""
    aff = np.diag([*map(float, spacing), 1.0])
    aff[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1) / 2 * np.asarray(spacing, dtype=np.float64)
    return aff


def _body_and_wall(rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...],
                   affine: np.ndarray) -> tuple[BodyFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Random body pose and size with a smooth warp; paints fat, muscle, ribs and spine into air. Returns
    ``(body, abdominal cavity mask, label [X, Y, Z] uint8, hu [X, Y, Z] float32)``."""
    fov_half = np.asarray(shape) * np.asarray(spacing) / 2

    # ---- body pose and size (random), global smooth warp
    half_axes = (fov_half[0] * rng.uniform(0.78, 0.88), fov_half[1] * rng.uniform(0.62, 0.74), fov_half[2])
    centre = (
        fov_half[0] * rng.uniform(-0.04, 0.04),
        fov_half[1] * rng.uniform(-0.04, 0.04),
        fov_half[2] * rng.uniform(-0.05, 0.05),
    )
    theta = math.radians(rng.uniform(-8, 8))
    body = BodyFrame(shape, affine, centre, theta, half_axes, random_modes(rng, 4, 0.035, (1.0, 2.5)))
    ux, uy, uz = body.u

    label = np.zeros(shape, dtype=np.uint8)
    hu = np.full(shape, PHANTOM_HU["air"], dtype=np.float32)

    # ---- body wall: fat, muscle, rib cage (a bone ring with intercostal gaps), visceral fat inside
    r = np.sqrt(ux**2 + uy**2)
    fat_out, muscle_out, rib_out = 1.0, rng.uniform(0.84, 0.89), rng.uniform(0.76, 0.80)
    rib_in = rib_out - rng.uniform(0.035, 0.05)
    rib_top = rng.uniform(-0.25, 0.0)
    rib_period, rib_phase = rng.uniform(0.09, 0.12), rng.uniform(0, 2 * math.pi)
    hu[r < fat_out] = PHANTOM_HU["subcutaneous_fat"]
    hu[r < muscle_out] = PHANTOM_HU["muscle"]
    hu[r < rib_out] = PHANTOM_HU["visceral_fat"]
    ribs = (
        (r >= rib_in)
        & (r < rib_out)
        & (uz > rib_top)
        & (np.sin(2 * math.pi * uz / rib_period + rib_phase) > -0.2)
    )
    hu[ribs] = PHANTOM_HU["bone_cortex"]
    cavity = r < rib_in  # organs are clipped to the abdominal cavity

    # ---- spine: vertebral body (cortex ring, marrow) at the back, constant along z
    spine_c = (rng.uniform(-0.02, 0.02), rng.uniform(-0.66, -0.60))
    spine_r = (rng.uniform(0.13, 0.16), rng.uniform(0.17, 0.21))
    rs = np.sqrt(((ux - spine_c[0]) / spine_r[0]) ** 2 + ((uy - spine_c[1]) / spine_r[1]) ** 2)
    hu[rs < 1.0] = PHANTOM_HU["bone_cortex"]
    hu[rs < 0.75] = PHANTOM_HU["bone_marrow"]
    del r, rs, ribs
    return body, cavity, label, hu


class _Painter:
    """Paints organs into ``label`` / ``hu`` within the abdominal cavity; every random choice comes from ``rng``."""

    def __init__(self, rng: np.random.Generator, body: BodyFrame, cavity: np.ndarray, label: np.ndarray,
                 hu: np.ndarray, setting: PhantomSetting) -> None:
        self.rng, self.body, self.cavity, self.label, self.hu = rng, body, cavity, label, hu
        self.setting = setting

    def organ_hu(self, name: str) -> float:
        setting = self.setting
        mean = PHANTOM_HU[dict(setting.shared_intensity).get(name, name)]
        mean = SOFT_TISSUE_HU + setting.organ_contrast * (mean - SOFT_TISSUE_HU)
        return mean + self.rng.normal(0.0, setting.organ_jitter)

    def ellipsoid(self, name, centre_u, half_u, max_rot, warp_amp=0.12, exponent=2.0, value=None) -> None:
        """A warped ellipsoid (``exponent`` > 2: boxier) with jittered centre, scaled half-axes, random rotation."""
        rng = self.rng
        c = np.asarray(centre_u, dtype=np.float64) + rng.uniform(-0.04, 0.04, size=3)
        h = np.asarray(half_u, dtype=np.float64) * rng.uniform(1 - 0.15, 1 + 0.15, size=3)
        rot, modes = random_rotation(rng, max_rot), random_modes(rng, 3, warp_amp, (1.0, 3.0))
        box = self.body.box(c, float(h.max()))
        inside = (ellipsoid(self.body.sub(box), c, h, rot, modes, exponent) < 1.0) & self.cavity[box]
        lab = PHANTOM_CLASSES.index(name) if name in PHANTOM_CLASSES else None
        paint(self.label, self.hu, box, inside, lab, self.organ_hu(name) if value is None else value)

    def organs(self, bowel_loops: int) -> None:
        """Bowel clutter, then the labelled organs in priority order (later overwrite earlier where they touch)."""
        rng, ellipsoid = self.rng, self.ellipsoid
        # ---- unlabelled clutter first: bowel loops (organs painted later overwrite them)
        for _ in range(bowel_loops):
            c = (rng.uniform(-0.35, 0.35), rng.uniform(0.05, 0.45), rng.uniform(-0.45, 0.05))
            ellipsoid(
                "bowel", c, (0.12, 0.12, 0.10), (30, 30, 30), 0.15, value=PHANTOM_HU["bowel"] + rng.normal(0, 5)
            )

        # ---- organs, painted in priority order (later overwrite earlier where they touch)
        ellipsoid("stomach", (-0.28, 0.32, 0.50), (0.28, 0.24, 0.26), (15, 15, 20))
        ellipsoid("spleen", (-0.50, -0.15, 0.50), (0.16, 0.28, 0.26), (10, 10, 20))
        self.pancreas()
        ellipsoid("liver", (0.38, 0.05, 0.45), (0.42, 0.50, 0.40), (10, 10, 15), 0.12, exponent=2.6)

        # kidneys: ONE distribution, mirrored in x -> locally indistinguishable, differ only by side
        for name, side in (("right_kidney", 1.0), ("left_kidney", -1.0)):
            ellipsoid(name, (side * 0.42, -0.32, -0.05), (0.19, 0.20, 0.30), (12, 12, 12), 0.10)
        ellipsoid("bladder", (0.0, 0.25, -0.72), (0.28, 0.27, 0.20), (5, 5, 10), 0.10)
        self.aorta()

    def pancreas(self) -> None:
        rng, body = self.rng, self.body
        # pancreas: a curved tube running across the body, thicker at the head (patient's right)
        x_tail, x_head = -0.42 + rng.uniform(-0.04, 0.04), 0.18 + rng.uniform(-0.04, 0.04)
        y0, z0 = rng.uniform(-0.04, 0.04), rng.uniform(-0.02, 0.06)
        ay, az, wy, wz = rng.uniform(-0.06, 0.06), rng.uniform(-0.05, 0.05), rng.uniform(3, 6), rng.uniform(3, 6)
        r_tail, r_head = rng.uniform(0.09, 0.11), rng.uniform(0.13, 0.15)
        box = body.box(((x_tail + x_head) / 2, y0, z0), (x_head - x_tail) / 2 + r_head)
        sx, sy, sz = body.sub(box)
        t = np.clip((sx - x_tail) / (x_head - x_tail), 0, 1)
        rad = (r_tail + (r_head - r_tail) * t).astype(np.float32)
        fy = (sy - (y0 + ay * np.sin(wy * sx))) / rad
        fz = (sz - (z0 + az * np.sin(wz * sx))) / (rad * np.float32(1.3 * body.half_axes[1] / body.half_axes[2]))
        ends = np.maximum(0, (x_tail - sx) / rad) ** 2 + np.maximum(0, (sx - x_head) / rad) ** 2
        inside = (fy**2 + fz**2 + ends < 1.0) & self.cavity[box]
        paint(self.label, self.hu, box, inside, PHANTOM_CLASSES.index("pancreas"), self.organ_hu("pancreas"))

    def aorta(self) -> None:
        rng, body = self.rng, self.body
        # aorta: a wavy tube along z, left-anterior of the spine, ending above the pelvis with a rounded cap
        x0, y0 = rng.uniform(-0.12, -0.06), rng.uniform(-0.34, -0.28)
        z_end = rng.uniform(-0.60, -0.50)
        box = body.box((x0, y0, 0.2), 1.25)
        sx, sy, sz = body.sub(box)
        r0 = rng.uniform(0.10, 0.12)
        rx = r0 * body.half_axes[1] / body.half_axes[0]  # round in mm
        cx = x0 + rng.uniform(0.01, 0.03) * np.sin(rng.uniform(2, 4) * sz + rng.uniform(0, 6.3))
        cy = y0 + rng.uniform(0.01, 0.03) * np.sin(rng.uniform(2, 4) * sz + rng.uniform(0, 6.3))
        cap = np.maximum(0, (z_end - sz) / (r0 * body.half_axes[1] / body.half_axes[2])) ** 2
        inside = (((sx - cx) / rx) ** 2 + ((sy - cy) / r0) ** 2 + cap < 1.0) & self.cavity[box]
        paint(self.label, self.hu, box, inside, PHANTOM_CLASSES.index("aorta"), self.organ_hu("aorta"))


def spacing_for_shape(shape: Sequence[int]) -> tuple[float, float, float]:
    """The voxel spacing (mm) at which a phantom of ``shape`` covers :data:`FIELD_OF_VIEW_MM`, i.e. has organs of the
    size the bundled model expects: ``(4.0, 4.0, 5.0)`` for ``(48, 48, 40)``."""
    return tuple(float(fov / n) for fov, n in zip(FIELD_OF_VIEW_MM, shape))


def make_phantom(
    seed: int | Sequence[int] | np.random.SeedSequence,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | None = None,
    *,
    noise_std: float | None = None,
    blur_sigma: float = 0.6,
    bowel_loops: int = 5,
    setting: str | PhantomSetting = "default",
) -> Phantom:
    """Generate one synthetic CT-like abdomen: image (HU) + label map (:data:`PHANTOM_CLASSES`) + RAS affine.

    Args:
        seed: anything ``numpy.random.default_rng`` accepts; the result is a pure function of it (and the
            other arguments), identical across processes and runs.
        shape: ``(X, Y, Z)`` voxels. The anatomy is defined relative to the field of view, so any shape works;
            keep it >= 32 per axis for recognisable organs.
        spacing: voxel size in mm along X, Y, Z. Default: :func:`spacing_for_shape` (``(2, 2, 2.5)`` at the default
            shape), which keeps the field of view, and so the organ sizes, those ``rep3d_tiny.phantom`` was
            trained on. An explicit spacing changes the field of view ``shape * spacing``, and the anatomy shrinks
            or grows with it: a model trained on other phantoms will not segment those.
        noise_std: white-noise standard deviation in HU; ``None`` draws it from the setting's ``noise_range``
            ([10, 20] by default).
        blur_sigma: partial-volume blur (Gaussian sigma in voxels) applied to the HU map before the noise.
        bowel_loops: number of unlabelled soft-tissue blobs (clutter) in the lower abdomen.
        setting: a :data:`PHANTOM_SETTINGS` name or a :class:`PhantomSetting`: contrast, noise and which organs
            share an intensity. The anatomy of a seed is the same in every setting.

    Returns:
        :class:`Phantom` ``(image float32 [X, Y, Z] HU, label uint8 [X, Y, Z], affine float64 [4, 4])``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3 and spacing is None:
        spacing = spacing_for_shape(shape)
    spacing = tuple(float(s) for s in spacing) if spacing is not None else ()
    if len(shape) != 3 or min(shape) < 8:
        raise Rep3DValueError(f"make_phantom: shape must be 3 ints >= 8 (X, Y, Z), got {shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise Rep3DValueError(f"make_phantom: spacing must be 3 positive floats in mm, got {spacing}")
    setting = get_phantom_setting(setting)
    rng = np.random.default_rng(seed)
    affine = phantom_affine(shape, spacing)
    # the order of the random draws below is part of each phantom's definition: keep it when editing
    painter = _Painter(rng, *_body_and_wall(rng, shape, spacing, affine), setting)
    painter.organs(bowel_loops)
    label, hu = painter.label, painter.hu

    # ---- partial-volume blur, then noise
    image = gaussian_blur(hu, blur_sigma)
    sigma = rng.uniform(*setting.noise_range) if noise_std is None else float(noise_std)
    image += rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)
    return Phantom(image.astype(np.float32, copy=False), label, affine)


def case_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """Seed of case ``index`` of ``split`` ("train" / "test" / "demo"): independent of how many cases are written,
    so adding training cases never changes the test set, and the demo's phantom is in neither."""
    return np.random.SeedSequence([int(seed), {"train": 0, "test": 1, "demo": 2}[split], int(index)])
