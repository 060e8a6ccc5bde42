"""Rep3D and 3D UX-Net: a hierarchical large-kernel encoder plus a UNETR-style decoder.

The numbers the paper's base model must meet are in docs/design.md, "Architecture".
"""

from collections.abc import Sequence

import torch
from monai.networks.blocks import UnetOutBlock
from timm.layers import trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from rep3d.configs.model_args import check_model_args
from rep3d.errors import Rep3DTypeError, Rep3DValueError
from rep3d.layers import LayerNorm3d
from rep3d.layers.checks import check_volume, is_exporting
from rep3d.layers.conv import Modulation
from rep3d.layers.depthwise import Backend
from rep3d.models.blocks import BlockCfg, Downsample3d, RepLKBlock3d, Stem3d, UnetrDecoder3d, UXBlock3d
from rep3d.models.checkpoint_filter import checkpoint_filter_fn


class Rep3DEncoder(nn.Module):
    """Hierarchical 3-D encoder: ``[B, in_chans, D, H, W]`` -> four features ``[B, widths[i], D/2^(i+1), ...]``.

    Stem (conv k7 stride 2 + LayerNorm), stages of large-kernel blocks separated by LayerNorm + conv(k2, stride 2)
    downsamplers; every stage output goes through its own LayerNorm (``norms.i``) to become an encoder feature.
    The blocks are built from one :class:`~rep3d.models.blocks.BlockCfg`: ``block_cfg``, or the model arguments
    ``block_options`` (``block="replk"`` Rep3D's plain large-kernel blocks ``GELU(BN(conv(x, W * M)))``,
    ``block_residual=True`` adds a residual shortcut, a deviation from the paper; ``block="ux"`` 3D UX-Net's
    ConvNeXt-style blocks; ``modulation``, ``small_kernel``, ``conv_backend``, ``deploy``, the mask options
    ``mask_form``, ``beta``, ``generator_*``, ...; see :meth:`BlockCfg.from_model_args`).
    """

    def __init__(
        self,
        in_chans: int = 1,
        widths: Sequence[int] = (48, 96, 192, 384),
        depths: Sequence[int] = (2, 2, 2, 2),
        kernel_size: int | None = None,
        *,
        drop_path_rate: float = 0.0,
        stem_kernel_size: int = 7,
        block_cfg: BlockCfg | None = None,
        **block_options,
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(depths) != 4:
            raise Rep3DValueError(f"Rep3DEncoder needs 4 stages: got widths={tuple(widths)}, depths={tuple(depths)}")
        if block_cfg is None:
            block_cfg = BlockCfg.from_model_args(kernel_size=21 if kernel_size is None else kernel_size,
                                                 **block_options)
        elif block_options or kernel_size not in (None, block_cfg.kernel_size):
            raise Rep3DValueError("Rep3DEncoder: pass block_cfg or the block options "
                                  f"({', '.join(sorted(block_options)) or 'kernel_size'}), not both")
        self.in_chans = in_chans
        self.widths = tuple(widths)
        self.depths = tuple(depths)
        self.stride = 2 ** len(widths)
        self.downsample_layers = nn.ModuleList(
            [Stem3d(in_chans, widths[0], stem_kernel_size)]
            + [Downsample3d(widths[i - 1], widths[i]) for i in range(1, 4)]
        )
        n_blocks = sum(depths)
        rates = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]  # stochastic depth decay
        self.stages = nn.ModuleList()
        for i, (width, depth) in enumerate(zip(widths, depths)):
            first = sum(depths[:i])
            self.stages.append(nn.Sequential(*[block_cfg.block(width, rates[first + j]) for j in range(depth)]))
        self.norms = nn.ModuleList([LayerNorm3d(w) for w in widths])
        self.feature_info = [
            dict(num_chs=w, reduction=2 ** (i + 1), module=f"norms.{i}") for i, w in enumerate(widths)
        ]
        self.grad_checkpointing = False
        self.downsample_layers.apply(_init_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward: the large-kernel convs (RepLK blocks) or whole blocks (UX blocks)."""
        self.grad_checkpointing = enable
        for module in self.modules():
            if isinstance(module, RepLKBlock3d):
                module.dwconv.grad_checkpointing = enable

    def _run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        for blk in self.stages[i]:
            if self.grad_checkpointing and isinstance(blk, UXBlock3d) and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCDHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs at ``indices`` (default all four), each ``[B, widths[i], D/2^(i+1), H/2^(i+1), W/2^(i+1)]``.

        timm's feature-extraction contract (its signature and defaults), in 3-D:

        * ``norm=True`` passes each taken stage output through its feature LayerNorm (``norms.i``): the encoder
          features the decoder consumes (what ``features_only`` returns). ``norm=False`` (default) returns the raw
          stage outputs.
        * ``output_fmt`` must be ``"NCDHW"`` (channels first, the only layout rep3d produces).
        * ``intermediates_only=False`` (default) returns ``(final, intermediates)``; ``final`` is the normalised
          output of the last stage run, ``forward_features(x)[-1]`` unless ``stop_early`` cut the stages short.
        * ``stop_early=True`` skips the stages after the last index taken (always done with ``intermediates_only``:
          the outputs are the same).
        """
        if str(output_fmt).upper() != "NCDHW":
            raise Rep3DValueError(
                f"{type(self).__name__}.forward_intermediates: output_fmt={output_fmt!r} is not supported; rep3d "
                "features are channels-first 3-D maps, output_fmt='NCDHW'"
            )
        take = _resolve_indices(indices, len(self.stages))
        if not is_exporting(x):
            check_volume(x, self.in_chans, f"{type(self).__name__} (in_chans={self.in_chans})")
        last = max(take) if intermediates_only or stop_early else len(self.stages) - 1
        out = []
        for i in range(last + 1):
            x = self._run_stage(i, self.downsample_layers[i](x))
            if i in take:
                out.append(self.norms[i](x) if norm else x)
        if intermediates_only:
            return out
        return self.norms[last](x), out

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All four encoder features ``[B, widths[i], D/2^(i+1), H/2^(i+1), W/2^(i+1)]`` (normalised).

        A list, not one map as in timm's classifiers: a U-Net's decoder reads every scale, so there is no single
        final feature map; ``forward_features(x)[-1]`` is the deepest one.
        """
        if torch.jit.is_scripting():
            return self._forward_plain(x, True)
        return self.forward_intermediates(x, norm=True, intermediates_only=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_features(x)

    def _forward_plain(self, x: torch.Tensor, norm: bool) -> list[torch.Tensor]:
        # all four features without index bookkeeping or checkpointing: the graph TorchScript compiles
        out: list[torch.Tensor] = []
        for down, stage, feature_norm in zip(self.downsample_layers, self.stages, self.norms):
            x = stage(down(x))
            out.append(feature_norm(x) if norm else x)
        return out

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 4, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop stages after the last index taken (timm feature-extraction API); returns the kept indices.

        ``prune_norm=True`` also replaces the feature LayerNorms of the kept stages by identities, so features come
        out un-normalised (as timm prunes a model's final norm); ``prune_head`` has no meaning for the bare encoder.
        """
        take = _resolve_indices(indices, len(self.stages))
        last = max(take)
        for i in range(last + 1, len(self.stages)):
            self.stages[i] = nn.Identity()
            self.downsample_layers[i] = nn.Identity()
            self.norms[i] = nn.Identity()
        if prune_norm:
            for i in range(last + 1):
                self.norms[i] = nn.Identity()
        return sorted(take)


class Rep3D(nn.Module):
    """Rep3D segmentation network: :class:`Rep3DEncoder` + :class:`UnetrDecoder3d`.

    ``[B, in_chans, D, H, W] -> [B, num_classes, D, H, W]`` logits; D, H, W must be multiples of 16.
    ``deep_supervision_heads=True`` adds the decoder's 1/2, 1/4, 1/8 heads (see :class:`UnetrDecoder3d`); with
    ``decoder.deep_supervision = True`` the forward then returns ``[full, 1/2, 1/4, 1/8]`` logits.

    Every argument is checked against :mod:`rep3d.configs.model_args` (types, bounds, known names) at construction.
    """

    fixed_block: str | None = None
    """The block kind a subclass always uses (it then takes no ``block`` argument); ``None``: ``block`` chooses."""

    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)
    """Adapts a checkpoint to a model of this family (input channels, head, train / deploy form); the hub's loaders
    call it (see :mod:`rep3d.models.checkpoint_filter`)."""

    @staticmethod
    def log_name(module_name: str) -> str:
        """The short name of a module in metrics logs: ``encoder.stages.0.0.dwconv`` -> ``stages.0.0``."""
        return module_name.removeprefix("encoder.").removesuffix(".dwconv")

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 16,
        widths: Sequence[int] = (48, 96, 192, 384),
        depths: Sequence[int] = (2, 2, 2, 2),
        kernel_size: int = 21,
        *,
        block: str = "replk",
        modulation: Modulation = "lrbm",
        small_kernel: int | None = None,
        hidden_size: int = 768,
        drop_path_rate: float = 0.0,
        conv_backend: Backend = "auto",
        deploy: bool = False,
        norm_name: str = "instance",
        deep_supervision_heads: bool = False,
        stem_kernel_size: int | None = None,
        **block_kwargs,
    ) -> None:
        super().__init__()
        # every argument is checked before anything is allocated: a typo names this model and lists the accepted
        # arguments, a size out of bounds (a 1001-wide kernel, 0 classes) fails here and not deep inside torch
        given = dict(in_chans=in_chans, num_classes=num_classes, widths=widths, depths=depths, kernel_size=kernel_size,
                     modulation=modulation, hidden_size=hidden_size, drop_path_rate=drop_path_rate,
                     conv_backend=conv_backend, deploy=deploy, norm_name=norm_name,
                     deep_supervision_heads=deep_supervision_heads, **block_kwargs)
        if small_kernel is not None:
            given["small_kernel"] = small_kernel
        if stem_kernel_size is not None:
            given["stem_kernel_size"] = stem_kernel_size
        if self.fixed_block is None:
            given["block"] = block
        check_model_args(type(self).__name__, given, block=self.fixed_block)
        self.in_chans = in_chans
        self.num_classes = num_classes
        block_cfg = BlockCfg.from_model_args(block, kernel_size, modulation=modulation, small_kernel=small_kernel,
                                             conv_backend=conv_backend, deploy=deploy, **block_kwargs)
        self.encoder = Rep3DEncoder(in_chans, widths, depths, drop_path_rate=drop_path_rate,
                                    stem_kernel_size=7 if stem_kernel_size is None else stem_kernel_size,
                                    block_cfg=block_cfg)
        self.decoder = UnetrDecoder3d(in_chans, widths, hidden_size, num_classes, norm_name=norm_name,
                                      deep_supervision_heads=deep_supervision_heads)
        self.stride = self.encoder.stride
        self.min_input_size = 2 * self.stride  # the largest input axis must reach two strides (see check_input)
        # module paths as seen from this model (timm's FeatureHookNet / FeatureGraphNet resolve them here)
        self.feature_info = [dict(info, module=f"encoder.{info['module']}") for info in self.encoder.feature_info]
        # timm's attributes: the channels of the map the classifier (the 1x1x1 output conv) reads
        self.num_features = self.head_hidden_size = self.encoder.widths[0]

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` that says how to fix a wrong channel count or a spatial size off the stride.

        Skipped while a compiler or exporter traces the model (sizes are not Python ints then).
        """
        if is_exporting(x):
            return
        check_volume(x, self.in_chans, f"{type(self).__name__} (in_chans={self.in_chans})")
        weight = next(self.parameters(), None)
        if weight is not None and x.is_floating_point() and x.dtype != weight.dtype \
                and not torch.is_autocast_enabled(x.device.type):
            raise Rep3DTypeError(f"{type(self).__name__} has {str(weight.dtype).removeprefix('torch.')} weights and "
                                 f"got a {str(x.dtype).removeprefix('torch.')} input; cast the input "
                                 f"(x.to({weight.dtype})) or the model (model.to({x.dtype}))")
        sizes = tuple(x.shape[2:])
        if any(s % self.stride for s in sizes):
            down = tuple(max(self.stride, s // self.stride * self.stride) for s in sizes)
            up = tuple(-(-s // self.stride) * self.stride for s in sizes)
            raise Rep3DValueError(
                f"{type(self).__name__} needs every spatial size divisible by {self.stride}, got {sizes}; "
                f"nearest valid sizes are {down} (crop) or {up} (pad: monai.transforms.DivisiblePad({self.stride}))"
            )
        minimum = getattr(self, "min_input_size", 2 * self.stride)  # subclasses with their own __init__: two strides
        if max(sizes) < minimum:  # the deepest stage would hold a single voxel, which instance norm cannot normalise
            raise Rep3DValueError(
                f"{type(self).__name__} needs at least one spatial size of {minimum} or more (its deepest stage, at "
                f"stride {self.stride}, must hold more than one voxel), got {sizes}; pad the input "
                f"(e.g. monai.transforms.SpatialPad({minimum}))"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if not torch.jit.is_scripting():
            self.check_input(x)
        return self.decoder(x, self.encoder(x))

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not torch.jit.is_scripting():
            self.check_input(x)
        return self.encoder.forward_features(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCDHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoder's :meth:`Rep3DEncoder.forward_intermediates` after the stride check (same arguments, timm's
        defaults)."""
        self.check_input(x)
        return self.encoder.forward_intermediates(x, indices, norm=norm, stop_early=stop_early, output_fmt=output_fmt,
                                                  intermediates_only=intermediates_only)

    def prune_intermediate_layers(self, indices=4, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """Keep the encoder up to the last index (see :meth:`Rep3DEncoder.prune_intermediate_layers`);
        ``prune_head=True`` also deletes the decoder."""
        if prune_head and not isinstance(getattr(self, "decoder", None), PrunedDecoder):
            self.decoder = PrunedDecoder()
        return self.encoder.prune_intermediate_layers(indices, prune_norm, prune_head)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory: recompute large-kernel convs and decoder blocks in backward."""
        self.encoder.set_grad_checkpointing(enable)
        self.decoder.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.decoder.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the 1x1x1 output conv(s) by freshly initialised ones with ``num_classes`` outputs (timm's signature).

        ``num_classes=0`` removes the head (timm's idiom): the forward then returns the decoder's full-resolution map
        ``[B, num_features, D, H, W]`` (with deep-supervision heads, each scale's map). For encoder features use
        ``create_model(name, features_only=True)``. ``global_pool`` must be ``None`` or ``""``: a segmentation
        network pools nothing.
        """
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise Rep3DValueError(
                f"{type(self).__name__}.reset_classifier: num_classes must be an int >= 1 (or 0 to remove the head), "
                f"got {num_classes!r}; for encoder feature maps build the model with features_only=True"
            )
        if global_pool not in (None, ""):
            raise Rep3DValueError(
                f"{type(self).__name__}.reset_classifier: global_pool={global_pool!r} has no meaning for a "
                "segmentation network (its logits are a voxel map); pass None or ''"
            )
        widths = self.encoder.widths
        device, dtype = self.encoder.norms[0].weight.device, self.encoder.norms[0].weight.dtype

        def fresh(channels: int) -> nn.Module:
            if num_classes == 0:
                return nn.Identity()
            return UnetOutBlock(3, channels, num_classes).to(device, dtype)

        if hasattr(self.decoder, "seg_layers"):
            self.decoder.seg_layers = nn.ModuleList([fresh(c) for c in widths])
        else:
            self.decoder.out = fresh(widths[0])
        self.num_classes = num_classes


class PrunedDecoder(nn.Module):
    """What ``prune_intermediate_layers(prune_head=True)`` leaves of the decoder: a forward that says so.

    A module rather than a deleted attribute, so that a ``features_only`` model still compiles with TorchScript
    (which compiles the wrapped model's forward too).
    """

    def forward(self, x: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        raise Rep3DValueError("this model's decoder was pruned (features_only): it returns encoder features only; "
                              "build the model without features_only to segment")


class UXNet3D(Rep3D):
    """3D UX-Net (k=7 ConvNeXt-style blocks); ``modulation="lrbm"`` applies the Rep3D mask to its kernels."""

    fixed_block = "ux"

    def __init__(self, in_chans: int = 1, num_classes: int = 16, widths=(48, 96, 192, 384), depths=(2, 2, 2, 2),
                 kernel_size: int = 7, *, modulation: Modulation = None, **kwargs) -> None:
        super().__init__(in_chans, num_classes, widths, depths, kernel_size, block="ux", modulation=modulation,
                         **kwargs)


def _resolve_indices(indices: int | Sequence[int] | None, n: int) -> list[int]:
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 1 <= indices <= n:
            raise Rep3DValueError(
                f"indices={indices}: expected 1..{n} (take the last N stages) or a list of stage indices")
        return list(range(n - indices, n))
    out = [i % n if -n <= i < n else None for i in indices]
    if None in out or not out:
        raise Rep3DValueError(f"stage indices must be in [-{n}, {n - 1}], got {list(indices)}")
    return sorted(set(out))


def _init_weights(module: nn.Module) -> None:
    # stem and downsamplers only: RepLKConv3d, the mask generator and MONAI blocks keep their own initialisation
    if isinstance(module, nn.Conv3d):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
