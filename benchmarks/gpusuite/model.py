"""Section 4, ``model``: rep3d_base training steps (native vs auto engine, vs uxnet3d_base) and deployed inference."""


import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_step import time_train_steps  # noqa: E402

import rep3d  # noqa: E402
from gpusuite.common import Suite, _sync, sizes  # noqa: E402
from gpusuite.engine import native_estimate_s  # noqa: E402
from gpusuite.predictor import _phantom_volume, count_forwards  # noqa: E402
from rep3d.layers import RepLKConv3d  # noqa: E402

# ---------------------------------------------------------------------------------------------------- 4. model


@contextlib.contextmanager
def native_large_kernel_convs(model: torch.nn.Module):
    """Run every large-kernel conv of ``model`` as PyTorch's own ``F.conv3d`` (full kernel, autograd's backward,
    autocast applies): what a user gets from a plain ``nn.Conv3d(groups=C)``. Benchmark-only."""
    convs = [m for m in model.modules() if isinstance(m, RepLKConv3d)]

    def native(x, weight, bias=None):
        return F.conv3d(x, weight, bias, padding=tuple(k // 2 for k in weight.shape[2:]), groups=x.shape[1])

    for m in convs:
        m._conv = native
    try:
        yield len(convs)
    finally:
        for m in convs:
            del m._conv


def _native_step_estimate(suite: Suite, model: torch.nn.Module, roi: int, batch: int) -> float | None:
    probe = suite.results["sections"].get("engine", {}).get("native_probe", {}).get(str(torch.bfloat16))
    if not probe:
        return None
    total = 0.0
    for m in model.modules():
        if isinstance(m, RepLKConv3d):
            s = roi // m._stage_stride if hasattr(m, "_stage_stride") else None
            if s is None:
                return None
            total += native_estimate_s(probe, batch, m.channels, s, "fwd+bwd")
    return total


def _stage_strides(model: torch.nn.Module) -> None:
    """Tag each large-kernel conv with its stage's stride (2, 4, 8, 16) for the native step estimate."""
    for i, stage in enumerate(model.encoder.stages):
        for m in stage.modules():
            if isinstance(m, RepLKConv3d):
                m._stage_stride = 2 ** (i + 1)


def section_model(suite: Suite, deadline: float) -> dict:
    sz = sizes(suite.args.tiny)
    device, roi, batch, classes = suite.device, sz["model_roi"], sz["batch"], sz["model_classes"]
    amp = torch.bfloat16
    fmt = torch.channels_last_3d
    steps: dict = {}
    out: dict = {
        "roi": roi,
        "batch": batch,
        "amp": "bf16",
        "optimizer": "AdamW",
        "loss": "DiceCE",
        "memory_format": "channels_last_3d",
        "classes": classes,
        "train_step": steps,
    }
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, roi, roi, roi, generator=gen).to(device, memory_format=fmt)
    y = torch.randint(0, classes, (batch, 1, roi, roi, roi), generator=gen).to(device)
    configs = (("rep3d_base", "auto"), ("uxnet3d_base", "auto"), ("rep3d_base", "native"))
    for name, conv in configs:
        key = f"{name}/{conv}"
        if time.perf_counter() > deadline:
            steps[key] = {"status": "skipped", "reason": "section budget spent"}
            continue
        torch.manual_seed(0)
        model = rep3d.create_model(name, num_classes=classes, **sz["model_kwargs"]).to(device, memory_format=fmt)
        _stage_strides(model)
        ctx = native_large_kernel_convs(model) if conv == "native" else contextlib.nullcontext()
        if conv == "native":
            est = _native_step_estimate(suite, model, roi, batch)
            left = deadline - time.perf_counter()
            if est is not None and 2 * est > left:
                steps[key] = {
                    "status": "skipped",
                    "reason": f"native convs estimated at {est:.0f} s per step (engine probe), {left:.0f} s left",
                }
                del model
                continue
        with ctx:
            steps[key] = time_train_steps(
                model,
                x,
                y,
                repeats=sz["model_repeats"],
                amp_dtype=amp,
                slow_s=max(1.0, (deadline - time.perf_counter()) / 4),
            )
        steps[key]["status"] = "ok"
        print(
            f"   train step {key}: {steps[key]['median_step_s']:.3f} s, {steps[key]['samples_per_s']:.2f} samples/s",
            flush=True,
        )
        del model
        suite.results["sections"]["model"].update(out)
        suite.save()
    if time.perf_counter() < deadline:
        out["inference"] = _deployed_inference(suite, sz, deadline)
    return out


def _deployed_inference(suite: Suite, sz: dict, deadline: float) -> dict:
    device, roi = suite.device, sz["model_roi"]
    torch.manual_seed(0)
    model = rep3d.create_model("rep3d_base", num_classes=sz["model_classes"], **sz["model_kwargs"]).eval()
    deployed = rep3d.reparameterize_model(model).to(device)
    x = torch.randn(1, 1, roi, roi, roi, device=device)
    res: dict = {"model": "rep3d_base deployed (random weights: speed only)"}
    for label, dtype in (("fp32", None), ("bf16_autocast", torch.bfloat16)):
        times = []
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            deployed(x)
            for _ in range(sz["window_repeats"]):
                _sync(device)
                t = time.perf_counter()
                deployed(x)
                _sync(device)
                times.append(time.perf_counter() - t)
        res[f"per_window_s_{label}"] = statistics.median(times)
    if time.perf_counter() < deadline:
        vol = _phantom_volume(tuple(sz["phantom_shape"]))
        predictor = rep3d.Predictor(
            deployed,
            device=device,
            roi_size=(roi,) * 3,
            spacing=None,
            orientation=None,
            intensity_window=(-125.0, 275.0),
            amp=device.type == "cuda",  # a CPU dry run may lack bfloat16 kernels (Predictor refuses amp there)
        )
        _sync(device)
        t = time.perf_counter()
        with count_forwards(predictor.model) as windows:
            predictor(vol.image[None])
        _sync(device)
        res["whole_phantom_s"] = time.perf_counter() - t
        res["whole_phantom_shape"] = list(sz["phantom_shape"])
        res["whole_phantom_windows"] = windows[0]
        res["whole_phantom_note"] = ("Predictor, overlap 0.5, gaussian blend, "
                                     + ("AMP (float16)" if device.type == "cuda" else "fp32") + ", first call")
    return res


