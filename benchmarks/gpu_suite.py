"""rep3d's first contact with a GPU, as one prepared script (< ~8 min on one H200): correctness, speed, memory.

Sections, each with a wall-time budget (``--budget-scale`` scales them; ``--max-seconds`` caps the whole run). A
section that would start with less than its minimum left, or that runs out of budget, is skipped or cut short and
the reason is recorded; ``suite.json`` is rewritten after every section (and every engine row), so a run killed
from outside still leaves its results.

1. ``gpu_tests`` -- ``pytest -m gpu tests/test_gpu.py`` (engine gradients vs native in float64 / float32,
   train->deploy equality of every registered model, AMP bf16 and fp16 + GradScaler steps, ``torch.compile`` of
   rep3d_tiny vs eager): junit XML, log, and counts.
2. ``predictor`` -- the Predictor (bundled rep3d_tiny.phantom weights) on a 256x256x160 phantom on the device,
   stitching on the device and on the CPU: both label maps compared, both timed.
3. ``engine`` -- the depthwise 21^3 conv on the four Rep3D stage shapes of 96^3 and 128^3 patches, B = 2,
   forward and forward+backward, fp32 with TF32 off, fp32 with TF32 on (PyTorch's cuDNN default) and bfloat16
   tensors; paths native cuDNN ``F.conv3d`` (groups = C), rep3d direct / fft / auto, torch-fftconv,
   fft-conv-pytorch (a missing peer is reported as "not installed"). Medians of CUDA-synchronised calls, peak
   memory per path (``torch.cuda.max_memory_allocated``), error vs a float64 reference. Native calls that a probe
   predicts to take longer than ``--native-limit-s`` are skipped (recorded). Then the CUDA auto rule is refitted
   from the table (``calibrate_auto.fit_cuda_rule``).
4. ``model`` -- one training step of rep3d_base at 96^3, B = 2, AMP bf16, AdamW + DiceCE: large-kernel convs on
   native cuDNN (PyTorch's own autograd) vs rep3d's auto, and uxnet3d_base on the same step: samples/s, peak
   memory. Inference of the deployed rep3d_base: per 96^3 window and a whole 256x256x160 phantom (Predictor).
5. ``train`` -- ``rep3d.train.train`` (the ``phantom`` recipe) of rep3d_tiny on phantoms at 96^3 crops for
   ``--train-seconds`` (stopped by SIGINT, which the loop turns into a checkpoint): steps/s, GPU utilisation
   (nvidia-smi), held-out Dice of the last step on the labelled test phantoms (synthetic data).

Writes to ``--out`` (default ``$OUT``): ``suite.json``, ``summary.md``, ``engine_table.{json,md}``,
``cuda_rule_fit.json``, ``pytest_gpu.{xml,log}``, ``train_metrics.csv``.

    python benchmarks/gpu_suite.py --out $OUT                  # on the GPU machine
    python benchmarks/gpu_suite.py --device cpu --tiny --out /tmp/dry   # dry run: same code, tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import calibrate_auto  # noqa: E402
import conv_backends  # noqa: E402
from train_step import time_train_steps  # noqa: E402

import rep3d  # noqa: E402
from rep3d.layers import RepLKConv3d  # noqa: E402

# (name, budget in seconds, minimum seconds left to start it) for the full run; the sum stays under ~8 minutes
SECTIONS = (
    ("gpu_tests", 120.0, 20.0),  # torch.compile (inductor) of rep3d_tiny, train and eval, is most of it
    ("predictor", 35.0, 10.0),
    ("engine", 130.0, 30.0),
    ("model", 65.0, 20.0),
    ("train", 130.0, 40.0),
)
# PyTorch's default first (cuDNN may use TF32): the CUDA rule is fitted on it, so it must not be cut by the budget
PRECISIONS = ("fp32_tf32_on", "bf16", "fp32_tf32_off")


# ---------------------------------------------------------------------------------------------------- sizes


def sizes(tiny: bool) -> dict:
    """Every size the sections use: the real run, or the dry run's tiny stand-ins (same code paths)."""
    if not tiny:
        return dict(
            phantom_shape=(256, 256, 160),
            predictor_roi=None,
            patches=(96, 128),
            widths=conv_backends.WIDTHS,
            kernel=21,
            batch=2,
            repeats=5,
            model_roi=96,
            model_repeats=3,
            model_kwargs={},
            model_classes=16,
            train_shape=(112, 112, 96),
            train_roi=96,
            train_cases=(12, 4),
            train_kwargs={},
            train_workers=6,
            train_iterations=100_000,
            train_val_every=250,
            window_repeats=5,
        )
    return dict(
        phantom_shape=(32, 32, 32),
        predictor_roi=(32, 32, 32),
        patches=(32,),
        widths=(6, 12, 24, 48),
        kernel=7,
        batch=2,
        repeats=1,
        model_roi=32,
        model_repeats=1,
        model_kwargs=dict(widths=(4, 8, 16, 32), hidden_size=32, kernel_size=5),
        model_classes=3,
        train_shape=(32, 32, 32),
        train_roi=32,
        train_cases=(3, 1),
        train_kwargs=dict(kernel_size=5),
        train_workers=0,
        train_iterations=2,
        train_val_every=2,
        window_repeats=1,
    )


