"""Import official Rep3D / 3D UX-Net checkpoints (``rep3d import-official CKPT -o OUTDIR``).

The published code's ``state_dict`` layout is mapped onto rep3d's models; every key is either mapped or reported
(dropped deliberately, with the reason, or not understood). Checkpoints are read without executing pickled code:
safetensors, or ``torch.load(weights_only=True)``; ``state_dict`` / ``model`` / ``net`` wrappers and a ``module.``
prefix are accepted.

Official layout -> rep3d:

=====================================================  ============================================================
``rep3d.downsample_layers.*`` / ``uxnet_3d.*``         ``encoder.downsample_layers.*`` (stem conv + LayerNorm, ...)
``rep3d.stages.<i>.<j>.dwconv.weight``                 ``encoder.stages.<i>.<j>.dwconv.weight``
``rep3d.stages.<i>.<j>.norm.*`` (BatchNorm3d)          ``encoder.stages.<i>.<j>.dwconv.bn.*``
``rep3d.stages.<i>.<j>.prior_map``                     dropped: the distance prior, a constant
``rep3d.stages.<i>.<j>.prior_conv*`` / ``norm_w*``     dropped: the mask generator (see below)
``uxnet_3d.stages.<i>.<j>.{dwconv,norm,pwconv1,pwconv2,gamma}``  same names under ``encoder.`` (a ``Linear`` pwconv
                                                       becomes a 1x1x1 conv)
``rep3d.norm<i>`` / ``uxnet_3d.norm<i>``               ``encoder.norms.<i>``
``encoder1..5``, ``decoder1..5``, ``out.conv.conv``    ``decoder.encoder1..5``, ``decoder.decoder1..5``, ``decoder.out``
=====================================================  ============================================================

Which form the official Rep3D kernels belong in. Whether a released ``dwconv.weight`` already carries a mask cannot
be known: the released training forward crashes (its generator's second conv yields a 29³ mask for a 21³ kernel), so
whatever trained a released checkpoint was unreleased code. What is known is how the official *inference* network
(``deploy=True``) uses it: it ignores the generator and the prior and convolves with the saved kernel as it is. The
importer reproduces that function, so the kernels go into the *unmodulated* form: ``rep3d_<size>_vanilla`` in train
form (kernel + BatchNorm, ``form="train"``, fine-tunable) or that model folded (``form="deploy"``: one depthwise conv
with bias per block). Loading them into a masked model (``rep3d_*`` / ``rep3d_*_fixed``) would multiply a mask the
official inference network never applies. ``prior_map``, ``prior_conv*`` and ``norm_w*`` are reported as dropped with
this reason.

The official Rep3D block is ``GELU(BN(conv(x)))`` without a residual connection, as is rep3d's default (paper) block;
imported Rep3D models are built with ``block_residual=False`` explicitly. 3D UX-Net blocks match the official ones as
they are.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from rep3d.builder import create_model
from rep3d.configs.pretrained import select_keys, with_values
from rep3d.errors import Rep3DValueError, Rep3DWeightsError
from rep3d.hub.weights import load_exact, read_weights, sha256_file
from rep3d.layers import RepLKConv3d
from rep3d.models import is_model, reparameterize_model
from rep3d.models.zoo import SIZES

logger = logging.getLogger(__name__)

FAMILIES = {"rep3d": "Rep3D", "uxnet_3d": "3D UX-Net"}
MASK_REASON = ("official mask generator, not used by the official inference network: with deploy=True it ignores the "
               "generator and convolves with the saved dwconv.weight as it is (whether that kernel already carries a "
               "mask cannot be known: the released training forward crashes, so released checkpoints were trained by "
               "unreleased code); imported into the unmodulated form, which computes that same function")
PRIOR_REASON = ("official distance-prior buffer: a constant the official inference network (deploy=True) does not "
                "apply; the saved dwconv.weight is used as it is")
NO_RESIDUAL_NOTE = ("official Rep3D blocks compute GELU(BN(conv(x))) without a residual, as rep3d's paper block does: "
                    "the model is built with block_residual=False")
DECODER_KEY = re.compile(r"^(encoder[1-5]|decoder[1-5]|out)\.(.+)$")


@dataclass
class ImportReport:
    """What :func:`load_official_checkpoint` did with every key of the checkpoint."""

    source: str
    family: str
    architecture: str
    model_args: dict[str, Any]
    form: str
    mapped: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every tensor of the checkpoint was mapped or deliberately dropped."""
        return not self.unmapped

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.model_args.items())
        lines = [
            f"official {self.family} checkpoint: {self.source}",
            f"imported into: {self.architecture}({args}), {self.form} form",
            f"mapped: {len(self.mapped)} tensors",
            f"dropped deliberately: {len(self.dropped)} tensors",
        ]
        groups = Counter((_pattern(k), reason) for k, reason in self.dropped.items())
        lines += [f"  {pattern} (x{count}): {reason}" for (pattern, reason), count in sorted(groups.items())]
        lines.append(f"not understood (unmapped): {len(self.unmapped)}" + (":" if self.unmapped else ""))
        lines += [f"  {k}" for k in self.unmapped]
        if self.ignored:
            lines.append("ignored checkpoint entries: " + ", ".join(self.ignored))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _pattern(key: str) -> str:
    """``rep3d.stages.0.1.prior_conv2.bias`` -> ``rep3d.stages.<i>.<j>.prior_conv*.*`` (report grouping)."""
    key = re.sub(r"\.\d+\.\d+\.", ".<i>.<j>.", key)
    key = re.sub(r"(prior_conv|norm_w)2?\.(weight|bias)$", r"\1*.*", key)
    return key


