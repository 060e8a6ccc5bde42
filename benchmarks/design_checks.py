"""The measurements behind the FFT engine's design choices (benchmarks/README.md, "Design measurements").

Each check times variants of one knob side by side (round-robin, median of ``--repeats``), fwd+bwd, float32:

* ``chunk``: channel-group budget of the FFT engine (engine setting ``chunk_bytes``);
* ``length``: smallest 5-smooth length vs smallest *even* 5-smooth length (``fft_lengths``);
* ``spectra``: keeping the forward spectra for the backward vs recomputing them (engine setting ``save_spectra``);
* ``direct-backward``: rep3d's direct path (backward of native forward convs) vs PyTorch's native autograd
  for small kernels, where the direct path is what ``auto`` picks.

    python benchmarks/design_checks.py --wait-idle 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conv_backends import wait_for_idle  # noqa: E402

from rep3d.layers import depthwise_conv3d, engine_settings, fft_conv  # noqa: E402


def side_by_side(variants: dict[str, Callable[[], None]], repeats: int, wait: float) -> dict[str, float]:
    for f in variants.values():
        f()
    times: dict[str, list[float]] = {n: [] for n in variants}
    for _ in range(repeats):
        wait_for_idle(wait, windows=1, window_s=0.2)
        for n, f in variants.items():
            t0 = time.perf_counter()
            f()
            times[n].append((time.perf_counter() - t0) * 1e3)
    return {n: statistics.median(v) for n, v in times.items()}


def fwd_bwd(x: torch.Tensor, w: torch.Tensor, backend: str) -> Callable[[], None]:
    g = torch.randn_like(x)
    return lambda: torch.autograd.grad(depthwise_conv3d(x, w, backend=backend), (x, w), g)


def _inputs(b: int, c: int, s: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randn(b, c, s, s, s, requires_grad=True), torch.randn(c, 1, k, k, k, requires_grad=True))


def with_setting(obj, name: str, value, f: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        old = getattr(obj, name) if not isinstance(obj, dict) else obj[name]
        if isinstance(obj, dict):
            obj[name] = value
        else:
            setattr(obj, name, value)
        try:
            f()
        finally:
            if isinstance(obj, dict):
                obj[name] = old
            else:
                setattr(obj, name, old)

    return run


def with_engine_settings(f: Callable[[], None], **settings) -> Callable[[], None]:
    def run() -> None:
        with engine_settings(**settings):
            f()

    return run


def check_chunk(args) -> None:
    print("\n## chunk budget (fft fwd+bwd, ms)")
    budgets = {"4 MiB": 4 * 2**20, "16 MiB": 16 * 2**20, "64 MiB": 64 * 2**20, "one group": 2**62}
    print("| B | C @ S³ | " + " | ".join(budgets) + " |\n|---|---|" + "---|" * len(budgets))
    for b, c, s in [(1, 48, 48), (2, 48, 48), (1, 96, 24), (1, 48, 64)]:
        x, w = _inputs(b, c, s, 21)
        f = fwd_bwd(x, w, "fft")
        v = {n: with_engine_settings(f, chunk_bytes={"cpu": size}) for n, size in budgets.items()}
        ms = side_by_side(v, args.repeats, args.wait_idle)
        print(f"| {b} | {c} @ {s}³ | " + " | ".join(f"{ms[n]:.0f}" for n in budgets) + " |", flush=True)


def check_length(args) -> None:
    print("\n## transform length (fft fwd+bwd, ms)")
    even = fft_conv.fft_lengths

    def any_5_smooth(spatial, kernel_size):
        return tuple(fft_conv.fast_fft_length(s + k // 2) for s, k in zip(spatial, kernel_size, strict=True))

    print("| B | C @ S³ | 5-smooth L | ms | even 5-smooth L | ms |\n|---|---|---|---|---|---|")
    for b, c, s in [(1, 48, 64), (1, 96, 32), (1, 192, 16), (1, 384, 8)]:
        k = min(21, 2 * s - 1)
        x, w = _inputs(b, c, s, k)
        f = fwd_bwd(x, w, "fft")
        ms = side_by_side(
            {"odd": with_setting(fft_conv, "fft_lengths", any_5_smooth, f), "even": f},
            args.repeats,
            args.wait_idle,
        )
        lo, le = any_5_smooth((s,) * 3, (k,) * 3)[0], even((s,) * 3, (k,) * 3)[0]
        print(f"| {b} | {c} @ {s}³ | {lo} | {ms['odd']:.0f} | {le} | {ms['even']:.0f} |", flush=True)


def check_spectra(args) -> None:
    print("\n## keep spectra for the backward vs recompute (fft fwd+bwd, ms)")
    print("| B | C @ S³ | recompute | keep | keep / recompute |\n|---|---|---|---|---|")
    for b, c, s in [(1, 48, 48), (1, 96, 24), (1, 192, 12), (1, 384, 6), (2, 96, 24)]:
        x, w = _inputs(b, c, s, min(21, 2 * s - 1))
        f = fwd_bwd(x, w, "fft")
        v = {"recompute": with_engine_settings(f, save_spectra=False)}
        v["keep"] = with_engine_settings(f, save_spectra=True)
        ms = side_by_side(v, args.repeats, args.wait_idle)
        print(
            f"| {b} | {c} @ {s}³ | {ms['recompute']:.1f} | {ms['keep']:.1f} | "
            f"{ms['keep'] / ms['recompute']:.2f} |",
            flush=True,
        )


def check_direct_backward(args) -> None:
    print("\n## direct path backward vs native autograd, small kernels (fwd+bwd, ms)")
    print("| B | C @ S³ | K | native autograd | rep3d direct | speedup |\n|---|---|---|---|---|---|")
    for b, c, s, k in [(1, 48, 24, 3), (1, 96, 24, 3), (1, 48, 24, 5), (1, 48, 24, 7), (1, 384, 6, 11)]:
        x, w = _inputs(b, c, s, k)
        g = torch.randn_like(x)

        def native(x=x, w=w, g=g, k=k) -> None:
            torch.autograd.grad(F.conv3d(x, w, padding=k // 2, groups=x.shape[1]), (x, w), g)

        ms = side_by_side({"native": native, "direct": fwd_bwd(x, w, "direct")}, args.repeats, args.wait_idle)
        print(
            f"| {b} | {c} @ {s}³ | {k} | {ms['native']:.1f} | {ms['direct']:.1f} | "
            f"{ms['native'] / ms['direct']:.0f}× |",
            flush=True,
        )


CHECKS = {"chunk": check_chunk, "length": check_length, "spectra": check_spectra}
CHECKS["direct-backward"] = check_direct_backward


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checks", nargs="+", choices=list(CHECKS), default=list(CHECKS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32")
    for name in args.checks:
        CHECKS[name](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