# ---------------------------------------------------------------------------------------------------- bookkeeping


class Suite:
    """Results, budgets and the partial JSON written after every step."""

    def __init__(self, out: Path, args: argparse.Namespace) -> None:
        self.out, self.args = out, args
        self.t0 = time.perf_counter()
        self.device = torch.device(args.device)
        self.results: dict = {
            "environment": environment(self.device),
            "args": {k: str(v) for k, v in vars(args).items()},
            "synthetic_data": True,
            "sections": {},
        }
        self.save()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.args.max_seconds - self.elapsed()

    def save(self) -> None:
        tmp = self.out / "suite.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=1, default=_json_default))
        tmp.replace(self.out / "suite.json")

    def run(self, name: str, budget: float, minimum: float, fn: Callable[[float], dict]) -> None:
        budget = min(budget * self.args.budget_scale, self.left())
        entry: dict = {"budget_s": round(budget, 1)}
        self.results["sections"][name] = entry
        if name in self.args.skip:
            entry.update(status="skipped", reason="--skip")
        elif budget < minimum * self.args.budget_scale:
            entry.update(status="skipped", reason=f"only {budget:.0f} s of --max-seconds left (needs {minimum:.0f})")
        else:
            print(f"== {name} (budget {budget:.0f} s, {self.elapsed():.0f} s elapsed)", flush=True)
            start = time.perf_counter()
            entry["status"] = "running"
            self.save()
            try:
                result = fn(start + budget)
                entry.update(result)
                entry["status"] = result.get("status", "ok")
            except Exception as exc:  # one broken section must not cost the others their results
                entry.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
                print(entry["traceback"], file=sys.stderr, flush=True)
            finally:
                entry["wall_s"] = round(time.perf_counter() - start, 1)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        print(f"   {name}: {entry['status']} {entry.get('reason', '')}", flush=True)
        self.save()
        self.write_summary()

    def write_summary(self) -> None:
        """``summary.md`` from the results so far (also after each section: a killed run keeps its tables)."""
        try:
            (self.out / "summary.md").write_text(summary_markdown(self.results))
        except Exception as exc:  # a summary bug must not cost the measurements
            self.results["summary_error"] = f"{type(exc).__name__}: {exc}"
            self.save()