# ------------------------------------------------------------------------------------------------------------ mapping

def map_key(key: str, family: str) -> tuple[str | None, str | None]:
    """``(rep3d key, None)`` for a mapped official key, ``(None, reason)`` for a deliberately dropped one,
    ``(None, None)`` for a key this importer does not understand."""
    if (m := DECODER_KEY.match(key)) is not None:
        return f"decoder.{m[1]}.{m[2]}", None
    prefix = family + "."
    if not key.startswith(prefix):
        return None, None
    rest = key[len(prefix):]
    if rest.startswith("downsample_layers."):
        return f"encoder.{rest}", None
    if (m := re.fullmatch(r"norm([0-3])\.(weight|bias)", rest)) is not None:
        return f"encoder.norms.{m[1]}.{m[2]}", None
    m = re.fullmatch(r"stages\.(\d+)\.(\d+)\.(.+)", rest)
    if m is None:
        return None, None
    block, leaf = f"encoder.stages.{m[1]}.{m[2]}", m[3]
    if family == "rep3d":
        if leaf == "dwconv.weight":
            return f"{block}.dwconv.weight", None
        if (n := re.fullmatch(r"norm\.(weight|bias|running_mean|running_var|num_batches_tracked)", leaf)) is not None:
            return f"{block}.dwconv.bn.{n[1]}", None
        if leaf == "prior_map":
            return None, PRIOR_REASON
        if re.fullmatch(r"(prior_conv2?|norm_w2?)\.(weight|bias)", leaf):
            return None, MASK_REASON
        return None, None
    if re.fullmatch(r"(dwconv|norm|pwconv1|pwconv2)\.(weight|bias)|gamma", leaf):
        return f"{block}.{leaf}", None
    return None, None


def _family(state: dict[str, torch.Tensor], name: str, where: str) -> str:
    found = sorted({k.split(".", 1)[0] for k in state} & set(FAMILIES))
    if len(found) != 1:
        roots = sorted({k.split(".", 1)[0] for k in state})
        raise Rep3DWeightsError(
            name, where, "not an official Rep3D / 3D UX-Net checkpoint: expected encoder keys under exactly one of "
            f"'rep3d.' or 'uxnet_3d.', found top-level names {roots[:12]}",
            "pass the official checkpoint (REP3D / UXNET model state_dict); a rep3d checkpoint loads with "
            "rep3d.create_model(..., checkpoint_path=...)", reason="architecture",
        )
    return found[0]


