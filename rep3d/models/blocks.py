"""Network blocks shared by the Rep3D and 3D UX-Net families (blocks reusable, nets thin)."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from timm.layers import DropPath, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from rep3d.errors import Rep3DValueError
from rep3d.layers import BatchNormCfg, LayerNorm3d, MaskCfg, RepLKConv3d
from rep3d.layers.conv import Modulation, split_conv_options
from rep3d.layers.depthwise import Backend

BLOCK_KINDS = ("replk", "ux")
UX_OPTION_NAMES = ("mlp_ratio", "mlp_groups", "layer_scale_init_value")


@dataclass(frozen=True)
class BlockCfg:
    """Everything an encoder's large-kernel blocks are built with: one object from the model down to the conv.

    Attributes:
        kind: ``"replk"`` (:class:`RepLKBlock3d`, Rep3D's plain block) or ``"ux"`` (:class:`UXBlock3d`).
        kernel_size: the large kernel (odd int or triple).
        modulation: ``"lrbm"`` (learnable receptive-field-biased mask), ``"fixed"`` (distance prior) or ``None``.
        small_kernel: the parallel CSLA branch (``"replk"`` only), or ``None``.
        residual: ``"replk"``: add the shortcut (rep3d's deviation, an ablation option; the model argument
            ``block_residual``); ``"ux"`` blocks always have it.
        conv_backend: the depthwise engine (``"auto"``, ``"direct"``, ``"fft"``).
        deploy: build the folded form.
        mask: the mask's shape (:class:`~rep3d.layers.MaskCfg`).
        batchnorm: the conv's BatchNorm settings (:class:`~rep3d.layers.BatchNormCfg`, ``"replk"`` only).
        mlp_ratio: the ``"ux"`` block's MLP expansion.
        mlp_groups: the ``"ux"`` block's MLP groups (``"depthwise"`` or an int).
        layer_scale_init_value: the ``"ux"`` block's layer-scale start value (0: none).
    """

    kind: str = "replk"
    kernel_size: int | tuple[int, int, int] = 21
    modulation: Modulation = "lrbm"
    small_kernel: int | tuple[int, int, int] | None = None
    residual: bool = False
    conv_backend: Backend = "auto"
    deploy: bool = False
    mask: MaskCfg = field(default_factory=MaskCfg)
    batchnorm: BatchNormCfg = field(default_factory=BatchNormCfg)
    mlp_ratio: int = 4
    mlp_groups: str | int = "depthwise"
    layer_scale_init_value: float = 1e-6

    def __post_init__(self) -> None:
        if self.kind not in BLOCK_KINDS:
            raise Rep3DValueError(f"BlockCfg: kind must be one of {list(BLOCK_KINDS)}, got {self.kind!r}")
        if self.kind != "replk" and self.small_kernel is not None:
            raise Rep3DValueError("small_kernel (CSLA branch) is only defined for block='replk'")

    @classmethod
    def from_model_args(cls, block: str = "replk", kernel_size: int | tuple[int, int, int] = 21, *,
                        block_residual: bool | None = None, **options: Any) -> "BlockCfg":
        """The block config of a model's flat constructor arguments (``block``, ``kernel_size``, ``modulation``,
        ``small_kernel``, ``conv_backend``, ``deploy``, ``block_residual``, the mask options ``mask_form``, ``beta``,
        ``generator_*``, ``bn_eps`` / ``bn_momentum``, and the ``"ux"`` block's ``mlp_ratio`` / ``mlp_groups`` /
        ``layer_scale_init_value``)."""
        if block not in BLOCK_KINDS:
            raise Rep3DValueError(f"Rep3DEncoder: block must be one of {sorted(BLOCK_KINDS)}, got {block!r}")
        if block == "ux" and block_residual is False:
            raise Rep3DValueError("Rep3DEncoder: block='ux' blocks always have their residual; block_residual=False is "
                                  "only defined for block='replk'")
        own = {k: options.pop(k) for k in ("modulation", "small_kernel", "conv_backend", "deploy", *UX_OPTION_NAMES)
               if k in options}
        if block != "ux" and any(k in own for k in UX_OPTION_NAMES):
            raise Rep3DValueError(f"{', '.join(k for k in UX_OPTION_NAMES if k in own)} only apply to block='ux'")
        mask, batchnorm = split_conv_options(options, who="Rep3DEncoder")
        return cls(kind=block, kernel_size=kernel_size, residual=bool(block_residual) or block == "ux", mask=mask,
                   batchnorm=batchnorm, **own)

    def conv(self, channels: int) -> RepLKConv3d:
        """The block's depthwise large-kernel conv for ``channels`` channels: with BatchNorm in a ``"replk"`` block,
        without BatchNorm but with a bias in a ``"ux"`` block (3D UX-Net's depthwise conv)."""
        replk = self.kind == "replk"
        return RepLKConv3d(channels, self.kernel_size, modulation=self.modulation, small_kernel=self.small_kernel,
                           norm=replk, bias=not replk, conv_backend=self.conv_backend, deploy=self.deploy,
                           mask=self.mask, batchnorm=self.batchnorm)

    def block(self, channels: int, drop_path: float = 0.0) -> nn.Module:
        """One block of this kind for ``channels`` channels."""
        return (RepLKBlock3d if self.kind == "replk" else UXBlock3d)(channels, self, drop_path=drop_path)


class RepLKBlock3d(nn.Module):
    """Rep3D block, ``[B, C, D, H, W] -> [B, C, D, H, W]``: the paper's plain ``GELU(RepLKConv3d(x))`` by default.

    The conv is depthwise (no channel mixing inside a stage, as in the paper's 65.8M-parameter base model) and
    carries its own BatchNorm, so the default block computes ``GELU(BN(conv(x, W * M)))``, the official block
    function. ``cfg.residual=True`` is rep3d's deviation ``x + DropPath(GELU(RepLKConv3d(x)))`` (an ablation option;
    drop-path needs it).
    """

    def __init__(self, channels: int, cfg: BlockCfg | None = None, *, drop_path: float = 0.0) -> None:
        super().__init__()
        cfg = cfg or BlockCfg()
        if drop_path > 0 and not cfg.residual:
            raise Rep3DValueError(
                f"RepLKBlock3d: drop_path={drop_path} needs residual=True (it drops the residual branch); the paper's "
                "plain block has none: set drop_path_rate=0, or build with block_residual=True"
            )
        self.residual = cfg.residual
        self.dwconv = cfg.conv(channels)
        self.act = nn.GELU()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.dwconv(x))
        return x + self.drop_path(y) if self.residual else y


