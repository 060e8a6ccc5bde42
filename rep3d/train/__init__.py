"""Training: the paper's recipe (or a preset) on any MSD-layout dataset, single process or torchrun DDP.

:func:`train` / :class:`Trainer` run it; the ``rep3d train`` command lives in :mod:`rep3d.cli.train`. The recipes
(:mod:`rep3d.train.recipes`) are plain data and load without torch; the trainer loads on first use, so that
``rep3d train --help`` can list the recipes at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from rep3d.train.recipes import DATASET_PRESETS, RECIPES, TrainConfig, build_config

if TYPE_CHECKING:
    from rep3d.train.trainer import NonFiniteLossError, Trainer, TrainingInterrupted, evaluate, train

__all__ = ["DATASET_PRESETS", "RECIPES", "NonFiniteLossError", "TrainConfig", "Trainer", "TrainingInterrupted",
           "build_config", "evaluate", "train"]

_TRAINER_NAMES = ("NonFiniteLossError", "Trainer", "TrainingInterrupted", "evaluate", "train")


def __getattr__(name: str):
    if name in _TRAINER_NAMES:
        return getattr(importlib.import_module("rep3d.train.trainer"), name)
    raise AttributeError(f"module 'rep3d.train' has no attribute {name!r}")
