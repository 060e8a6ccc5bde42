"""Train and predict rep3d models inside nnU-Net v2 (``pip install rep3d[nnunet]``, nnunetv2 >= 2.8).

* :class:`~rep3d.integrations.nnunet.network.Rep3DnnUNet`: the network class a plans file names
  (``rep3d.integrations.nnunet.network.Rep3DnnUNet``); needs no nnU-Net import itself.
* ``rep3d nnunet-plans``: add a rep3d configuration to a dataset's plans (:mod:`.plans`).
* trainers ``nnUNetTrainerRep3D`` / ``...NoMirroring`` / ``...Debug`` (:mod:`.trainer`), found by nnU-Net through
  ``nnUNet_extTrainer=$(rep3d nnunet-trainer-path)``.
* weights both ways (:mod:`.weights`): ``rep3d nnunet-export`` (nnU-Net fold folder -> ``save_pretrained`` folder) and
  ``rep3d nnunet-pretrained`` (any rep3d model -> a file for ``nnUNetv2_train -pretrained_weights``).

Importing this package does not import nnunetv2; the parts that need it call :func:`require_nnunet`.
"""

from __future__ import annotations

from pathlib import Path

from rep3d.extras import Rep3DMissingExtra, install_hint
from rep3d.integrations.nnunet.network import NNUNET_STRIDES, Rep3DnnUNet, check_patch_size, check_strides

MIN_NNUNET = (2, 8)
TRAINER_DIR = Path(__file__).resolve().parent / "ext_trainers"
"""The folder to put in ``nnUNet_extTrainer`` (``rep3d nnunet-trainer-path`` prints it)."""


class Rep3DnnUNetMissing(Rep3DMissingExtra):
    """nnunetv2 (>= 2.8) is not installed, or too old."""


def require_nnunet():
    """Import and return ``nnunetv2``, or raise :class:`Rep3DnnUNetMissing` saying how to install it."""
    try:
        import nnunetv2
    except ImportError as err:
        raise Rep3DnnUNetMissing(
            "this needs nnU-Net v2 (nnunetv2 >= 2.8), which is not installed; install it with: "
            f"{install_hint('nnunetv2')}"
        ) from err
    from importlib.metadata import version

    found = version("nnunetv2")
    parts = tuple(int(p) for p in found.split(".")[:2] if p.isdigit())
    if parts < MIN_NNUNET:
        raise Rep3DnnUNetMissing(f"rep3d needs nnunetv2 >= 2.8, found {found}; upgrade with: "
                                 'pip install -U "rep3d[nnunet]"')
    return nnunetv2


__all__ = ["NNUNET_STRIDES", "TRAINER_DIR", "Rep3DnnUNet", "Rep3DnnUNetMissing", "check_patch_size", "check_strides",
           "require_nnunet"]
