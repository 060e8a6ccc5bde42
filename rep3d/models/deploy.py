"""Fold a trained model into its deployment form, and count its MACs."""

import copy

import timm.utils
import torch
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetResBlock
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rep3d.layers import InstanceNorm3dKeepFormat, OneDNNConv3d, RepLKConv3d, is_deployed

__all__ = ["count_macs", "is_deployed", "optimize_for_inference", "reparameterize_model"]


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every :class:`RepLKConv3d` (mask, small branch, BatchNorm) into one depthwise conv with bias.

    Returns the deployed model (a copy unless ``inplace``); its eval output equals the input model's eval output.
    ``model.model_args["deploy"]`` is set so that saved configs rebuild the deployed form.
    """
    model = timm.utils.reparameterize_model(model, inplace=inplace)
    if isinstance(getattr(model, "model_args", None), dict):
        model.model_args = {**model.model_args, "deploy": True}
    return model


_NORM_AFTER_CONV = (UnetBasicBlock, UnetResBlock)
"""MONAI blocks whose ``norm1``/``norm2``/``norm3`` each take a fresh convolution output that nothing else reads
(``forward``: ``out = norm(conv(...))``, checked against MONAI 1.3-1.6), so the norm may overwrite it."""


def optimize_for_inference(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The same function, laid out and dispatched for fast CPU inference.

    Three changes, none to a parameter's value or a state-dict key:

    * parameters move to ``torch.channels_last_3d`` (feed it ``x.to(memory_format=torch.channels_last_3d)``), so
      oneDNN runs the decoder's small-channel 3x3x3 convs without reordering every activation;
    * every ``nn.InstanceNorm3d`` without affine or running statistics (the decoder's) becomes an
      :class:`~rep3d.layers.InstanceNorm3dKeepFormat`, which keeps that layout (and, inside MONAI's U-Net blocks,
      normalises the convolution's output in place);
    * every plain ``nn.Conv3d`` becomes a :class:`~rep3d.layers.OneDNNConv3d`, which takes oneDNN's kernel for
      the shapes where PyTorch's heuristic falls back to a slow im2col path.

    ``benchmarks/model_forward.py`` measures each step at equal output. Returns a copy unless ``inplace``. For
    inference only: with gradients enabled every layer runs as before, but training keeps the standard layout.
    """
    model = model if inplace else copy.deepcopy(model)

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if (isinstance(child, nn.InstanceNorm3d) and not child.affine and not child.track_running_stats):
                inplace = isinstance(parent, _NORM_AFTER_CONV) and name in ("norm1", "norm2", "norm3")
                setattr(parent, name, InstanceNorm3dKeepFormat(child.eps, inplace=inplace))
            elif type(child) is nn.Conv3d:
                setattr(parent, name, OneDNNConv3d.from_conv(child))
            else:
                swap(child)

    swap(model)
    return model.to(memory_format=torch.channels_last_3d)


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward at ``input_shape``, convs counted as direct convolutions.

    Runs on the meta device (no memory, no time) with every large-kernel conv forced onto the direct path, so the
    count is the architecture's, independent of the FFT engine.
    """
    device = next(model.parameters()).device
    convs = [m for m in model.modules() if isinstance(m, RepLKConv3d)]
    saved = [m.conv_backend for m in convs]
    try:
        for m in convs:
            m.conv_backend = "direct"
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(input_shape, device=device))
    finally:
        for m, backend in zip(convs, saved):
            m.conv_backend = backend
    return counter.get_total_flops() // 2
