"""Registered model names and their cfgs (configs as data; ``default_cfgs`` precedes the entrypoints, as timm needs).

Family sizes (all: 4 stages, stride 16, UNETR decoder, 1 input channel by default):

| name | widths | depths | kernel | decoder hidden | block | notes |
|---|---|---|---|---|---|---|
| rep3d_tiny | 12/24/48/96 | 1/1/1/1 | 21 | 192 | plain | one 2 × 64³ training step ≈ 1 s on a 2-core CPU |
| rep3d_small | 32/64/128/256 | 2/2/2/2 | 21 | 512 | plain | half the base widths |
| rep3d_base | 48/96/192/384 | 2/2/2/2 | 21 | 768 | plain | the paper's model (65.8M params at 16 classes) |
| rep3d_large | 64/128/256/512 | 2/2/4/2 | 21 | 1024 | plain | wider, deeper stage 3 |
| uxnet3d_base | 48/96/192/384 | 2/2/2/2 | 7 | 768 | ConvNeXt | 3D UX-Net, ConvNeXt-style blocks |

Block "plain" is the paper's ``GELU(BN(dwconv(x, W ⊙ M)))`` with no residual shortcut, for every ``rep3d_*`` name;
``block_residual=True`` (through ``create_model``) adds ``x +`` around it, a deviation kept as an ablation option.

Suffixes: none = learnable mask (``lrbm``, the method; the paper's generator, two k7 convs with one hidden channel,
690 parameters per block, output scaled by 1/sqrt(fan-in); ``mask_form="additive"``, the paper's
``M = P + f(P)``), ``_fixed`` = distance prior only, ``_vanilla`` = plain large kernel, ``_csla`` = plain large
kernel + parallel 3³ branch merged at deploy;
``uxnet3d_base_lrbm`` = UX-Net + mask. The mask knobs ``mask_form``, ``generator_hidden_channels``,
``generator_kernel_size``, ``generator_depth``, ``generator_output_scale`` are model kwargs; all of them are
recorded in ``model.model_args`` and hence in a saved model's config.
"""

from typing import Any

from torch import nn

from rep3d.configs.pretrained import PretrainedCfg, factory_cfgs
from rep3d.layers.mask import DEFAULT_MASK_FORM
from rep3d.models.registry import build_model, default_cfgs, register, resolve_cfg
from rep3d.models.rep3d_net import Rep3D, UXNet3D
from rep3d.presets import DEFAULT_ROI, PAPER_CT, PHANTOM

PAPER = dict(
    paper_ids="arXiv:2505.19603",
    paper_name="Rep3D: Re-parameterize Large 3D Kernels with Low-Rank Receptive Modeling for Medical Imaging",
    license="apache-2.0",
)
UXNET_PAPER = dict(
    paper_ids="arXiv:2209.15076",
    paper_name="3D UX-Net: A Large Kernel Volumetric ConvNet Modernizing Hierarchical Transformer",
    license="apache-2.0",
)
# The convs that read the raw input volume (timm's first_conv): the stem and the decoder's input block. rep3d's own
# loader adapts their 5-D weights when in_chans differs (rep3d.models.checkpoint_filter.INPUT_CONV_KEYS).
FIRST_CONVS = ("encoder.downsample_layers.0.0", "decoder.encoder1.layer.conv1.conv",
               "decoder.encoder1.layer.conv3.conv")
# 3-D metadata of the paper's AMOS-CT recipe (rep3d.presets): the defaults a base-size model is trained and run with.
CT_RECIPE = PAPER_CT.model_cfg()


def _cfg(num_classes: int = 16, roi_size: tuple[int, int, int] = DEFAULT_ROI, paper: dict = PAPER,
         **kwargs: Any) -> dict[str, Any]:
    # timm assumes 2-D: input_size is (C, H, W) of an axial slice; the 3-D ROI lives in rep3d's own key.
    return {
        "num_classes": num_classes, "input_size": (1, roi_size[1], roi_size[2]), "first_conv": FIRST_CONVS,
        "classifier": "decoder.out.conv.conv", "mean": (0.0,), "std": (1.0,), "interpolation": "trilinear",
        "crop_pct": 1.0, **paper, **CT_RECIPE, "roi_size": roi_size, **kwargs,
    }


