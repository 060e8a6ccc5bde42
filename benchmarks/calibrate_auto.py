"""Measure direct vs fft across map size S, kernel K, channels C, batch B and pass: the data behind auto.

Both engines of :func:`rep3d.layers.depthwise_conv3d` are timed round-robin per configuration (minimum of
``--repeats``: other processes only ever add time; a slow configuration where one engine is more than
``--clear`` times faster is timed once). Then one line per configuration with
the cost model's estimates, the rule's pick and whether it was within 10 % of the faster engine. ``--fit``
refits :data:`rep3d.layers.depthwise.COST_MODEL` to saved measurements; ``--fit-cuda`` refits the CUDA rule
(:data:`rep3d.layers.depthwise.CUDA_RULE`) to the engine table of ``benchmarks/gpu_suite.py``.

    python benchmarks/calibrate_auto.py --wait-idle 20 --json benchmarks/results/calibrate_cpu.json
    python benchmarks/calibrate_auto.py --fit benchmarks/results/calibrate_cpu*.json
    python benchmarks/calibrate_auto.py --fit-cuda benchmarks/results/gpu_h200/engine_table.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rep3d.layers import choose_backend, depthwise_conv3d, useful_kernel_size  # noqa: E402
from rep3d.layers.depthwise import CUDA_RULE, cost_features, dtype_class, estimate_ms, flop_estimates  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv_backends import wait_for_idle  # noqa: E402

GRID_S = (4, 6, 8, 12, 16, 24, 32, 48)
GRID_K = (3, 5, 7, 11, 15, 21)


def configs(args: argparse.Namespace):
    seen = set()
    for s in args.spatial:
        for k in args.kernels:
            kk = useful_kernel_size((k,) * 3, (s,) * 3)[0]
            for c in args.channels:
                for b in args.batch:
                    if b * c * s**3 * kk**3 > args.max_direct_gmac * 1e9:
                        continue
                    for grad in (False, True):
                        key = (s, kk, c, b, grad)
                        if key not in seen:
                            seen.add(key)
                            yield key


def time_pair(
    s,
    k,
    c,
    b,
    grad,
    device: torch.device,
    repeats: int,
    clear: float,
    wait_idle: float,
    slow_ms: float = 2000.0,
):
    x = torch.randn(b, c, s, s, s, device=device, requires_grad=grad)
    w = torch.randn(c, 1, k, k, k, device=device, requires_grad=grad)
    g = torch.randn_like(x)

    def call(backend: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        if grad:
            torch.autograd.grad(depthwise_conv3d(x, w, backend=backend), (x, w), g)
        else:
            with torch.no_grad():
                depthwise_conv3d(x, w, backend=backend)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1e3

    call("direct"), call("fft")  # warm-up (allocator, FFT plans)
    first = {n: call(n) for n in ("direct", "fft")}
    if sum(first.values()) > slow_ms and max(first.values()) / min(first.values()) > clear:
        return first, 1  # a slow and clear case: one more call would only cost time
    times = {n: [v] for n, v in first.items()}
    for _ in range(repeats - 1):
        wait_for_idle(wait_idle, windows=1, window_s=0.2)
        for n in times:
            times[n].append(call(n))
    # the minimum: interference from other processes only ever adds time
    return {n: min(v) for n, v in times.items()}, repeats


def fit(rows: list[dict]) -> dict[bool, tuple[list[float], list[float]]]:
    """Non-negative least squares on relative error: the COST_MODEL coefficients for the measured rows."""
    model = {}
    for grad in (False, True):
        sel = [r for r in rows if r["grad"] == grad]
        coefs = []
        for engine, idx in (("direct", 0), ("fft", 1)):
            a = np.array([cost_features(_shape(r), (r["kernel"],) * 3, grad)[idx] for r in sel], dtype=float)
            t = np.array([r["ms"][engine] for r in sel], dtype=float)
            coefs.append(_nnls(a / t[:, None], np.ones(len(sel))))
        model[grad] = (coefs[0], coefs[1])
    return model


def _nnls(a: np.ndarray, y: np.ndarray) -> list[float]:
    active = list(range(a.shape[1]))
    while True:  # drop the most negative coefficient until all are >= 0 (enough for a handful of terms)
        c, *_ = np.linalg.lstsq(a[:, active], y, rcond=None)
        if (c >= 0).all():
            out = np.zeros(a.shape[1])
            out[active] = c
            return [float(v) for v in out]
        active.pop(int(np.argmin(c)))


def _as_calibration_row(r: dict) -> dict | None:
    """Rows of this script as they are; conv_backends.py rows (stage shapes) converted if both engines ran."""
    if "grad" in r:
        return r
    if not {"direct", "fft"} <= set(r["ms"]):
        return None
    return dict(
        spatial=r["spatial"],
        kernel=r["cropped_kernel"],
        channels=r["channels"],
        batch=r["batch"],
        grad=r["pass"] == "fwd+bwd",
        ms={"direct": r["ms"]["direct"], "fft": r["ms"]["fft"]},
    )


def _shape(r: dict) -> tuple[int, ...]:
    return (r["batch"], r["channels"], r["spatial"], r["spatial"], r["spatial"])


def evaluate(rows: list[dict], log=print) -> int:
    """Print the rule's pick against the measurements; returns the number of picks >10 % off the best."""
    misses = 0
    log("   S   K    C  B  pass       direct_ms     fft_ms  fft/direct  model(d/f ms)    pick    ok")
    for r in rows:
        est = estimate_ms(_shape(r), (r["kernel"],) * 3, r["grad"])
        pick = choose_backend(_shape(r), (r["kernel"],) * 3, "cpu", torch.float32, r["grad"])
        ms = r["ms"]
        ok = ms[pick] <= 1.10 * min(ms.values())
        misses += not ok
        log(
            f"{r['spatial']:4d} {r['kernel']:3d} {r['channels']:4d} {r['batch']:2d}  "
            f"{'fwd+bwd' if r['grad'] else 'fwd    '}  {ms['direct']:10.2f} {ms['fft']:10.2f}  "
            f"{ms['fft'] / ms['direct']:10.2f}  {est['direct']:7.1f}/{est['fft']:<7.1f} {pick:6s}  "
            f"{'yes' if ok else 'NO (%.2fx)' % (ms[pick] / min(ms.values()))}"
        )
    log(f"\nrule within 10 % of the faster engine on {len(rows) - misses} / {len(rows)} configurations")
    return misses