class UXBlock3d(nn.Module):
    """3D UX-Net block (ConvNeXt-style), ``[B, C, D, H, W] -> [B, C, D, H, W]``::

        x + DropPath(gamma * pwconv2(GELU(pwconv1(LayerNorm(dwconv(x))))))

    ``pwconv1``/``pwconv2`` are 1x1x1 convs with ``cfg.mlp_ratio`` expansion; ``cfg.mlp_groups="depthwise"`` uses 3D
    UX-Net's depthwise-convolution scaling (groups = C, its 53M-parameter configuration), ``1`` a dense MLP.
    ``cfg.modulation`` applies the Rep3D mask to the depthwise kernel.
    """

    def __init__(self, channels: int, cfg: BlockCfg | None = None, *, drop_path: float = 0.0) -> None:
        super().__init__()
        cfg = cfg or BlockCfg(kind="ux", kernel_size=7, modulation=None, residual=True)
        groups = channels if cfg.mlp_groups == "depthwise" else int(cfg.mlp_groups)
        self.dwconv = cfg.conv(channels)
        self.norm = LayerNorm3d(channels)
        self.pwconv1 = nn.Conv3d(channels, cfg.mlp_ratio * channels, 1, groups=groups)
        self.act = nn.GELU()
        self.pwconv2 = nn.Conv3d(cfg.mlp_ratio * channels, channels, 1, groups=groups)
        self.gamma = (
            nn.Parameter(torch.full((channels,), cfg.layer_scale_init_value)) if cfg.layer_scale_init_value > 0
            else None
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        for conv in (self.pwconv1, self.pwconv2):
            trunc_normal_(conv.weight, std=0.02)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x)))))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1, 1)
        return x + self.drop_path(y)


class Downsample3d(nn.Sequential):
    """LayerNorm + Conv3d(k2, stride 2): ``[B, C_in, D, H, W] -> [B, C_out, D/2, H/2, W/2]``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(LayerNorm3d(in_channels), nn.Conv3d(in_channels, out_channels, 2, stride=2))


class Stem3d(nn.Sequential):
    """Conv3d(k7, stride 2, pad 3) + LayerNorm: ``[B, C_in, D, H, W] -> [B, C_out, D/2, H/2, W/2]``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 7) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size, stride=2, padding=kernel_size // 2),
            LayerNorm3d(out_channels),
        )


