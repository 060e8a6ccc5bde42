"""Dataset presets: how the volumes of one kind of data are brought onto a model's grid, in one table.

A preset fixes what a model trained on that data expects: modality, voxel spacing (mm, along the oriented axes),
orientation (axis codes), intensity window (mapped linearly to ``[0, 1]`` with clipping), ROI (the training crop
and sliding-window size, voxels) and, where the label set is fixed, the class names (index = label value).

The model cfgs (``rep3d.models.zoo``), the training recipes (``rep3d.train.recipes``), the :class:`Predictor`'s
fallbacks, the figures and the demo all read these values from here.

The paper's recipe (arXiv 2505.19603): CT at 1.5 x 1.5 x 2.0 mm in RAS, window [-125, 275] HU; MRI at 1 mm,
[0, 1000]; MSD hepatic vessel [0, 230]; 96³ crops. rep3d's synthetic phantom is CT-like, written at
2.0 x 2.0 x 2.5 mm, and trained on 64³ crops.

This module imports nothing from rep3d but :mod:`rep3d.errors`: the models import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from rep3d.errors import Rep3DValueError

DEFAULT_ROI: tuple[int, int, int] = (96, 96, 96)
"""The paper's crop / sliding-window size; the ROI of every preset and model cfg that does not say otherwise."""

PHANTOM_CLASSES: tuple[str, ...] = (
    "background",
    "liver",
    "spleen",
    "right_kidney",
    "left_kidney",
    "aorta",
    "pancreas",
    "stomach",
    "bladder",
)
"""Label value -> class name of rep3d's synthetic phantom (index = label value)."""


@dataclass(frozen=True)
class Preset:
    """Preprocessing facts of one kind of data (see the module docstring for units)."""

    modality: str
    spacing: tuple[float, float, float]
    intensity_window: tuple[float, float]
    orientation: str = "RAS"
    roi_size: tuple[int, int, int] = DEFAULT_ROI
    class_names: tuple[str, ...] | None = field(default=None)

    def model_cfg(self) -> dict:
        """The rep3d keys of a model cfg (``modality``, ``spacing``, ``intensity_window``, ``orientation``,
        ``roi_size``, and ``class_names`` when the preset has them)."""
        cfg = dict(modality=self.modality, spacing=self.spacing, intensity_window=self.intensity_window,
                   orientation=self.orientation, roi_size=self.roi_size)
        if self.class_names is not None:
            cfg["class_names"] = list(self.class_names)
        return cfg

    def recipe_values(self) -> dict:
        """The :class:`rep3d.train.TrainConfig` fields a preset sets (spacing, window, orientation)."""
        return dict(spacing=self.spacing, intensity_window=self.intensity_window, orientation=self.orientation)


_CT = Preset(modality="CT", spacing=(1.5, 1.5, 2.0), intensity_window=(-125.0, 275.0))

PRESETS: dict[str, Preset] = {
    "amos_ct": _CT,
    "amos_mri": Preset(modality="MRI", spacing=(1.0, 1.0, 1.0), intensity_window=(0.0, 1000.0)),
    "kits": _CT,
    "msd_pancreas": _CT,
    "msd_hepatic_vessel": replace(_CT, intensity_window=(0.0, 230.0)),
    "phantom": Preset(modality="CT", spacing=(2.0, 2.0, 2.5), intensity_window=(-125.0, 275.0),
                      roi_size=(64, 64, 64), class_names=PHANTOM_CLASSES),
}
"""Preset name -> :class:`Preset`. ``amos_ct`` is the paper's main recipe and the default of the model cfgs."""

PAPER_CT = PRESETS["amos_ct"]
PHANTOM = PRESETS["phantom"]

MODALITY_WINDOWS: dict[str, tuple[float, float]] = {"CT": _CT.intensity_window, "MRI": (0.0, 1000.0)}
"""Intensity window by modality, for a model cfg that names its modality but has no window."""


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a :class:`rep3d.errors.Rep3DValueError` naming the choices otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise Rep3DValueError(f"unknown dataset preset {name!r}; choose one of {sorted(PRESETS)}") from None


__all__ = ["DEFAULT_ROI", "MODALITY_WINDOWS", "PAPER_CT", "PHANTOM", "PHANTOM_CLASSES", "PRESETS", "Preset",
           "get_preset"]