# ---------------------------------------------------------------------------------------------------- CUDA rule


def fit_cuda_rule(rows: list[dict], float32_precision: str = "fp32_tf32_on") -> dict:
    """Refit :data:`CUDA_RULE`'s ``fft_flop_weight`` to engine-table rows (``benchmarks/gpu_suite.py``).

    The rule picks FFT iff ``weight * fft_flops < direct_flops`` (:func:`flop_estimates`), one weight per
    (gradients, dtype class); so a row is decided by its flop ratio ``r = direct / fft`` alone: FFT iff
    ``weight < r``. For each group the weight is chosen among the midpoints between neighbouring ratios (and beyond
    both ends) to minimise the worst ``time(picked) / time(faster engine)``, then the mean; ties go to the middle
    of the best interval. float32 rows are taken at ``float32_precision`` (PyTorch's default lets cuDNN use TF32);
    rows of the other float32 setting are evaluated, not fitted.

    Returns a JSON-able dict: the refitted groups with their worst ratio, the worst ratio of the rule in force
    (``current_worst_ratio``) and of the measured ``auto`` column against every path (``..._vs_all_paths``),
    a ``CUDA_RULE`` snippet, and one entry per row.
    """
    usable = [r for r in rows if {"direct", "fft"} <= set(r["ms"])]
    groups: dict[tuple[bool, str], list[dict]] = {}
    detail = []
    for r in usable:
        grad = r["pass"] == "fwd+bwd"
        dtype = getattr(torch, r.get("dtype", "float32"))
        shape = (r["batch"], r["channels"], r["spatial"], r["spatial"], r["spatial"])
        kernel = (r["cropped_kernel"],) * 3
        flops = flop_estimates(shape, kernel, grad)
        ms = r["ms"]
        best_engine = min(ms["direct"], ms["fft"])
        current = choose_backend(shape, kernel, "cuda", dtype, grad)
        entry = dict(precision=r.get("precision"), patch=r.get("patch"), channels=r["channels"],
                     spatial=r["spatial"], batch=r["batch"], kernel=r["cropped_kernel"], requires_grad=grad,
                     dtype_class=dtype_class(dtype), flop_ratio=flops["direct"] / flops["fft"],
                     direct_ms=ms["direct"], fft_ms=ms["fft"], current_pick=current,
                     current_ratio=ms[current] / best_engine,
                     auto_vs_all_paths=ms["auto"] / min(ms.values()) if "auto" in ms else None)
        detail.append(entry)
        if entry["dtype_class"] != "float32" or r.get("precision", float32_precision) == float32_precision:
            groups.setdefault((grad, entry["dtype_class"]), []).append(entry)
    fitted = []
    for (grad, kind), entries in sorted(groups.items()):
        ratios = sorted({e["flop_ratio"] for e in entries})
        candidates = [ratios[0] / 2] + [math.sqrt(a * b) for a, b in zip(ratios, ratios[1:])] + [ratios[-1] * 2]

        def score(w: float, entries=entries) -> tuple[float, float]:
            rs = [(e["fft_ms"] if w < e["flop_ratio"] else e["direct_ms"]) / min(e["fft_ms"], e["direct_ms"])
                  for e in entries]
            return max(rs), sum(rs) / len(rs)

        scores = [score(w) for w in candidates]
        best = min(scores)
        tied = [w for w, sc in zip(candidates, scores) if sc == best]
        weight = math.sqrt(tied[0] * tied[-1])  # the middle (geometric) of the optimal candidates
        fitted.append(dict(requires_grad=grad, dtype_class=kind, weight=weight, worst_ratio=score(weight)[0],
                           mean_ratio=score(weight)[1], rows=len(entries)))
    measured = {(g["requires_grad"], g["dtype_class"]): g["weight"] for g in fitted}
    weights = {**CUDA_RULE["fft_flop_weight"], **measured}  # type: ignore[dict-item]
    entries_py = "".join(
        f"        ({grad}, {kind!r}): {w:.3g},{'' if (grad, kind) in measured else '  # not in the table: kept'}\n"
        for (grad, kind), w in sorted(weights.items())
    )
    snippet = (
        'CUDA_RULE = {\n    "measured": True,\n    "source": "<GPU, torch version, date of the table>",\n'
        '    "fft_flop_weight": {\n' + entries_py + "    },\n}"
    )
    vs_all = [e["auto_vs_all_paths"] for e in detail if e["auto_vs_all_paths"] is not None]
    return dict(
        rule_in_force=str(CUDA_RULE["source"]),
        current_worst_ratio=max((e["current_ratio"] for e in detail), default=math.nan),
        measured_auto_worst_vs_all_paths=max(vs_all, default=math.nan),
        rows_used=len(detail),
        groups=fitted,
        cuda_rule_python=snippet,
        note="groups without rows keep their current weight; float32 is fitted on " + float32_precision + " rows",
        rows=detail,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--fit",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="no measuring: fit COST_MODEL to earlier --json outputs and evaluate the rule on them",
    )
    p.add_argument(
        "--fit-cuda",
        type=Path,
        metavar="JSON",
        help="no measuring: refit the CUDA rule to a gpu_suite.py engine_table.json and print the proposal",
    )
    p.add_argument("--spatial", type=int, nargs="+", default=list(GRID_S))
    p.add_argument("--kernels", type=int, nargs="+", default=list(GRID_K))
    p.add_argument("--channels", type=int, nargs="+", default=[48, 384])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--max-direct-gmac",
        type=float,
        default=12.0,
        help="skip configurations whose direct conv exceeds this many GMAC (fft wins there by far)",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--clear", type=float, default=4.0, help="ratio above which one call decides")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for idle CPUs before each configuration and repeat",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.fit_cuda:
        fit = fit_cuda_rule(json.loads(args.fit_cuda.read_text())["rows"])
        print(json.dumps({k: v for k, v in fit.items() if k not in ("rows", "cuda_rule_python")}, indent=1))
        print(fit["cuda_rule_python"])
        return 0
    if args.fit:
        rows = [_as_calibration_row(r) for f in args.fit for r in json.loads(f.read_text())["rows"]]
        rows = [r for r in rows if r is not None]
        model = fit(rows)
        print("COST_MODEL = {")
        for grad, (cd, cf) in model.items():
            fmt = lambda cs: "(" + ", ".join(f"{c:.3e}" for c in cs) + ")"  # noqa: E731
            print(f"    {grad}: ({fmt(cd)}, {fmt(cf)}),")
        print("}\n\nrule in rep3d (COST_MODEL as committed) on these measurements:")
        evaluate(rows)
        return 0
    device = torch.device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for s, k, c, b, grad in configs(args):
        wait_for_idle(args.wait_idle)
        ms, reps = time_pair(s, k, c, b, grad, device, args.repeats, args.clear, args.wait_idle)
        rows.append(dict(spatial=s, kernel=k, channels=c, batch=b, grad=grad, ms=ms, repeats=reps))
        print(
            f"{s:4d} {k:3d} {c:4d} {b:2d}  {'fwd+bwd' if grad else 'fwd    '}  "
            f"direct {ms['direct']:9.2f} ms  fft {ms['fft']:9.2f} ms",
            flush=True,
        )
    evaluate(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(
            torch=torch.__version__,
            device=args.device,
            threads=torch.get_num_threads(),
            command=" ".join(["calibrate_auto.py", *(argv if argv is not None else sys.argv[1:])]),
        )
        args.json.write_text(json.dumps({"environment": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
