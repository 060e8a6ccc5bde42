"""The network class nnU-Net v2 plans can name: ``rep3d.integrations.nnunet.network.Rep3DnnUNet``.

nnU-Net builds networks as ``cls(input_channels=, num_classes=, deep_supervision=, **arch_kwargs)`` and, when
deep supervision is on, trains on the list ``[full, 1/2, 1/4, 1/8]`` whose target scales it derives from
``arch_kwargs["strides"]`` (the cumulative product of the strides, last stage dropped). This module does not import
nnU-Net.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rep3d.errors import Rep3DValueError

NNUNET_STRIDES: list[list[int]] = [[1, 1, 1]] + [[2, 2, 2]] * 4
"""The ``strides`` a plan must give a rep3d network: a full-resolution stage, then four isotropic halvings (stem
stride 2 and three downsamplers, total stride 16). nnU-Net's deep-supervision scales follow from them: 1, 1/2, 1/4,
1/8."""
NNUNET_KERNEL_SIZES: list[list[int]] = [[3, 3, 3]] * 5
"""Written into plans for nnU-Net's bookkeeping only: rep3d's own kernels come from the model."""
PATCH_MULTIPLE = 16


def check_strides(strides: Any) -> None:
    """Raise :class:`Rep3DValueError` unless ``strides`` is rep3d's own (``NNUNET_STRIDES``)."""
    try:
        given = [[int(s) for s in stage] for stage in strides]
    except TypeError:
        given = None
    if given != NNUNET_STRIDES:
        raise Rep3DValueError(
            f"rep3d networks downsample by 2 on every axis four times (total stride 16), so the plan's strides must "
            f"be {NNUNET_STRIDES}; got {strides!r}. nnU-Net derives the deep-supervision target scales from these "
            "strides, so other values would give targets that do not match the outputs. Write the configuration with "
            "`rep3d nnunet-plans -d DATASET_ID` instead of editing the strides by hand"
        )


def check_patch_size(patch_size: Sequence[int]) -> None:
    """Raise :class:`Rep3DValueError` unless every patch size is a positive multiple of 16."""
    sizes = [int(s) for s in patch_size]
    if len(sizes) != 3 or any(s <= 0 or s % PATCH_MULTIPLE for s in sizes):
        up = [max(PATCH_MULTIPLE, -(-s // PATCH_MULTIPLE) * PATCH_MULTIPLE) for s in sizes]
        raise Rep3DValueError(
            f"rep3d networks need a 3-D patch whose sizes are multiples of {PATCH_MULTIPLE}; the plan gives "
            f"{list(patch_size)}. Use {up} (`rep3d nnunet-plans` rounds the patch up for you)"
        )


NNUNET_ONLY_KWARGS = ("strides", "n_stages", "kernel_sizes")
"""Plan ``arch_kwargs`` that describe the network to nnU-Net's bookkeeping and are not rep3d model arguments."""


def split_arch_kwargs(arch_kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A plan's ``arch_kwargs`` -> ``(rep3d model name, model kwargs)``; checks the strides on the way."""
    kwargs = dict(arch_kwargs)
    if "strides" in kwargs:
        check_strides(kwargs["strides"])
    for key in NNUNET_ONLY_KWARGS:
        kwargs.pop(key, None)
    model = kwargs.pop("model", "rep3d_tiny")
    return model, kwargs


class Rep3DnnUNet(nn.Module):
    """Any rep3d model under nnU-Net's constructor: ``[B, input_channels, D, H, W]`` -> logits
    ``[B, num_classes, D, H, W]``, or with ``decoder.deep_supervision = True`` the list ``[full, 1/2, 1/4, 1/8]``.

    Args:
        input_channels: nnU-Net's own argument: channels of the input.
        num_classes: nnU-Net's own argument: output classes.
        deep_supervision: nnU-Net's own argument: return the list of deep-supervision outputs.
        model: a rep3d model name (``rep3d.list_models()``), e.g. ``"rep3d_tiny"``, ``"rep3d_base_fixed"``.
        strides: the plan's strides; must be :data:`NNUNET_STRIDES` (checked: nnU-Net's targets depend on them).
        **model_kwargs: the model's own keyword arguments (``kernel_size``, ``drop_path_rate``, ...).

    The state-dict keys are the rep3d model's (``encoder.*``, ``decoder.*``) except the output heads, which live in
    ``decoder.seg_layers`` (full resolution first) in both deep-supervision modes. There is no ``initialize`` method,
    so nnU-Net keeps rep3d's own initialisation.
    """

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        deep_supervision: bool = True,
        *,
        model: str = "rep3d_tiny",
        strides: Sequence[Sequence[int]] | None = None,
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        from rep3d.builder import create_model

        if strides is not None:
            check_strides(strides)
        for key in ("in_chans", "deep_supervision_heads", "pretrained"):
            if key in model_kwargs:
                raise Rep3DValueError(f"Rep3DnnUNet: {key!r} is set by nnU-Net / the adapter; remove it from "
                                      "the plan's arch_kwargs")
        for key in NNUNET_ONLY_KWARGS:  # nnU-Net bookkeeping; rep3d networks have their own stages and kernels
            model_kwargs.pop(key, None)
        net = create_model(model, in_chans=input_channels, num_classes=num_classes, deep_supervision_heads=True,
                           **model_kwargs)
        self.model_name = model
        self.model_kwargs = dict(model_kwargs)
        self.in_chans = input_channels
        self.num_classes = num_classes
        self.stride = net.stride
        self.pretrained_cfg = dict(net.pretrained_cfg)
        self.encoder = net.encoder
        self.decoder = net.decoder
        self.decoder.deep_supervision = deep_supervision

    def check_input(self, x: torch.Tensor) -> None:
        """Rep3D's input check: channel count, and every spatial size a multiple of the stride (16)."""
        from rep3d.models.rep3d_net import Rep3D

        Rep3D.check_input(self, x)  # reads only in_chans and stride

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self.check_input(x)
        return self.decoder(x, self.encoder(x))
