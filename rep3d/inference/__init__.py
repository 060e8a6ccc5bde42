"""Inference: segment whole volumes and score them.

- :mod:`rep3d.inference.io`: read volumes, write label maps / probabilities as NIfTI.
- :mod:`rep3d.inference.preprocess`: the one preprocessing function (orientation, spacing, intensity window), shared
  with training.
- :mod:`rep3d.inference.resample`: model-grid affines, the way back to the input grid.
- :mod:`rep3d.inference.predictor`: :class:`Predictor`; its option groups :class:`InferenceCfg` and
  :class:`InputPolicy` in :mod:`rep3d.inference.options`, its warnings in :mod:`rep3d.inference.notices`.
- :mod:`rep3d.inference.evaluate`: the one evaluation path (per-class Dice), shared with training validation.

The ``rep3d predict`` / ``rep3d evaluate`` commands live in :mod:`rep3d.cli`.
"""

from rep3d.inference.distribution import OutOfDistributionError, OutOfDistributionWarning
from rep3d.inference.evaluate import LabelledCase, evaluate_cases, evaluate_dataset
from rep3d.inference.io import (
    MGH_SUFFIXES,
    NIFTI_SUFFIXES,
    VOLUME_SUFFIXES,
    InputError,
    InputWarning,
    Prediction,
    find_volumes,
    load_volume,
    output_stem,
)
from rep3d.inference.notices import NonFiniteInputWarning, SyntheticWeightsWarning, synthetic_notice
from rep3d.inference.options import AUTO, FALLBACK_ROI, FALLBACK_WINDOWS, InferenceCfg, InputPolicy
from rep3d.inference.predictor import Predictor
from rep3d.inference.preprocess import foreground_box, is_foreground, model_space_transforms, to_model_space
from rep3d.inference.resample import model_grid_affine, to_input_grid

__all__ = [
    "AUTO",
    "FALLBACK_ROI",
    "FALLBACK_WINDOWS",
    "MGH_SUFFIXES",
    "NIFTI_SUFFIXES",
    "InferenceCfg",
    "InputError",
    "InputPolicy",
    "OutOfDistributionError",
    "OutOfDistributionWarning",
    "InputWarning",
    "LabelledCase",
    "NonFiniteInputWarning",
    "Prediction",
    "Predictor",
    "SyntheticWeightsWarning",
    "VOLUME_SUFFIXES",
    "evaluate_cases",
    "evaluate_dataset",
    "find_volumes",
    "foreground_box",
    "is_foreground",
    "load_volume",
    "model_grid_affine",
    "model_space_transforms",
    "output_stem",
    "synthetic_notice",
    "to_input_grid",
    "to_model_space",
]
