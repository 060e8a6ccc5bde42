"""Which large-kernel conv engine an exported graph holds, layer by layer, as a typed value and as one line."""

from __future__ import annotations

import enum
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from rep3d.layers import RepLKConv3d
from rep3d.layers.depthwise import cached_backend, useful_kernel_size


class Engine(str, enum.Enum):
    """A large-kernel conv engine as it ends up in a graph."""

    DIRECT = "direct"
    FFT = "fft"


@dataclass(frozen=True)
class ConvPlan:
    """The engine of every large-kernel conv in a graph: ``maps[engine]`` lists the ``DxHxW`` map size of each conv
    that runs it; ``text`` says it (and why) in one line, as ``rep3d export`` prints it."""

    maps: Mapping[Engine, tuple[str, ...]]
    text: str

    @property
    def engines(self) -> frozenset[Engine]:
        return frozenset(self.maps)


SCRIPTED_PLAN_TEXT = ("direct (native conv3d, uncropped kernel) on every large-kernel conv -- TorchScript cannot hold "
                      "the FFT engine's autograd.Function, and a script graph must fit any size")


def scripted_plan(model: nn.Module) -> ConvPlan:
    """A TorchScript graph's plan: the direct engine everywhere, at any size."""
    n = sum(isinstance(m, RepLKConv3d) for m in model.modules())
    return ConvPlan({Engine.DIRECT: ("any",) * n} if n else {}, SCRIPTED_PLAN_TEXT)


def conv_plan(model: nn.Module, x: torch.Tensor, dynamic: Collection[str] = ()) -> ConvPlan:
    """Which engine each large-kernel conv runs at input ``x`` (as exported by ``torch.export`` / ONNX), and why."""
    convs = [m for m in model.modules() if isinstance(m, RepLKConv3d)]
    if not convs:
        return ConvPlan({}, "no large-kernel convs")
    shapes: dict[int, tuple[int, ...]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: shapes.__setitem__(id(mod), tuple(args[0].shape)))
             for m in convs]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    counts: dict[Engine, list[str]] = {}
    for m in convs:
        shape = shapes[id(m)]
        if dynamic:
            engine = Engine.DIRECT
        elif m.conv_backend != "auto":
            engine = Engine(m.conv_backend)
        else:
            ksize = useful_kernel_size(m.kernel_size, shape[2:])
            engine = Engine(cached_backend(shape, ksize, "cpu", torch.float32, False))
        counts.setdefault(engine, []).append("x".join(map(str, shape[2:])))
    parts = []
    for engine, sizes in sorted(counts.items(), key=lambda item: item[0].value):
        maps = ", ".join(sorted(set(sizes), key=_volume, reverse=True))
        parts.append(f"{engine.value} on {len(sizes)} of {len(convs)} ({maps} maps)")
    if dynamic:
        why = "dynamic shapes: the direct engine's graph does not depend on the sizes"
    elif all(m.conv_backend == "auto" for m in convs):
        why = "chosen per layer by the cost model at this ROI (--backend direct/fft forces one)"
    else:
        why = "forced by --backend"
    return ConvPlan({e: tuple(s) for e, s in counts.items()}, f"{'; '.join(parts)} -- {why}")


def conv_path(model: nn.Module, x: torch.Tensor, dynamic: Collection[str] = ()) -> str:
    """:func:`conv_plan` in one line: which engine each large-kernel conv runs at input ``x``, and why."""
    return conv_plan(model, x, dynamic).text


def _volume(size: str) -> int:
    return math.prod(int(s) for s in size.split("x"))
