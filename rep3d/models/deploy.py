"""Fold a trained model into its deployment form, and count its MACs."""

import timm.utils
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rep3d.layers import RepLKConv3d, is_deployed

__all__ = ["count_macs", "is_deployed", "reparameterize_model"]


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every :class:`RepLKConv3d` (mask, small branch, BatchNorm) into one depthwise conv with bias.

    Returns the deployed model (a copy unless ``inplace``); its eval output equals the input model's eval output.
    ``model.model_args["deploy"]`` is set so that saved configs rebuild the deployed form.
    """
    model = timm.utils.reparameterize_model(model, inplace=inplace)
    if isinstance(getattr(model, "model_args", None), dict):
        model.model_args = {**model.model_args, "deploy": True}
    return model


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
