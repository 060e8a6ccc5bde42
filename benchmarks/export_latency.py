"""Inference latency of a deployed model in eager PyTorch, torch.compile, onnxruntime and TorchScript.

    python benchmarks/export_latency.py --models rep3d_tiny rep3d_base --roi 96 --threads 2 --repeats 3

Per model (deployed form, random weights, 16 classes, batch 1, float32, CPU): the median of ``--repeats`` timed
forwards after one warm-up, the variants taking turns in each round (the machine is shared), for

* ``eager auto`` / ``eager direct``: PyTorch with the default engine choice / the direct engine forced;
* ``compiled``: ``torch.compile(model)`` (default backend, engine ``auto``);
* ``ORT auto`` / ``ORT direct``: the ONNX export of that engine (``auto`` puts FFT layers in as ONNX ``DFT``);
* ``TorchScript``: ``torch.jit.script`` (direct engine, uncropped kernels: what a script graph can hold).

Ratios are to ``eager auto`` measured in the same run (the machine is shared: compare ratios, not seconds). With
``--profile`` the ORT runs are profiled and the time per ONNX op type is printed: where ORT loses its time.
Results go to ``benchmarks/results/export_latency.json`` (``--out``). ``--layer`` times one deployed layer
instead (12 channels, 32^3, k21): eager vs ORT for the FFT engine with 5-smooth and power-of-two lengths and for
the direct engine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

import rep3d
from rep3d.export import conv_path, example_input, export_onnx, prepare_model

VARIANTS = ("eager auto", "eager direct", "compiled", "ORT auto", "ORT direct", "TorchScript")


def timed(fn, x: torch.Tensor, repeats: int) -> list[float]:
    fn(x)  # warm-up (compilation, allocator, oneDNN primitive cache)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return times


def ort_session(path: Path, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def op_type_times(profile_file: str) -> dict[str, float]:
    """Seconds per ONNX op type (summed over nodes and runs) from an onnxruntime profile."""
    totals: dict[str, float] = defaultdict(float)
    for event in json.loads(Path(profile_file).read_text()):
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            totals[event.get("args", {}).get("op_name", "?")] += event["dur"] / 1e6
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def bench_model(name: str, roi: int, threads: int, repeats: int, variants: list[str], profile: bool,
                workdir: Path) -> dict:
    torch.manual_seed(0)
    model = rep3d.create_model(name, num_classes=16)
    deployed, _ = prepare_model(model)
    x = example_input(deployed, (roi, roi, roi))
    row: dict = {"model": name, "input": list(x.shape), "seconds": {}, "conv_path": conv_path(deployed, x)}
    with torch.no_grad():
        reference = deployed(x)
    nets = {backend: prepare_model(deployed, backend)[0] for backend in ("auto", "direct")}
    runners, sessions = {}, {}
    for variant in variants:
        backend = "direct" if variant.endswith("direct") else "auto"
        net = nets[backend]
        if variant.startswith("eager"):
            runners[variant] = net
        elif variant == "compiled":
            runners[variant] = torch.compile(net)
        elif variant == "TorchScript":
            runners[variant] = torch.jit.script(net)
        else:
            path = workdir / f"{name}_{backend}.onnx"
            export_onnx(net, path, x)
            session = sessions[variant] = ort_session(path, threads, str(workdir / f"{name}_{backend}") if profile
                                                      else None)
            runners[variant] = lambda t, s=session: torch.from_numpy(s.run(None, {"image": t.numpy()})[0])
    # one warm-up each (compilation, allocators, oneDNN's primitive cache), then the variants in turns, so that
    # every round compares them under the same load of this shared machine
    times: dict[str, list[float]] = {v: [] for v in variants}
    with torch.no_grad():
        for variant in variants:
            row.setdefault("max_abs_error", {})[variant] = float((runners[variant](x) - reference).abs().max())
        for _ in range(repeats):
            for variant in variants:
                start = time.perf_counter()
                runners[variant](x)
                times[variant].append(time.perf_counter() - start)
    for variant in variants:
        row["seconds"][variant] = statistics.median(times[variant])
        row.setdefault("runs", {})[variant] = times[variant]
        print(f"  {name} {variant}: {row['seconds'][variant]:.3f} s (runs {[round(t, 3) for t in times[variant]]}, "
              f"max abs error vs eager {row['max_abs_error'][variant]:.2g})", flush=True)
    if profile:
        for variant, session in sessions.items():
            row.setdefault("ort_op_seconds", {})[variant] = op_type_times(session.end_profiling())
    return row


def bench_layer(threads: int, repeats: int, workdir: Path, channels: int = 12, size: int = 32,
                kernel: int = 21) -> list[dict]:
    """One deployed large-kernel layer in eager PyTorch vs onnxruntime, per engine and FFT length rule."""
    import contextlib

    from rep3d.export import power_of_two_fft_lengths
    from rep3d.layers import RepLKConv3d
    from rep3d.layers.fft_conv import fft_lengths

    conv = RepLKConv3d(channels, kernel, deploy=True).eval()
    x = torch.randn(1, channels, size, size, size)
    rows = []
    for engine, lengths in (("fft", "5-smooth"), ("fft", "power of two"), ("direct", "-")):
        conv.conv_backend = engine
        ctx = power_of_two_fft_lengths() if lengths == "power of two" else contextlib.nullcontext()
        with ctx, torch.no_grad():
            length = fft_lengths((size,) * 3, (kernel,) * 3)[0] if engine == "fft" else None
            eager = statistics.median(timed(conv, x, repeats))
            path = workdir / f"layer_{engine}_{len(rows)}.onnx"
            export_onnx(conv, path, x)
        session = ort_session(path, threads)
        ort_s = statistics.median(timed(lambda t, s=session: s.run(None, {"image": t.numpy()}), x, repeats))
        rows.append({"engine": engine, "fft_length": length, "eager_s": eager, "ort_s": ort_s})
        print(f"  layer {channels}ch {size}^3 k{kernel} {engine} (FFT length {length}): eager {eager:.3f} s, "
              f"ORT {ort_s:.3f} s ({ort_s / eager:.1f}x)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["rep3d_tiny", "rep3d_base"])
    parser.add_argument("--roi", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--profile", action="store_true", help="per-op-type time of the ORT runs")
    parser.add_argument("--layer", action="store_true",
                        help="only one deployed 12-channel 32^3 k21 layer: eager vs ORT per engine / FFT length")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "export_latency.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxruntime

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads, float32, "
          f"batch 1, {args.roi}^3, median of {args.repeats} after one warm-up")
    rows = []
    if args.layer:
        with tempfile.TemporaryDirectory() as tmp:
            layer = bench_layer(args.threads, args.repeats, Path(tmp))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"torch": torch.__version__, "threads": args.threads, "layer": layer},
                                       indent=2) + "\n")
        print(f"wrote {args.out}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.append(bench_model(name, args.roi, args.threads, args.repeats, args.variants, args.profile,
                                    Path(tmp)))
    header = "| model | " + " | ".join(args.variants) + " |"
    print("\n" + header + "\n|" + "---|" * (len(args.variants) + 1))
    for row in rows:
        base = row["seconds"].get("eager auto")
        cells = []
        for variant in args.variants:
            sec = row["seconds"][variant]
            cells.append(f"{sec:.3f} s" + (f" ({sec / base:.2f}x)" if base else ""))
        print(f"| {row['model']} | " + " | ".join(cells) + " |")
    for row in rows:
        print(f"{row['model']} conv path at {args.roi}^3: {row['conv_path']}")
        for variant, ops in row.get("ort_op_seconds", {}).items():
            top = ", ".join(f"{op} {sec:.3f} s" for op, sec in list(ops.items())[:6])
            print(f"  {variant} time by op type (all runs): {top}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "threads": args.threads,
            "roi": args.roi, "repeats": args.repeats, "dtype": "float32", "batch": 1,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