# Weights trained by rep3d on its SYNTHETIC phantoms (rep3d/weights/rep3d_tiny_phantom.md has the card):
#   rep3d phantom data/phantom --num-train 40 --num-test 10 --seed 0
#   rep3d train --data data/phantom --out runs/tiny_phantom --recipe phantom
#   python -m rep3d.cli.bundle runs/tiny_phantom rep3d_tiny_phantom -o rep3d/weights
PHANTOM_WEIGHTS = _cfg(
    num_classes=len(PHANTOM.class_names), **PHANTOM.model_cfg(), dataset="rep3d-phantom", synthetic=True,
    description="SYNTHETIC: trained on rep3d's CT-like phantoms, not on patient scans; a pipeline demonstration.",
    tta_flip_axes=(),  # trained without flips: flip TTA is refused for these weights
    bundled="rep3d_tiny_phantom.safetensors",
    sha256="2bea591f5751d9a05c78f974097d2c22e0321e094c8a61154b436447cdf3ab01",
)

# The architecture each set of weights was trained with, pinned so that a later change of a default can never
# silently change what bundled weights compute (a key mismatch would be loud; a residual toggled would not be).
WEIGHTS_MODEL_ARGS: dict[str, dict[str, Any]] = {
    # the paper's plain block and additive mask with its 690-parameter generator (retrained 2026-11-30)
    "rep3d_tiny.phantom": dict(block_residual=False, mask_form="additive", generator_hidden_channels=1,
                               generator_kernel_size=7, generator_depth=2, generator_output_scale="sqrt_fan_in"),
}

default_cfgs = default_cfgs({
    "rep3d_tiny.phantom": PHANTOM_WEIGHTS,
    **{f"rep3d_{size}{suffix}": _cfg(roi_size=(64, 64, 64) if size == "tiny" else DEFAULT_ROI)
       for size in ("tiny", "small", "base", "large") for suffix in ("", "_fixed", "_vanilla", "_csla")},
    "uxnet3d_base": _cfg(paper=UXNET_PAPER),
    "uxnet3d_base_lrbm": _cfg(),
})

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(widths=(12, 24, 48, 96), depths=(1, 1, 1, 1), hidden_size=192),
    "small": dict(widths=(32, 64, 128, 256), depths=(2, 2, 2, 2), hidden_size=512),
    "base": dict(widths=(48, 96, 192, 384), depths=(2, 2, 2, 2), hidden_size=768),
    "large": dict(widths=(64, 128, 256, 512), depths=(2, 2, 4, 2), hidden_size=1024),
}
# The paper's block and generator, spelt out so that every saved config records them.
PAPER_BLOCK = dict(block_residual=False)
PAPER_GENERATOR = dict(mask_form=DEFAULT_MASK_FORM, generator_hidden_channels=1, generator_kernel_size=7,
                       generator_depth=2, generator_output_scale="sqrt_fan_in")
VARIANTS: dict[str, dict[str, Any]] = {
    "": dict(modulation="lrbm", **PAPER_BLOCK, **PAPER_GENERATOR),
    "_fixed": dict(modulation="fixed", **PAPER_BLOCK),
    "_vanilla": dict(modulation=None, **PAPER_BLOCK),
    "_csla": dict(modulation=None, small_kernel=3, **PAPER_BLOCK),
}


def _create(cls: type[nn.Module], variant: str, pretrained: bool, defaults: dict[str, Any], **kwargs: Any) -> nn.Module:
    return build_model(cls, variant, pretrained, **{**defaults, **_weights_args(variant, pretrained, kwargs), **kwargs})


