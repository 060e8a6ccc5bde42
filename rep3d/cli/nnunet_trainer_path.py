"""``rep3d nnunet-trainer-path``: print the folder to put in ``nnUNet_extTrainer``."""

from __future__ import annotations

import argparse

EXAMPLE = "export nnUNet_extTrainer=$(rep3d nnunet-trainer-path)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    from rep3d.integrations.nnunet import TRAINER_DIR

    print(TRAINER_DIR)
    return 0
