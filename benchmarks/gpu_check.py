"""One-shot CUDA check of the depthwise engine (< 5 min on one recent GPU): gradients, then the backend table.

1. Gradient agreement with native ``F.conv3d`` on the GPU (forward, grad_x, grad_w, grad_b) for ``direct``,
   ``fft`` and ``auto`` on random small shapes (non-cubic, S < K, batch 2, K = 3..21) in float64 and float32,
   plus ``torch.autograd.gradcheck`` in float64 for both engines.
2. The ``conv_backends.py`` table (Rep3D stage shapes at 96^3 and 128^3, B = 1, 2) in float32 and under bf16
   autocast. Native forward+backward is timed once per row only where a probe says it is affordable.

Writes ``gradients.json``, ``table_fp32.{json,md}``, ``table_bf16_autocast.{json,md}`` and ``summary.md``
to ``--out``. Exits with status 2 and a clear message when CUDA is absent (``--device cpu --sizes 32`` is a
dry run of the script itself).

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_h100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import conv_backends  # noqa: E402

from rep3d.layers import depthwise_conv3d  # noqa: E402

GRAD_SHAPES = [  # (batch, channels, spatial, kernel)
    (2, 3, (5, 7, 6), (3, 5, 7)),
    (2, 2, (4, 4, 4), (9, 9, 9)),
    (2, 3, (6, 9, 11), (21, 21, 21)),
    (1, 2, (3, 5, 2), (21, 21, 21)),
    (2, 8, (12, 10, 14), (21, 21, 21)),
    (1, 16, (24, 24, 24), (21, 21, 21)),
]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def _native(x, w, bias):
    return F.conv3d(x, w, bias, padding=tuple(n // 2 for n in w.shape[2:]), groups=x.shape[1])


def gradient_checks(device: torch.device) -> dict:
    """Every engine against native float64 autograd on ``device``; returns errors and an overall verdict.

    Reference: native conv3d in float64 on the same inputs. Engines pass at ``TOL`` (1e-10 in float64, 1e-5
    in float32); native float32 is listed for comparison (not judged: cuDNN may pick TF32 or other
    algorithms).
    """
    results = []
    ok = True
    for i, (b, c, s, k) in enumerate(GRAD_SHAPES):
        gen = torch.Generator().manual_seed(i)
        x64 = torch.randn(b, c, *s, generator=gen, dtype=torch.float64).to(device).requires_grad_()
        w64 = torch.randn(c, 1, *k, generator=gen, dtype=torch.float64).to(device).requires_grad_()
        b64 = torch.randn(c, generator=gen, dtype=torch.float64).to(device).requires_grad_()
        ref = _native(x64, w64, b64)
        g64 = torch.randn(ref.shape, generator=gen, dtype=torch.float64).to(device)
        ref_grads = torch.autograd.grad(ref, (x64, w64, b64), g64)
        for dtype in (torch.float64, torch.float32):
            x, w, bias = (t.detach().to(dtype).requires_grad_() for t in (x64, w64, b64))
            for backend in ("direct", "fft", "auto", "native"):
                if backend == "native":
                    if dtype == torch.float64:
                        continue
                    y = _native(x, w, bias)
                else:
                    y = depthwise_conv3d(x, w, bias, backend=backend)
                grads = torch.autograd.grad(y, (x, w, bias), g64.to(dtype))
                names = ("grad_x", "grad_w", "grad_b")
                errs = {"y": _rel(y, ref)} | {
                    n: _rel(a, r) for n, a, r in zip(names, grads, ref_grads, strict=True)
                }
                passed = None if backend == "native" else max(errs.values()) <= TOL[dtype]
                ok &= passed is not False
                results.append(
                    dict(
                        dtype=str(dtype),
                        batch=b,
                        channels=c,
                        spatial=s,
                        kernel=k,
                        backend=backend,
                        errors=errs,
                        passed=passed,
                    )
                )
    gradcheck = {}
    for backend in ("direct", "fft"):
        x = torch.randn(2, 2, 4, 5, 3, dtype=torch.float64, device=device, requires_grad=True)
        w = torch.randn(2, 1, 3, 5, 7, dtype=torch.float64, device=device, requires_grad=True)
        bias = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)
        gradcheck[backend] = bool(
            torch.autograd.gradcheck(
                lambda a, b_, c_, be=backend: depthwise_conv3d(a, b_, c_, backend=be), (x, w, bias)
            )
        )
        ok &= gradcheck[backend]
    return {"passed": ok, "gradcheck_float64": gradcheck, "cases": results}


def _probe_native_backward(device: torch.device, channels: int, spatial: int, kernel: int) -> float:
    x = torch.randn(1, channels, spatial, spatial, spatial, device=device, requires_grad=True)
    w = torch.randn(channels, 1, kernel, kernel, kernel, device=device, requires_grad=True)
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    t0 = time.perf_counter()
    y = F.conv3d(x, w, padding=kernel // 2, groups=channels)
    torch.autograd.grad(y, (x, w), torch.ones_like(y))
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--budget-s", type=float, default=270.0, help="stop adding table rows after this wall time"
    )
    p.add_argument(
        "--native-backward-limit-s",
        type=float,
        default=5.0,
        help="time native fwd+bwd only on rows whose estimated single call is below this",
    )
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: CUDA is not available on this machine; nothing was measured. "
            "Run it on a GPU host (or pass --device cpu for a dry run of the script).",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    # "fp32" means fp32: keep cuDNN / cuBLAS from switching native convs to TF32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    t_start = time.perf_counter()
    env = conv_backends.environment(device)
    print(f"# {env}", flush=True)

    grads = gradient_checks(device)
    (args.out / "gradients.json").write_text(json.dumps(grads, indent=1))
    print(
        f"gradient agreement with native: {'PASS' if grads['passed'] else 'FAIL'} "
        f"(gradcheck {grads['gradcheck_float64']}) [{time.perf_counter() - t_start:.0f} s]",
        flush=True,
    )

    # native fwd+bwd: probe the smallest-volume stage at 96^3 and scale by volume (cost ~ C * S^3 * K^3)
    probe_c, probe_s = conv_backends.stage_shapes(min(args.sizes))[-1]
    probe = _probe_native_backward(device, probe_c, probe_s, 21)
    probe = _probe_native_backward(device, probe_c, probe_s, 21)  # second call: without one-time setup
    print(f"native fwd+bwd probe {probe_c}@{probe_s}^3: {probe:.3f} s", flush=True)

    summary = [
        f"# GPU check — {env.get('gpu', device.type)}",
        "",
        f"torch {env['torch']}, CUDA {env.get('cuda')}",
        "",
        f"Gradient agreement with native conv3d: **{'PASS' if grads['passed'] else 'FAIL'}**, "
        f"gradcheck float64: {grads['gradcheck_float64']}",
        "",
        "| dtype | backend | max rel. error vs native float64 (y and all gradients) |",
        "|---|---|---|",
    ]
    worst_err: dict[tuple[str, str], float] = {}
    for case in grads["cases"]:
        key = (case["dtype"], case["backend"])
        worst_err[key] = max(worst_err.get(key, 0.0), max(case["errors"].values()))
    summary += [f"| {d} | {b} | {e:.1e} |" for (d, b), e in worst_err.items()] + [""]
    truncated = False
    for label, autocast in (("fp32", False), ("bf16_autocast", True)):
        rows = []
        for patch in args.sizes:
            for batch in args.batch:
                for channels, spatial in conv_backends.stage_shapes(patch):
                    # native never crops: its cost scales with B * C * S^3 at a fixed 21^3 kernel
                    est = probe * (batch * channels * spatial**3) / (probe_c * probe_s**3)
                    if time.perf_counter() - t_start > args.budget_s:
                        truncated = True
                        continue
                    for backward in (False, True):
                        skip = {"native"} if backward and est > args.native_backward_limit_s else set()
                        row = conv_backends.bench_row(
                            channels,
                            spatial,
                            batch,
                            21,
                            backward,
                            {n: conv_backends.make_path(n) for n in conv_backends.PATHS},
                            device=device,
                            dtype=torch.float32,
                            autocast=autocast,
                            repeats=args.repeats,
                            skip=skip,
                        )
                        row["patch"] = patch
                        rows.append(row)
                        print(
                            f"{label} {patch}^3 B{batch} {channels}@{spatial}^3 {row['pass']}: "
                            + ", ".join(f"{n} {v:.2f}" for n, v in row["ms"].items())
                            + f" [{time.perf_counter() - t_start:.0f} s]",
                            flush=True,
                        )
        table = conv_backends.markdown(rows)
        (args.out / f"table_{label}.json").write_text(
            json.dumps({"environment": env, "rows": rows}, indent=1)
        )
        (args.out / f"table_{label}.md").write_text(table + "\n")
        summary += [f"## {label}", "", table, ""]
        worst = max((r["ms"]["auto"] / min(r["ms"].values()) for r in rows if "auto" in r["ms"]), default=0)
        summary += [f"worst auto / best: {worst:.2f}", ""]
    if truncated:
        summary.append(f"(rows after {args.budget_s:.0f} s of wall time were left out: --budget-s)")
    summary.append(f"total wall time {time.perf_counter() - t_start:.0f} s")
    (args.out / "summary.md").write_text("\n".join(summary) + "\n")
    print("\n".join(summary))
    return 0 if grads["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