class UnetrDecoder3d(nn.Module):
    """UNETR-style decoder over an input volume and four encoder features (MONAI blocks, residual, instance norm).

    Features are ``[B, widths[i], S/2^(i+1), ...]`` for i = 0..3. Skips: a basic block on the raw input (-> widths[0])
    and on features 0-2 (-> widths[i+1]), one to ``hidden_size`` on feature 3; up-blocks back to full resolution;
    a 1x1x1 conv to ``num_classes`` logits ``[B, num_classes, D, H, W]``.

    ``deep_supervision_heads=True`` adds 1x1x1 heads on the up-path maps at 1/2, 1/4 and 1/8 resolution and moves
    the full-resolution head into the same list: ``seg_layers = [full, 1/2, 1/4, 1/8]`` (nnU-Net's name, whose
    pretrained-weight loader re-initialises exactly the ``.seg_layers.`` keys). The heads exist whether or not
    ``deep_supervision`` is on, so a checkpoint saved in one mode loads strictly in the other. With
    ``deep_supervision = True`` the forward returns the list of logits ``[full, 1/2, 1/4, 1/8]``.
    """

    def __init__(
        self,
        in_chans: int,
        widths: Sequence[int],
        hidden_size: int,
        num_classes: int,
        norm_name: str | tuple = "instance",
        res_block: bool = True,
        deep_supervision_heads: bool = False,
    ) -> None:
        super().__init__()
        w = list(widths)
        if len(w) != 4:
            raise Rep3DValueError(f"UnetrDecoder3d expects 4 encoder widths, got {w}")

        def basic(cin: int, cout: int) -> UnetrBasicBlock:
            return UnetrBasicBlock(3, cin, cout, kernel_size=3, stride=1, norm_name=norm_name, res_block=res_block)

        def up(cin: int, cout: int) -> UnetrUpBlock:
            return UnetrUpBlock(3, cin, cout, kernel_size=3, upsample_kernel_size=2, norm_name=norm_name,
                                res_block=res_block)

        self.encoder1 = basic(in_chans, w[0])
        self.encoder2 = basic(w[0], w[1])
        self.encoder3 = basic(w[1], w[2])
        self.encoder4 = basic(w[2], w[3])
        self.encoder5 = basic(w[3], hidden_size)
        self.decoder5 = up(hidden_size, w[3])
        self.decoder4 = up(w[3], w[2])
        self.decoder3 = up(w[2], w[1])
        self.decoder2 = up(w[1], w[0])
        self.decoder1 = basic(w[0], w[0])
        if deep_supervision_heads:
            # full, then the outputs of decoder3 (1/2), decoder4 (1/4), decoder5 (1/8)
            self.seg_layers = nn.ModuleList([UnetOutBlock(3, c, num_classes) for c in (w[0], w[1], w[2], w[3])])
        else:
            self.out = UnetOutBlock(3, w[0], num_classes)
        self._deep_supervision = False
        self.grad_checkpointing = False

    __jit_unused_properties__ = ["head", "deep_supervision"]  # TorchScript runs _forward_plain, which needs neither

    @property
    def head(self) -> nn.Module:
        """The full-resolution 1x1x1 output conv."""
        return self.seg_layers[0] if hasattr(self, "seg_layers") else self.out

    @property
    def deep_supervision(self) -> bool:
        """When True, :meth:`forward` returns logits at full, 1/2, 1/4 and 1/8 resolution (needs the heads)."""
        return self._deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, enable: bool) -> None:
        if enable and not hasattr(self, "seg_layers"):
            raise Rep3DValueError(
                "UnetrDecoder3d.deep_supervision=True needs the extra output heads: build the decoder with "
                "deep_supervision_heads=True (rep3d.integrations.nnunet's network does)"
            )
        self._deep_supervision = bool(enable)

    def _run(self, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            # instance norm keeps no running stats, so recomputing a whole block is exact
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def forward(self, x: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        if torch.jit.is_scripting():
            return self._forward_plain(x, features)
        enc1 = self._run(self.encoder1, x)
        enc2 = self._run(self.encoder2, features[0])
        enc3 = self._run(self.encoder3, features[1])
        enc4 = self._run(self.encoder4, features[2])
        hidden = self._run(self.encoder5, features[3])
        d8 = self._run(self.decoder5, hidden, enc4)
        d4 = self._run(self.decoder4, d8, enc3)
        d2 = self._run(self.decoder3, d4, enc2)
        d = self._run(self.decoder2, d2, enc1)
        full = self.head(self._run(self.decoder1, d))
        if not self._deep_supervision:
            return full
        return [full] + [head(m) for head, m in zip(self.seg_layers[1:], (d2, d4, d8))]

    def _forward_plain(self, x: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        # the same graph without checkpointing (TorchScript cannot call it with *args)
        enc1 = self.encoder1(x)
        d = self.decoder5(self.encoder5(features[3]), self.encoder4(features[2]))
        d = self.decoder4(d, self.encoder3(features[1]))
        d = self.decoder3(d, self.encoder2(features[0]))
        d = self.decoder2(d, enc1)
        return self.out(self.decoder1(d))
