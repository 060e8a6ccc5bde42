"""Reusable building blocks: drop them into any 3-D network."""

from rep3d.layers.conv import BatchNormCfg, RepLKConv3d, is_deployed
from rep3d.layers.depthwise import choose_backend, depthwise_conv3d, useful_kernel_size
from rep3d.layers.fft_conv import fast_fft_length, fft_lengths
from rep3d.layers.fusion import crop_kernel, fold_batchnorm, pad_kernel
from rep3d.layers.mask import (
    MASK_FORMS,
    MaskCfg,
    MaskGenerator,
    ModulatedKernelParam,
    distance_prior,
    mask_health,
    mask_health_scalars,
)
from rep3d.layers.norm import InstanceNorm3dKeepFormat, LayerNorm3d, instance_norm_channels_last
from rep3d.layers.onednn_conv import OneDNNConv3d
from rep3d.layers.settings import EngineSettings, engine_settings, get_engine_settings
from rep3d.layers.theory import csla_lr_field, mask_lr_field

__all__ = [
    "MASK_FORMS",
    "BatchNormCfg",
    "EngineSettings",
    "InstanceNorm3dKeepFormat",
    "LayerNorm3d",
    "MaskCfg",
    "MaskGenerator",
    "ModulatedKernelParam",
    "OneDNNConv3d",
    "RepLKConv3d",
    "choose_backend",
    "crop_kernel",
    "csla_lr_field",
    "depthwise_conv3d",
    "distance_prior",
    "engine_settings",
    "fast_fft_length",
    "fft_lengths",
    "fold_batchnorm",
    "get_engine_settings",
    "instance_norm_channels_last",
    "is_deployed",
    "mask_health",
    "mask_health_scalars",
    "mask_lr_field",
    "pad_kernel",
    "useful_kernel_size",
]