def _weights_args(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments pinned by the weights being asked for (``WEIGHTS_MODEL_ARGS``): for an explicit tag
    (``"rep3d_tiny.phantom"``), or for the default tag when ``pretrained=True``. Not for a bare architecture name
    without weights, nor where the caller names another weight source."""
    cfg, overlay = factory_cfgs(kwargs)
    if isinstance(cfg, dict) or PretrainedCfg.from_dict(overlay).weights.names_weights:
        return {}
    tag = cfg if isinstance(cfg, str) else (PretrainedCfg.from_dict(resolve_cfg(variant)).tag if pretrained else None)
    return dict(WEIGHTS_MODEL_ARGS.get(f"{variant}.{tag}", {})) if tag else {}


def _rep3d(size: str, suffix: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    return _create(Rep3D, f"rep3d_{size}{suffix}", pretrained, {**SIZES[size], **VARIANTS[suffix]}, **kwargs)


@register
def rep3d_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Rep3D tiny (12/24/48/96, depth 1 per stage, decoder 192), learnable mask."""
    return _rep3d("tiny", "", pretrained, **kwargs)


@register
def rep3d_tiny_fixed(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Rep3D tiny with the fixed distance prior as mask."""
    return _rep3d("tiny", "_fixed", pretrained, **kwargs)


@register
def rep3d_tiny_vanilla(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Rep3D tiny, plain large kernels."""
    return _rep3d("tiny", "_vanilla", pretrained, **kwargs)


@register
def rep3d_tiny_csla(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Rep3D tiny, large kernel + parallel 3³ branch (merged at deploy)."""
    return _rep3d("tiny", "_csla", pretrained, **kwargs)


@register
def rep3d_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Rep3D small (32/64/128/256), learnable mask."""
    return _rep3d("small", "", pretrained, **kwargs)


@register
def rep3d_small_fixed(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Rep3D small with the fixed distance prior."""
    return _rep3d("small", "_fixed", pretrained, **kwargs)


@register
def rep3d_small_vanilla(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Rep3D small, plain large kernels."""
    return _rep3d("small", "_vanilla", pretrained, **kwargs)


@register
def rep3d_small_csla(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Rep3D small, large kernel + parallel 3³ branch."""
    return _rep3d("small", "_csla", pretrained, **kwargs)


@register
def rep3d_base(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Rep3D base, the paper's model (48/96/192/384, k = 21, decoder 768, plain blocks, learnable mask)."""
    return _rep3d("base", "", pretrained, **kwargs)


@register
def rep3d_base_fixed(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Rep3D base with the fixed distance prior (RepUX-Net style)."""
    return _rep3d("base", "_fixed", pretrained, **kwargs)


@register
def rep3d_base_vanilla(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Rep3D base, plain 21³ kernels."""
    return _rep3d("base", "_vanilla", pretrained, **kwargs)


@register
def rep3d_base_csla(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Rep3D base, 21³ + parallel 3³ branch (RepLKNet style)."""
    return _rep3d("base", "_csla", pretrained, **kwargs)


@register
def rep3d_large(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Rep3D large (64/128/256/512, depths 2/2/4/2, decoder 1024), learnable mask."""
    return _rep3d("large", "", pretrained, **kwargs)


@register
def rep3d_large_fixed(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Rep3D large with the fixed distance prior."""
    return _rep3d("large", "_fixed", pretrained, **kwargs)


@register
def rep3d_large_vanilla(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Rep3D large, plain large kernels."""
    return _rep3d("large", "_vanilla", pretrained, **kwargs)


@register
def rep3d_large_csla(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Rep3D large, large kernel + parallel 3³ branch."""
    return _rep3d("large", "_csla", pretrained, **kwargs)


@register
def uxnet3d_base(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """3D UX-Net base (k = 7 ConvNeXt-style blocks, depthwise-scaled MLP)."""
    return _create(UXNet3D, "uxnet3d_base", pretrained, dict(SIZES["base"]), **kwargs)


@register
def uxnet3d_base_lrbm(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """3D UX-Net base with the Rep3D learnable mask on its 7³ depthwise kernels."""
    return _create(UXNet3D, "uxnet3d_base_lrbm", pretrained, dict(SIZES["base"], modulation="lrbm"), **kwargs)
