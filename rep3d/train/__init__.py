"""Training: the paper's recipe (or a preset) on any MSD-layout dataset, single process or torchrun DDP.

:func:`train` / :class:`Trainer` run it; the ``rep3d train`` command lives in :mod:`rep3d.cli.train`.
"""

from __future__ import annotations

from rep3d.train.recipes import DATASET_PRESETS, RECIPES, TrainConfig, build_config
from rep3d.train.trainer import NonFiniteLossError, Trainer, TrainingInterrupted, evaluate, train

__all__ = ["DATASET_PRESETS", "RECIPES", "NonFiniteLossError", "TrainConfig", "Trainer", "TrainingInterrupted",
           "build_config", "evaluate", "train"]
