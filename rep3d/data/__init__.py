"""Data: the synthetic phantom generator, MSD-layout datasets (write / read), and overlay figures."""

from rep3d.data.figures import save_overlay_png
from rep3d.data.msd import MSDDataset, MSDLayoutError, load_msd_dataset
from rep3d.data.nifti import save_nifti
from rep3d.data.phantom import (
    DEFAULT_SPACING,
    DEFAULT_WINDOW,
    FIELD_OF_VIEW_MM,
    PHANTOM_CLASSES,
    PHANTOM_HU,
    PHANTOM_SETTINGS,
    Phantom,
    PhantomSetting,
    make_phantom,
    spacing_for_shape,
)
from rep3d.data.phantom_dataset import write_msd_dataset

__all__ = [
    "DEFAULT_SPACING",
    "DEFAULT_WINDOW",
    "FIELD_OF_VIEW_MM",
    "MSDDataset",
    "MSDLayoutError",
    "PHANTOM_CLASSES",
    "PHANTOM_HU",
    "PHANTOM_SETTINGS",
    "Phantom",
    "PhantomSetting",
    "load_msd_dataset",
    "make_phantom",
    "save_nifti",
    "save_overlay_png",
    "spacing_for_shape",
    "write_msd_dataset",
]
