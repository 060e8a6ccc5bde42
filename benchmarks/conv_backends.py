"""Depthwise 21^3 conv engines on Rep3D's stage shapes: time, error vs float64, peak memory.

Paths: ``native`` (``F.conv3d``, full kernel, PyTorch autograd), rep3d ``direct`` / ``fft`` / ``auto``
(:func:`rep3d.layers.depthwise_conv3d`), and the peers ``torch-fftconv`` and ``fft-conv-pytorch``
(``pip install .[bench]``; "not installed" otherwise). Each row is one stage shape and one pass: ``fwd``
(under ``no_grad``) or ``fwd+bwd`` (forward, then gradients for x and the kernel). Paths are timed
round-robin inside a row, in a shuffled order each round, and a path faster than 1 s gets an untimed call
of its own just before each timed one (so it never pays for a peer's freed memory); the median of
``--repeats`` is reported: ratios are measured side by side.

Error: max over the outputs (y; and grad_x, grad_w for fwd+bwd) of ``max|a - ref| / max|ref|``. The
reference is rep3d's FFT engine in float64 (checked against native float64 conv3d in
tests/test_depthwise.py; the native and direct columns are independent cross-checks). Peak memory: CUDA
``max_memory_allocated`` minus the allocation before the call; CPU the peak increase of the resident set
(``/proc/self/statm`` sampled every 0.5 ms after ``malloc_trim(0)``) over the second (warm) call. Both
include the outputs and gradients.

Example (the table in docs/guides/fast-convolution.md)::

    python benchmarks/conv_backends.py --sizes 96 128 --batch 1 2 --skip-native-backward --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import math
import os
import platform
import random
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rep3d.layers import choose_backend, depthwise_conv3d, fft_lengths, useful_kernel_size  # noqa: E402

WIDTHS = (48, 96, 192, 384)  # Rep3D base: stage s has WIDTHS[s] channels at patch / 2^(s+1)
PATHS = ("native", "direct", "fft", "auto", "torch-fftconv", "fft-conv-pytorch")
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def stage_shapes(patch: int, widths=WIDTHS) -> list[tuple[int, int]]:
    """``[(channels, spatial)]`` of the four stages for a cubic ``patch``."""
    return [(c, patch // 2 ** (i + 1)) for i, c in enumerate(widths)]


# ---------------------------------------------------------------------------------------------------- paths


def _peer(name: str) -> Callable | None:
    try:
        if name == "torch-fftconv":
            from torch_fftconv import fft_conv3d

            return lambda x, w: fft_conv3d(
                x, w, padding=tuple(k // 2 for k in w.shape[2:]), groups=x.shape[1]
            )
        if name == "fft-conv-pytorch":
            from fft_conv_pytorch import fft_conv

            return lambda x, w: fft_conv(x, w, padding=tuple(k // 2 for k in w.shape[2:]), groups=x.shape[1])
    except ImportError:
        return None
    raise KeyError(name)


def make_path(name: str) -> Callable | None:
    """``f(x, w) -> y`` for one path, or None when a peer is not installed."""
    if name == "native":
        return lambda x, w: F.conv3d(x, w, padding=tuple(k // 2 for k in w.shape[2:]), groups=x.shape[1])
    if name in ("direct", "fft", "auto"):
        return lambda x, w: depthwise_conv3d(x, w, backend=name)
    return _peer(name)


# ---------------------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _call(fn: Callable, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor, backward: bool, autocast: bool):
    ctx = (
        torch.autocast(x.device.type, dtype=torch.bfloat16)
        if autocast
        else torch.autocast(x.device.type, enabled=False)
    )
    if not backward:
        with torch.no_grad(), ctx:
            return (fn(x, w),)
    with ctx:
        y = fn(x, w)
    gx, gw = torch.autograd.grad(y, (x, w), g.to(y.dtype))
    return y.detach(), gx, gw


def _cpu_busy(window_s: float) -> float:
    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(a) for a in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    t0, i0 = read()
    time.sleep(window_s)
    t1, i1 = read()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_for_idle(
    max_wait_s: float, busy_below: float = 0.15, window_s: float = 0.5, windows: int = 2
) -> float:
    """Wait up to ``max_wait_s`` until other processes leave the CPUs (nearly) idle; returns seconds waited.

    On a shared 2-core machine one busy neighbour stalls one of torch's two threads: a 0.2 ms op takes 30 ms;
    waiting for quiet windows keeps such spikes out of the medians. No-op where /proc/stat is missing.
    """
    if max_wait_s <= 0 or not os.path.exists("/proc/stat"):
        return 0.0
    start = time.perf_counter()
    quiet = 0
    while quiet < windows and time.perf_counter() - start < max_wait_s:
        quiet = quiet + 1 if _cpu_busy(window_s) < busy_below else 0
    return time.perf_counter() - start


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measured_call(run: Callable[[], object], device: torch.device) -> tuple[object, float, float]:
    """One call of ``run``: ``(result, milliseconds, peak extra memory in MB)`` (method: module docstring)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        out = run()
        _sync(device)
        ms = (time.perf_counter() - t0) * 1e3
        return out, ms, (torch.cuda.max_memory_allocated(device) - base) / 2**20
    _malloc_trim()
    base = _rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        t0 = time.perf_counter()
        out = run()
        ms = (time.perf_counter() - t0) * 1e3
        peak[0] = max(peak[0], _rss_bytes())
    finally:
        stop.set()
        thread.join()
    return out, ms, (peak[0] - base) / 2**20