def infer_model_args(state: dict[str, torch.Tensor], family: str, name: str = "official checkpoint",
                     where: str = "checkpoint") -> dict[str, Any]:
    """Sizes from tensor shapes: ``in_chans``, ``num_classes``, ``widths``, ``depths``, ``kernel_size``,
    ``hidden_size`` (and UX-Net's ``mlp_ratio`` / ``mlp_groups`` / ``layer_scale_init_value``)."""
    enc = family

    def get(key: str) -> torch.Tensor:
        if key not in state:
            raise Rep3DWeightsError(name, where, f"incomplete official checkpoint: {key} is missing",
                                    "pass the full model state_dict (encoder and decoder)", reason="keys")
        return state[key]

    stem = get(f"{enc}.downsample_layers.0.0.weight")
    widths = [stem.shape[0]] + [get(f"{enc}.downsample_layers.{i}.1.weight").shape[0] for i in (1, 2, 3)]
    depths = [len({int(m[1]) for k in state if (m := re.match(rf"{enc}\.stages\.{i}\.(\d+)\.", k))}) for i in range(4)]
    if not all(depths):
        raise Rep3DWeightsError(name, where, f"incomplete official checkpoint: stage depths {depths}",
                                "pass the full model state_dict", reason="keys")
    args: dict[str, Any] = {
        "in_chans": stem.shape[1], "num_classes": get("out.conv.conv.weight").shape[0], "widths": widths,
        "depths": depths, "kernel_size": get(f"{enc}.stages.0.0.dwconv.weight").shape[-1],
        "hidden_size": get("encoder5.layer.conv1.conv.weight").shape[0],
    }
    kernel = tuple(get(f"{enc}.stages.0.0.dwconv.weight").shape[2:])
    if any(k % 2 == 0 for k in kernel):
        raise Rep3DWeightsError(
            name, where, f"the checkpoint's depthwise kernels are {'x'.join(map(str, kernel))} (an even size): rep3d's "
            "'same'-padded convs need odd kernels, so no rep3d model computes this network's function",
            "import a checkpoint trained with odd kernels (the official models use 21 or 7)", reason="architecture",
        )
    if family == "uxnet_3d":
        pw1 = get(f"{enc}.stages.0.0.pwconv1.weight")
        args["mlp_ratio"] = pw1.shape[0] // widths[0]
        args["mlp_groups"] = "depthwise" if pw1.ndim == 5 and pw1.shape[1] == 1 and widths[0] > 1 else 1
        if f"{enc}.stages.0.0.gamma" not in state:
            args["layer_scale_init_value"] = 0.0
    else:
        args["block_residual"] = False  # the official block is GELU(BN(conv(x)))
    return args


SIZE_ARGS = ("widths", "depths", "hidden_size")
"""The constructor arguments that tell a registered Rep3D size apart."""


def _default_architecture(family: str, args: dict[str, Any]) -> str:
    if family == "uxnet_3d":
        return "uxnet3d_base"
    inferred = select_keys(args, SIZE_ARGS)
    for size, spec in SIZES.items():
        if {k: list(v) if isinstance(v, tuple) else v for k, v in select_keys(spec, SIZE_ARGS).items()} == inferred:
            return f"rep3d_{size}_vanilla"
    return "rep3d_base_vanilla"  # any size: widths / depths / hidden_size are passed explicitly


def _check_unmodulated(model: nn.Module, architecture: str, family: str, name: str, where: str) -> None:
    convs = [m for m in model.modules() if isinstance(m, RepLKConv3d)]
    if any(m.modulation_kind is not None or m.small_kernel is not None for m in convs):
        plain = "uxnet3d_base" if family == "uxnet_3d" else re.sub(r"(_fixed|_csla|_vanilla)?$", "_vanilla",
                                                                   architecture, count=1)
        raise Rep3DWeightsError(
            name, where, f"{architecture!r} applies a mask or a parallel small kernel to its large kernels, but the "
            "official inference network (deploy=True) uses the saved kernels as they are, with no mask (whether they "
            "already carry one cannot be known: the released training forward crashes); loading them there would "
            "change what they compute",
            f"use model_name={plain!r} (or leave model_name unset)", reason="form",
        )


