"""Fold a trained model into its deployment form, and count its MACs."""

import copy

import timm.utils
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rep3d.layers import InstanceNorm3dKeepFormat, RepLKConv3d, is_deployed

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


def optimize_for_inference(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The same function, laid out for fast CPU inference: ``channels_last_3d`` weights and format-keeping norms.

    Every ``nn.InstanceNorm3d`` without affine or running statistics (the decoder's) becomes an
    :class:`~rep3d.layers.InstanceNorm3dKeepFormat`, and parameters move to ``torch.channels_last_3d``; feed it
    ``x.to(memory_format=torch.channels_last_3d)``. oneDNN then runs the decoder's small-channel 3x3x3 convs
    without reordering every activation, which is where the deployed forward spends its time
    (``benchmarks/model_forward.py`` measures it). No parameter or buffer changes value, and the state dict keeps
    its keys. Returns a copy unless ``inplace``. For inference only: training keeps the standard layout.
    """
    model = model if inplace else copy.deepcopy(model)

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if (isinstance(child, nn.InstanceNorm3d) and not child.affine and not child.track_running_stats):
                setattr(parent, name, InstanceNorm3dKeepFormat(child.eps))
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