def rel_error(outs, refs) -> float:
    err = 0.0
    for a, r in zip(outs, refs, strict=True):
        r = r.double()
        err = max(err, ((a.double() - r).abs().max() / r.abs().max().clamp_min(1e-30)).item())
    return err


def bench_row(
    channels: int,
    spatial: int,
    batch: int,
    kernel: int,
    backward: bool,
    paths: dict[str, Callable | None],
    *,
    device: torch.device,
    dtype: torch.dtype,
    autocast: bool,
    repeats: int,
    skip: set[str],
    slow_ms: float = 20_000.0,
    warm_below_ms: float = 1_000.0,
    seed: int = 0,
    wait_idle_s: float = 0.0,
) -> dict:
    """Time, check and measure every path on one shape and pass; returns one row of the table."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, channels, spatial, spatial, spatial)
    x64 = torch.randn(shape, generator=gen, dtype=torch.float64)
    w64 = torch.randn((channels, 1, kernel, kernel, kernel), generator=gen, dtype=torch.float64) / kernel**1.5
    g64 = torch.randn(shape, generator=gen, dtype=torch.float64)
    x = x64.to(device, dtype).requires_grad_(backward)
    w = w64.to(device, dtype).requires_grad_(backward)
    g = g64.to(device, dtype)
    # the reference sees the same (rounded) inputs, so the error is the path's own
    xr, wr = (t.detach().to(torch.float64).requires_grad_(backward) for t in (x, w))
    ref = _call(
        lambda a, b: depthwise_conv3d(a, b, backend="fft"), xr, wr, g.to(torch.float64), backward, False
    )
    del xr, wr

    k = useful_kernel_size((kernel,) * 3, (spatial,) * 3)
    row = {
        "channels": channels,
        "spatial": spatial,
        "batch": batch,
        "kernel": kernel,
        "pass": "fwd+bwd" if backward else "fwd",
        "fft_length": fft_lengths((spatial,) * 3, k)[0],
        "cropped_kernel": k[0],
        "auto_choice": choose_backend(shape, k, device.type, dtype, backward),
        "ms": {},
        "ms_all": {},
        "rel_err": {},
        "peak_mb": {},
        "status": {},
    }
    live = {}
    for name, fn in paths.items():
        if fn is None:
            row["status"][name] = "not installed"
        elif name in skip:
            row["status"][name] = "skipped"
        else:
            live[name] = fn
    times: dict[str, list[float]] = {n: [] for n in live}
    rewarm: set[str] = set()
    for name, fn in list(live.items()):
        run = lambda fn=fn: _call(fn, x, w, g, backward, autocast)  # noqa: E731
        try:  # first call: warm-up and error (and the only timed call of a very slow path)
            outs, ms, mb = measured_call(run, device)
        except Exception as exc:  # a peer that cannot do this shape is reported, not fatal
            row["status"][name] = f"error: {type(exc).__name__}: {str(exc)[:120]}"
            del live[name], times[name]
            continue
        row["rel_err"][name] = rel_error(outs, ref)
        del outs
        row["status"][name] = "ok"
        if ms > slow_ms:
            times[name] = [ms]
            row["peak_mb"][name] = mb
            row["status"][name] = "ok (one call)"
            del live[name]
            continue
        _, ms, row["peak_mb"][name] = measured_call(run, device)  # warm: without one-time setup
        if ms < warm_below_ms:
            rewarm.add(name)
    order = list(live)
    shuffle = random.Random(seed)
    for _ in range(repeats):
        wait_for_idle(wait_idle_s, windows=1, window_s=0.2)
        shuffle.shuffle(order)  # no path always runs right after the memory-hungry peers
        for name in order:
            fn = live[name]
            if name in rewarm:  # a fast path is timed right after an untimed call of its own
                _call(fn, x, w, g, backward, autocast)
            _sync(device)
            t0 = time.perf_counter()
            _call(fn, x, w, g, backward, autocast)
            _sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    for name, ts in times.items():
        row["ms"][name] = statistics.median(ts)
        row["ms_all"][name] = ts
    return row


# ---------------------------------------------------------------------------------------------------- report


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _cell(r: dict, n: str, value: str | None) -> str:
    st = r["status"].get(n, "–")
    if value is None:
        return "n/i" if st == "not installed" else st.split(":")[0][:12]
    return value + ("¹" if st == "ok (one call)" else "")


def markdown(rows: list[dict]) -> str:
    """Two tables: median time per path (with speedups), and error / peak memory per path."""
    names = [p for p in PATHS if any(p in r["status"] for r in rows)]
    key = "| patch | B | C @ S³ | pass | "
    head = key + " | ".join(names) + " | fft vs native | auto picks | auto / best |"
    lines = ["Median time per call, ms", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [_cell(r, n, _fmt_ms(r["ms"][n]) if n in r["ms"] else None) for n in names]
        nat, fft, auto = r["ms"].get("native"), r["ms"].get("fft"), r["ms"].get("auto")
        best = min(r["ms"].values()) if r["ms"] else None
        speed = f"{nat / fft:,.0f}×" if nat and fft else "–"
        ratio = f"{auto / best:.2f}" if auto and best else "–"
        lead = f"| {r['patch']}³ | {r['batch']} | {r['channels']} @ {r['spatial']}³ | {r['pass']} | "
        lines.append(lead + " | ".join(cells) + f" | {speed} | {r['auto_choice']} | {ratio} |")
    lines += ["", "¹ a single call (its first call took longer than --slow-s); n/i: not installed"]
    head2 = key + " | ".join(names) + " |"
    lines += ["", "Max relative error vs float64 reference / peak extra memory, MB", "", head2]
    lines.append("|" + "---|" * (head2.count("|") - 1))
    for r in rows:
        cells = [
            _cell(r, n, f"{r['rel_err'][n]:.1e} / {r['peak_mb'][n]:,.0f}" if n in r["rel_err"] else None)
            for n in names
        ]
        lead = f"| {r['patch']}³ | {r['batch']} | {r['channels']} @ {r['spatial']}³ | {r['pass']} | "
        lines.append(lead + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment(device: torch.device) -> dict:
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device.type,
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["cpu"] = platform.processor()
        with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
            env["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if "model name" in ln), env["cpu"])
    for mod in ("torch_fftconv", "fft_conv_pytorch"):
        try:
            from importlib.metadata import version

            env[mod] = version(mod.replace("_", "-"))
        except Exception:
            env[mod] = "not installed"
    return env


def run(args: argparse.Namespace, log=print) -> tuple[dict, list[dict]]:
    device = torch.device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    paths = {n: make_path(n) for n in args.paths}
    skip = set(args.skip or ())
    rows = []
    env = environment(device)
    log(f"# {env}")
    for patch in args.sizes:
        shapes = stage_shapes(patch)
        if args.stages:
            shapes = [shapes[s - 1] for s in args.stages]
        for batch in args.batch:
            for channels, spatial in shapes:
                for backward in (False, True) if args.passes == "both" else (args.passes == "fwd+bwd",):
                    row_skip = set(skip)
                    if backward and args.skip_native_backward:
                        row_skip.add("native")
                    waited = wait_for_idle(args.wait_idle)
                    t0 = time.perf_counter()
                    row = bench_row(
                        channels,
                        spatial,
                        batch,
                        args.kernel,
                        backward,
                        paths,
                        device=device,
                        dtype=dtype,
                        autocast=args.autocast,
                        repeats=args.repeats,
                        skip=row_skip,
                        slow_ms=args.slow_s * 1e3,
                        wait_idle_s=args.wait_idle,
                    )
                    row["waited_s"] = round(waited, 1)
                    row["patch"] = patch
                    rows.append(row)
                    ms = ", ".join(f"{n} {v:.1f}" for n, v in row["ms"].items())
                    log(
                        f"{patch}³ B{batch} {channels}@{spatial}³ {row['pass']}: {ms} "
                        f"[auto→{row['auto_choice']}] ({time.perf_counter() - t0:.0f} s)"
                    )
    return env, rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[96, 128], help="cubic patch sizes (stage S = patch/2^s)"
    )
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--stages", type=int, nargs="+", choices=[1, 2, 3, 4], help="subset of stages (default all)"
    )
    p.add_argument("--kernel", type=int, default=21)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per path and row (median reported)")
    p.add_argument("--passes", choices=["fwd", "fwd+bwd", "both"], default="both")
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--skip", nargs="+", choices=PATHS, help="paths to leave out")
    p.add_argument(
        "--skip-native-backward",
        action="store_true",
        help="do not run native fwd+bwd (minutes per call at the large shapes on CPU)",
    )
    p.add_argument(
        "--slow-s",
        type=float,
        default=20.0,
        help="a path whose first call takes longer than this is timed by that call alone",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--autocast", action="store_true", help="run every path under bf16 autocast")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: leave as is)")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each row and repeat, wait up to S seconds for other processes to leave the CPUs idle",
    )
    p.add_argument("--json", type=Path, help="write environment and rows as JSON")
    p.add_argument("--markdown", type=Path, help="write the tables as markdown")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # fft-conv-pytorch 1.2 indexes with a list on every call; the deprecation warning is not ours to fix
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("conv_backends: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    env, rows = run(args)
    table = markdown(rows)
    print()
    print(table)
    worst = max(
        (r["ms"]["auto"] / min(r["ms"].values()) for r in rows if "auto" in r["ms"]), default=math.nan
    )
    print(f"\nworst auto / best over rows: {worst:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(f"`{env['command']}` — torch {env['torch']}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