def load_official_checkpoint(
    path: str | Path,
    model_name: str | None = None,
    *,
    form: Literal["train", "deploy"] = "train",
    strict: bool = True,
    report: bool = True,
    **model_kwargs: Any,
) -> tuple[nn.Module, ImportReport]:
    """Build a rep3d model from an official Rep3D / 3D UX-Net checkpoint; returns ``(model, report)``.

    ``model_name`` defaults to the unmodulated model of the checkpoint's size (``rep3d_<size>_vanilla``, or
    ``rep3d_base_vanilla`` with explicit sizes; ``uxnet3d_base`` for UX-Net), inferred from tensor shapes; a named
    model must be unmodulated. ``form="deploy"`` folds the result. ``strict`` (default) raises on keys this importer
    does not understand and on model parameters left without a value; ``report=True`` also logs the report
    (logger ``rep3d.official``). ``model_kwargs`` override the inferred constructor arguments.
    """
    if form not in ("train", "deploy"):
        raise Rep3DValueError(f"form must be 'train' or 'deploy', got {form!r}")
    path = Path(path)
    name, where = f"official checkpoint {path.name}", str(path)
    ignored: list[str] = []
    state, _ = read_weights(path, name, where, ignored=ignored)
    family = _family(state, name, where)
    inferred = infer_model_args(state, family, name, where)
    if model_name is None:
        architecture, args = _default_architecture(family, inferred), {**inferred, **model_kwargs}
    else:
        if not is_model(model_name) or ("uxnet" in model_name) != (family == "uxnet_3d"):
            raise Rep3DWeightsError(
                name, where, f"model_name={model_name!r} is not a rep3d {FAMILIES[family]} model",
                "leave model_name unset to infer it, or name a " + ("uxnet3d_* model" if family == "uxnet_3d"
                                                                     else "rep3d_*_vanilla model"),
                reason="architecture",
            )
        architecture = model_name
        keep = ("in_chans", "num_classes", "kernel_size", "block_residual")
        args = {k: inferred[k] for k in keep if k in inferred} | model_kwargs
    model = create_model(architecture, **args)
    _check_unmodulated(model, architecture, family, name, where)
    result = ImportReport(source=f"{path} (sha256 {sha256_file(path)[:16]}...)", family=FAMILIES[family],
                          architecture=architecture, model_args=args, form=form, ignored=ignored)
    mapped_state: dict[str, torch.Tensor] = {}
    expected = model.state_dict()
    for key, tensor in state.items():
        target, reason = map_key(key, family)
        if target is None:
            if reason:
                result.dropped[key] = reason
            else:
                result.unmapped.append(key)
            continue
        if tensor.ndim == 2 and target in expected and expected[target].ndim == 5:  # Linear pwconv -> 1x1x1 conv
            tensor = tensor[:, :, None, None, None]
        mapped_state[target] = tensor
        result.mapped[key] = target
    if family == "rep3d":
        result.notes.append(NO_RESIDUAL_NOTE)
    if result.unmapped and strict:
        raise Rep3DWeightsError(
            name, where, f"{len(result.unmapped)} tensors of the checkpoint are not understood by this importer "
            f"({', '.join(result.unmapped[:6])}{', ...' if len(result.unmapped) > 6 else ''})",
            "check that this is an official Rep3D / 3D UX-Net checkpoint; strict=False (CLI --no-strict) imports "
            "the rest and reports these", reason="keys",
        )
    load_exact(model, mapped_state, strict=strict, name=name, where=where, metadata={})
    if form == "deploy":
        model = reparameterize_model(model)
    model.pretrained_cfg = model.default_cfg = with_values(
        model.pretrained_cfg, origin=f"official {FAMILIES[family]} checkpoint {path.name}")
    if report:
        logger.info("%s", result)
    return model, result
