"""Trainer classes re-exported for nnU-Net's ``nnUNet_extTrainer`` lookup (it imports this file by name)."""

from rep3d.integrations.nnunet.trainer import (  # noqa: F401
    nnUNetTrainerRep3D,
    nnUNetTrainerRep3DDebug,
    nnUNetTrainerRep3DNoMirroring,
)