def _json_default(obj):
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def environment(device: torch.device) -> dict:
    env = conv_backends.environment(device)
    env["rep3d"] = rep3d.__version__
    env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        env["git_commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    return env


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def tf32(enabled: bool):
    """cuDNN and cuBLAS TF32 on or off inside the block (PyTorch's defaults: cuDNN on, matmul off)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ---------------------------------------------------------------------------------------------------- 1. tests


def section_gpu_tests(suite: Suite, deadline: float) -> dict:
    xml_path, log_path = suite.out / "pytest_gpu.xml", suite.out / "pytest_gpu.log"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-v",
        "-rA",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml_path}",
        str(ROOT / "tests" / "test_gpu.py"),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if suite.device.type == "cpu":
        env["REP3D_TEST_DEVICE"] = "cpu"  # the dry run: the same tests on CPU where they are cheap
    timeout = max(1.0, deadline - time.perf_counter())
    with open(log_path, "w") as log:
        try:
            rc = subprocess.run(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            return {
                "status": "timeout",
                "reason": f"pytest ran past its {timeout:.0f} s budget; see pytest_gpu.log",
                "command": " ".join(cmd[1:]),
            }
    out: dict = {"command": "python " + " ".join(cmd[1:]), "returncode": rc}
    if xml_path.exists():
        suite_el = ET.parse(xml_path).getroot()
        suite_el = suite_el if suite_el.tag == "testsuite" else suite_el.find("testsuite")
        cases = []
        for case in suite_el.iter("testcase"):
            outcome = "passed"
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    cases.append(
                        {"name": case.get("name"), "outcome": outcome, "message": (el.get("message") or "")[:300]}
                    )
                    break
            else:
                cases.append({"name": case.get("name"), "outcome": outcome, "time_s": float(case.get("time", 0))})
        counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
        out.update(counts=counts, cases=cases)
    out["status"] = "ok" if rc == 0 else "failed"
    return out


# ---------------------------------------------------------------------------------------------------- 2. predictor


@contextlib.contextmanager
def count_forwards(model: torch.nn.Module):
    """Counts ``model``'s forward calls inside the block (windows x batches of a sliding-window run): ``[n]``."""
    count = [0]
    handle = model.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    try:
        yield count
    finally:
        handle.remove()


@functools.lru_cache(maxsize=1)
def _phantom_volume(shape):
    """One synthetic volume (6 s to make at 256x256x160), shared by the predictor and model sections."""
    from rep3d.data.phantom import DEFAULT_SPACING, case_seed, make_phantom

    return make_phantom(case_seed(0, "test", 1000), tuple(shape), DEFAULT_SPACING)


def section_predictor(suite: Suite, deadline: float) -> dict:
    from rep3d.metrics import dice_per_class, mean_dice

    sz = sizes(suite.args.tiny)
    model = rep3d.create_model("rep3d_tiny.phantom", pretrained=True)
    vol = _phantom_volume(tuple(sz["phantom_shape"]))
    num_classes = model.num_classes
    out: dict = {
        "model": "rep3d_tiny.phantom (bundled weights, trained on synthetic phantoms)",
        "volume": list(sz["phantom_shape"]),
        "runs": {},
    }
    labels = {}
    for stitch in ("device", "cpu"):
        if time.perf_counter() > deadline:
            out["runs"][stitch] = {"status": "skipped", "reason": "section budget spent"}
            continue
        kwargs = {} if sz["predictor_roi"] is None else {"roi_size": sz["predictor_roi"]}
        predictor = rep3d.Predictor(
            model, device=suite.device, stitch_device=suite.device if stitch == "device" else "cpu", **kwargs
        )
        crop = tuple(slice(0, r) for r in predictor.roi_size)
        predictor(vol.image[(None, *crop)], vol.affine)  # warm-up on one window: cuDNN / FFT plans
        _sync(suite.device)
        t = time.perf_counter()
        with count_forwards(predictor.model) as windows:
            pred = predictor(vol.image[None], vol.affine)
        _sync(suite.device)
        seconds = time.perf_counter() - t
        labels[stitch] = pred.label
        dice = dice_per_class(
            torch.from_numpy(pred.label.astype("int64")), torch.from_numpy(vol.label.astype("int64")), num_classes
        )
        out["runs"][stitch] = {
            "seconds": seconds,
            "windows_forwarded": windows[0],
            "roi": list(predictor.roi_size),
            "mean_dice_vs_phantom_truth": mean_dice(dice),
        }
    if len(labels) == 2:
        same = float((labels["device"] == labels["cpu"]).mean())
        out["label_agreement_device_vs_cpu_stitching"] = same
        out["identical"] = bool(same == 1.0)
        if same < 0.999:
            out["status"], out["reason"] = "failed", f"device and CPU stitching agree on only {same:.4%} of voxels"
    return out


# ---------------------------------------------------------------------------------------------------- 3. engine


def _native_probe(device: torch.device, dtype: torch.dtype, channels: int, spatial: int, kernel: int) -> dict:
    """Seconds of one native forward and forward+backward at a small shape (second call, without setup)."""
    x = torch.randn(1, channels, spatial, spatial, spatial, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(channels, 1, kernel, kernel, kernel, device=device, dtype=dtype, requires_grad=True)
    times = {}
    for _ in range(2):
        _sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            F.conv3d(x, w, padding=kernel // 2, groups=channels)
        _sync(device)
        times["fwd"] = time.perf_counter() - t
        t = time.perf_counter()
        y = F.conv3d(x, w, padding=kernel // 2, groups=channels)
        torch.autograd.grad(y, (x, w), torch.ones_like(y))
        _sync(device)
        times["fwd+bwd"] = time.perf_counter() - t
    return {"channels": channels, "spatial": spatial, **times}


def native_estimate_s(probe: dict, batch: int, channels: int, spatial: int, pass_: str) -> float:
    """Native cost scales with B * C * S^3 at a fixed full kernel (native never crops it)."""
    return probe[pass_] * batch * channels * spatial**3 / (probe["channels"] * probe["spatial"] ** 3)


def engine_rows_plan(sz: dict) -> list[dict]:
    """Rows in order of importance: the 96^3 patch first (all precisions), then 128^3."""
    plan = []
    for patch in sz["patches"]:
        for precision in PRECISIONS:
            for channels, spatial in conv_backends.stage_shapes(patch, sz["widths"]):
                for backward in (False, True):
                    plan.append(
                        dict(patch=patch, precision=precision, channels=channels, spatial=spatial, backward=backward)
                    )
    return plan


def section_engine(suite: Suite, deadline: float) -> dict:
    sz = sizes(suite.args.tiny)
    device = suite.device
    paths = {n: conv_backends.make_path(n) for n in conv_backends.PATHS}
    c_small, s_small = conv_backends.stage_shapes(min(sz["patches"]), sz["widths"])[-1]
    probes = {}
    for dtype in (torch.float32, torch.bfloat16):
        with tf32(False):
            probes[str(dtype)] = _native_probe(device, dtype, c_small, s_small, sz["kernel"])
    rows, skipped = [], []
    out = {
        "native_probe": probes,
        "kernel": sz["kernel"],
        "batch": sz["batch"],
        "repeats": sz["repeats"],
        "native_limit_s": suite.args.native_limit_s,
        "rows": rows,
        "rows_not_run": skipped,
        "peers": {p: ("installed" if paths[p] else "not installed") for p in ("torch-fftconv", "fft-conv-pytorch")},
    }
    for plan in engine_rows_plan(sz):
        if time.perf_counter() > deadline:
            skipped.append({**plan, "reason": "section budget spent"})
            continue
        dtype = torch.bfloat16 if plan["precision"] == "bf16" else torch.float32
        pass_ = "fwd+bwd" if plan["backward"] else "fwd"
        est = native_estimate_s(probes[str(dtype)], sz["batch"], plan["channels"], plan["spatial"], pass_)
        skip = {"native"} if est > suite.args.native_limit_s else set()
        t = time.perf_counter()
        with tf32(plan["precision"] == "fp32_tf32_on"):
            row = conv_backends.bench_row(
                plan["channels"],
                plan["spatial"],
                sz["batch"],
                sz["kernel"],
                plan["backward"],
                paths,
                device=device,
                dtype=dtype,
                autocast=False,
                repeats=sz["repeats"],
                skip=skip,
                slow_ms=suite.args.native_limit_s * 1e3,
            )
        row.update(
            patch=plan["patch"],
            precision=plan["precision"],
            dtype=str(dtype).replace("torch.", ""),
            native_estimate_s=est,
            row_s=time.perf_counter() - t,
        )
        if skip:
            row["status"]["native"] = f"skipped (probe estimates {est:.1f} s per call > --native-limit-s)"
        rows.append(row)
        print(
            f"   {plan['precision']} {plan['patch']}³ {plan['channels']}@{plan['spatial']}³ {pass_}: "
            + ", ".join(f"{n} {v:.2f}" for n, v in row["ms"].items())
            + f" ms [auto→{row['auto_choice']}]",
            flush=True,
        )
        suite.results["sections"]["engine"].update(out)
        suite.save()
    (suite.out / "engine_table.json").write_text(
        json.dumps({"environment": suite.results["environment"], "rows": rows}, indent=1)
    )
    md = [
        f"## {p}\n\n" + conv_backends.markdown([r for r in rows if r["precision"] == p])
        for p in PRECISIONS
        if any(r["precision"] == p for r in rows)
    ]
    (suite.out / "engine_table.md").write_text("\n\n".join(md) + "\n")
    fit = calibrate_auto.fit_cuda_rule(rows)
    (suite.out / "cuda_rule_fit.json").write_text(json.dumps(fit, indent=1))
    out["cuda_rule_fit"] = {k: v for k, v in fit.items() if k != "rows"}
    if skipped:
        out["status"], out["reason"] = "partial", f"{len(skipped)} rows not run: section budget spent"
    return out


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
            amp=True,
        )
        _sync(device)
        t = time.perf_counter()
        with count_forwards(predictor.model) as windows:
            predictor(vol.image[None])
        _sync(device)
        res["whole_phantom_s"] = time.perf_counter() - t
        res["whole_phantom_shape"] = list(sz["phantom_shape"])
        res["whole_phantom_windows"] = windows[0]
        res["whole_phantom_note"] = "Predictor, overlap 0.5, gaussian blend, AMP (float16 on CUDA), first call"
    return res


# ---------------------------------------------------------------------------------------------------- 5. train


class GpuUtilisation:
    """Samples GPU utilisation (%) and memory once a second with nvidia-smi (or pynvml) in a thread."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.samples, self.source = device, [], None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _read(self):
        index = self.device.index or 0
        try:
            import pynvml

            if self.source is None:
                pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.source = "pynvml"
            return float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu), pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20
        except Exception:
            pass
        if shutil.which("nvidia-smi"):
            line = subprocess.run(
                [
                    "nvidia-smi",
                    f"--id={index}",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            util, mem = (float(v) for v in line.split(","))
            self.source = "nvidia-smi"
            return util, mem
        return None

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                s = self._read()
            except Exception:
                s = None
            if s is None:
                return
            self.samples.append(s)

    def __enter__(self):
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def summary(self) -> dict:
        if not self.samples:
            return {
                "available": False,
                "reason": "no CUDA device" if self.device.type != "cuda" else "neither pynvml nor nvidia-smi answered",
            }
        utils = [u for u, _ in self.samples]
        return {
            "available": True,
            "source": self.source,
            "samples": len(utils),
            "mean_pct": statistics.mean(utils),
            "median_pct": statistics.median(utils),
            "max_memory_used_mib": max(m for _, m in self.samples),
        }


@contextlib.contextmanager
def _stop_after(seconds: float):
    """SIGINT this process after ``seconds``, then every 5 s until the block ends: the training loop turns SIGINT
    into a checkpoint and ``TrainingInterrupted`` between steps; one landing before the loop installed its handler
    (data loading) is absorbed here and repeated."""
    done = threading.Event()

    def fire() -> None:
        if not done.wait(seconds):
            while not done.is_set():
                os.kill(os.getpid(), signal.SIGINT)
                done.wait(5.0)

    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        signal.signal(signal.SIGINT, previous)


def section_train(suite: Suite, deadline: float) -> dict:
    import csv

    from rep3d.data.msd import load_msd_dataset, write_msd_dataset
    from rep3d.metrics import mean_dice
    from rep3d.train import TrainingInterrupted, build_config, evaluate, train
    from rep3d.train.data import preprocessing
    from rep3d.train.runtime import amp_dtype

    sz = sizes(suite.args.tiny)
    work = Path(tempfile.mkdtemp(prefix="rep3d_gpu_train_"))
    try:
        n_train, n_test = sz["train_cases"]
        t = time.perf_counter()
        data = write_msd_dataset(work / "data", num_train=n_train, num_test=n_test, seed=0, shape=sz["train_shape"])
        data_s = time.perf_counter() - t
        cfg = build_config(
            "phantom",
            data=str(data),
            out=str(work / "run"),
            roi_size=(sz["train_roi"],) * 3,
            iterations=sz["train_iterations"],
            val_every=sz["train_val_every"],
            checkpoint_every=max(50, sz["train_val_every"]) if not suite.args.tiny else 1,
            device=str(suite.device),
            workers=sz["train_workers"],
            model_args=sz["train_kwargs"] or None,
            amp="auto",
        )
        train_s = max(5.0, min(suite.args.train_seconds, deadline - time.perf_counter() - 25.0))
        stopped_by = "iterations"
        t = time.perf_counter()
        with GpuUtilisation(suite.device) as util, _stop_after(train_s):
            try:
                summary = train(cfg)
            except TrainingInterrupted:
                stopped_by, summary = "time budget (SIGINT -> checkpoint)", None
        wall = time.perf_counter() - t
        metrics_path = work / "run" / "train_state" / "metrics.csv"
        with open(metrics_path, newline="") as f:
            rows = list(csv.DictReader(f))
        shutil.copy(metrics_path, suite.out / "train_metrics.csv")
        step_seconds = [float(r["seconds"]) for r in rows if r["seconds"]]
        steps = len(rows)
        vals = [(int(r["step"]), float(r["val_mean_dice"])) for r in rows if r.get("val_mean_dice")]
        # held-out Dice of the model as it stands at the last step, on the labelled test phantoms (never seen)
        state = torch.load(work / "run" / "train_state" / "last.pt", map_location="cpu", weights_only=False)
        dataset = load_msd_dataset(cfg.data, num_val=cfg.num_val or None, seed=cfg.seed)
        model = rep3d.create_model(
            cfg.model, num_classes=len(dataset.class_names), in_chans=dataset.in_chans, **cfg.model_args
        )
        model.load_state_dict(state["model"])
        model.to(suite.device)
        volumes = [preprocessing(cfg)(dict(item)) for item in dataset.test_labeled]
        per_class = evaluate(model, volumes, cfg, dataset.class_names, suite.device, amp_dtype(cfg.amp, suite.device))
        out = {
            "model": cfg.model,
            "model_args": cfg.model_args,
            "roi": list(cfg.roi_size),
            "recipe": cfg.recipe,
            "amp": str(amp_dtype(cfg.amp, suite.device)),
            "workers": cfg.workers,
            "crops_per_step": cfg.crops_per_subject,
            "data": f"{n_train} train + {n_test} labelled test phantoms {list(sz['train_shape'])} (SYNTHETIC)",
            "data_generation_s": data_s,
            "time_budget_s": train_s,
            "stopped_by": stopped_by,
            "wall_s": wall,
            "steps": steps,
            "checkpoint_step": state["step"],
            "steps_per_s_overall": steps / wall if wall else None,
            "median_step_s": statistics.median(step_seconds) if step_seconds else None,
            "steps_per_s_median_step": 1 / statistics.median(step_seconds) if step_seconds else None,
            "validation_dice": vals,
            "gpu_utilisation": util.summary(),
            "held_out_mean_dice_last_step": mean_dice(per_class),
            "held_out_dice_per_class": dict(zip(dataset.class_names[1:], per_class, strict=True)),
            "num_held_out": len(volumes),
        }
        if summary is not None and "test_mean_dice" in summary:
            out["held_out_mean_dice_best_val_checkpoint"] = summary["test_mean_dice"]
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- summary


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if a and b else "–"


def summary_markdown(results: dict) -> str:
    env = results["environment"]
    sec = results["sections"]
    lines = [
        f"# rep3d GPU suite — {env.get('gpu', env.get('cpu', env['device']))}",
        "",
        f"torch {env['torch']}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, rep3d {env.get('rep3d')}, "
        f"commit {env.get('git_commit', '?')[:10]}, {env['date']}. Command: `{env['command']}`.",
        "",
        "All data synthetic (phantoms); model weights random except the bundled rep3d_tiny.phantom.",
        "",
        "| section | status | wall (s) | budget (s) | note |",
        "|---|---|---:|---:|---|",
    ]
    for name, s in sec.items():
        lines.append(
            f"| {name} | {s.get('status')} | {s.get('wall_s', '–')} | {s.get('budget_s')} | "
            f"{s.get('reason', s.get('error', ''))[:120]} |"
        )
    tests = sec.get("gpu_tests", {})
    if "counts" in tests:
        lines += ["", f"**pytest -m gpu**: {tests['counts']}"]
        lines += [
            f"- {c['outcome']}: {c['name']} — {c.get('message', '')[:150]}"
            for c in tests["cases"]
            if c["outcome"] != "passed"
        ]
    pred = sec.get("predictor", {})
    if pred.get("runs"):
        lines += [
            "",
            "## Predictor: stitching on the device vs on the CPU",
            "",
            f"Volume {pred['volume']}, {pred['model']}.",
            "",
            "| stitching | seconds | windows | Dice vs truth |",
            "|---|---:|---:|---:|",
        ]
        for k, r in pred["runs"].items():
            if "seconds" in r:
                lines.append(
                    f"| {k} | {r['seconds']:.2f} | {r['windows_forwarded']} | {r['mean_dice_vs_phantom_truth']:.3f} |"
                )
        if "label_agreement_device_vs_cpu_stitching" in pred:
            lines.append(f"\nLabel maps agree on {pred['label_agreement_device_vs_cpu_stitching']:.4%} of voxels.")
    eng = sec.get("engine", {})
    rows = eng.get("rows", [])
    if rows:
        lines += [
            "",
            "## Engine: auto vs native cuDNN per stage (ms, median; ratio = native / auto)",
            "",
            "| precision | patch | C @ S³ | pass | native | direct | fft | auto (pick) | torch-fftconv | "
            "fft-conv-pytorch | native / auto | auto / best | peak MiB native / auto |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            ms = r["ms"]
            best = min(ms.values()) if ms else None

            def cell(n: str, r=r, ms=ms) -> str:
                return f"{ms[n]:.2f}" if n in ms else r["status"].get(n, "–").split(":")[0].split(" (")[0]

            mem = r["peak_mb"]
            lines.append(
                f"| {r['precision']} | {r['patch']}³ | {r['channels']} @ {r['spatial']}³ | {r['pass']} | "
                f"{cell('native')} | {cell('direct')} | {cell('fft')} | {cell('auto')} ({r['auto_choice']}) | "
                f"{cell('torch-fftconv')} | {cell('fft-conv-pytorch')} | {_ratio(ms.get('native'), ms.get('auto'))} | "
                f"{_ratio(ms.get('auto'), best)} | "
                f"{mem.get('native', float('nan')):.0f} / {mem.get('auto', float('nan')):.0f} |"
            )
        fit = eng.get("cuda_rule_fit", {})
        if fit:
            dry = "" if env["device"] == "cuda" else " (CPU dry run: these are CPU timings, not a CUDA rule)"
            lines += [
                "",
                "## The auto rule on CUDA" + dry,
                "",
                f"Rule in force for this run ({fit['rule_in_force']}): worst auto / best engine = "
                f"**{fit['current_worst_ratio']:.2f}**, worst measured auto / best of all paths = "
                f"**{fit['measured_auto_worst_vs_all_paths']:.2f}** "
                f"({fit['rows_used']} rows).",
                "",
                "Refitted `CUDA_RULE['fft_flop_weight']` (benchmarks/calibrate_auto.py --fit-cuda):",
                "",
                "| gradients | dtype class | weight | worst picked / best engine | rows |",
                "|---|---|---:|---:|---:|",
            ]
            for g in fit["groups"]:
                lines.append(
                    f"| {g['requires_grad']} | {g['dtype_class']} | {g['weight']:.3g} | "
                    f"{g['worst_ratio']:.2f} | {g['rows']} |"
                )
    model = sec.get("model", {})
    st = model.get("train_step", {})
    if st:
        lines += [
            "",
            f"## Train step at {model['roi']}³, B = {model['batch']}, AMP bf16, AdamW",
            "",
            "| model / conv path | step (s) | samples/s | peak GiB | note |",
            "|---|---:|---:|---:|---|",
        ]
        for k, r in st.items():
            if r.get("status") == "ok":
                peak = f"{r['peak_cuda_bytes'] / 2**30:.2f}" if r["peak_cuda_bytes"] else "–"
                note = (
                    "one step (slow warm-up)" if r["steps_timed"] == 1 and r["warmup_s"] == r["median_step_s"] else ""
                )
                lines.append(f"| {k} | {r['median_step_s']:.3f} | {r['samples_per_s']:.2f} | {peak} | {note} |")
            else:
                lines.append(f"| {k} | – | – | – | {r.get('reason', r.get('status'))} |")
        a, n, u = (st.get(k, {}) for k in ("rep3d_base/auto", "rep3d_base/native", "uxnet3d_base/auto"))
        if a.get("status") == "ok":
            lines.append("")
            if n.get("status") == "ok":
                lines.append(
                    f"rep3d_base step, native / auto: **{_ratio(n['median_step_s'], a['median_step_s'])}×** time, "
                    f"{_ratio(n['peak_cuda_bytes'], a['peak_cuda_bytes'])}× memory."
                )
            if u.get("status") == "ok":
                lines.append(
                    f"rep3d_base / uxnet3d_base: **{_ratio(a['median_step_s'], u['median_step_s'])}×** step "
                    f"time, **{_ratio(a['peak_cuda_bytes'], u['peak_cuda_bytes'])}×** peak memory."
                )
    inf = model.get("inference", {})
    if inf:
        lines += [
            "",
            f"Deployed rep3d_base inference: {inf.get('per_window_s_fp32', float('nan')) * 1e3:.1f} ms per "
            f"{model['roi']}³ window fp32, {inf.get('per_window_s_bf16_autocast', float('nan')) * 1e3:.1f} ms "
            "bf16 autocast"
            + (
                f"; whole {inf['whole_phantom_shape']} phantom {inf['whole_phantom_s']:.2f} s "
                f"({inf['whole_phantom_windows']} windows)."
                if "whole_phantom_s" in inf
                else "."
            ),
        ]
    tr = sec.get("train", {})
    if "steps" in tr:
        util = tr["gpu_utilisation"]
        lines += [
            "",
            f"## Training run ({tr['model']}, {tr['roi'][0]}³ crops, {tr['data']})",
            "",
            f"{tr['steps']} steps in {tr['wall_s']:.0f} s (stopped by {tr['stopped_by']}): "
            f"{tr['steps_per_s_overall']:.2f} steps/s overall incl. validation, median step "
            f"{tr['median_step_s']:.3f} s; GPU utilisation "
            + (
                f"mean {util['mean_pct']:.0f} % (median {util['median_pct']:.0f} %, {util['source']})"
                if util.get("available")
                else f"n/a ({util.get('reason')})"
            )
            + f"; held-out mean Dice at the last step {tr['held_out_mean_dice_last_step']:.3f} "
            f"on {tr['num_held_out']} test phantoms (synthetic).",
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="results folder (default: $OUT)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="dry-run sizes: every section in seconds (CI)")
    p.add_argument("--max-seconds", type=float, default=480.0, help="wall-time cap of the whole run")
    p.add_argument(
        "--budget-scale",
        type=float,
        help="multiply every section budget (default 1; 3 with --tiny, whose sections take seconds unless the "
        "machine is overloaded, so that a busy CI runner does not cut them)",
    )
    p.add_argument("--skip", nargs="+", default=[], choices=[s[0] for s in SECTIONS])
    p.add_argument(
        "--native-limit-s",
        type=float,
        default=3.0,
        help="skip a native conv call a probe estimates slower than this (fwd+bwd of 21³ is slow)",
    )
    p.add_argument("--train-seconds", type=float, default=100.0, help="wall time of the training run's steps")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.out is None:
        print("gpu_suite: give --out DIR (or set $OUT)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_suite: CUDA is not available on this machine; nothing was measured. Run it on a GPU host, or "
            "--device cpu --tiny for a dry run of the script.",
            file=sys.stderr,
        )
        return 2
    if args.budget_scale is None:
        args.budget_scale = 3.0 if args.tiny else 1.0
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
    args.out.mkdir(parents=True, exist_ok=True)
    suite = Suite(args.out, args)
    fns = {
        "gpu_tests": section_gpu_tests,
        "predictor": section_predictor,
        "engine": section_engine,
        "model": section_model,
        "train": section_train,
    }
    for name, budget, minimum in SECTIONS:
        suite.run(name, budget, minimum, lambda deadline, fn=fns[name]: fn(suite, deadline))
    suite.results["total_wall_s"] = round(suite.elapsed(), 1)
    suite.results["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    suite.save()
    suite.write_summary()
    print((args.out / "summary.md").read_text())
    bad = [n for n, s in suite.results["sections"].items() if s.get("status") in ("error", "failed", "timeout")]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
