"""Inference latency of a deployed model in eager PyTorch, torch.compile, onnxruntime and TorchScript.

    python benchmarks/export_latency.py --models rep3d_tiny rep3d_base --roi 64 --threads 2 --repeats 5 --profile
    python benchmarks/report.py   # the table in benchmarks/README.md, "Export"

Per model (deployed form, random weights, 16 classes, batch 1, float32, CPU): the median of ``--repeats`` timed
forwards after one warm-up, the variants taking turns in each round (the machine is shared), for

* ``eager auto`` / ``eager direct``: PyTorch with the default engine choice / the direct engine forced;
* ``compiled``: ``torch.compile(model)`` (default backend, engine ``auto``);
* ``eager fft``: the FFT engine forced;
* ``exported program``: ``torch.export.export(model).module()`` (engine ``auto``);
* ``ORT auto`` / ``ORT direct`` / ``ORT fft``: the ONNX export with that engine (FFT transforms as ``MatMul``,
  :mod:`rep3d.layers.dft_matmul`); ``ORT auto DFT``: the former export, FFT transforms as ONNX ``DFT`` ops with
  power-of-two lengths; ``ORT auto basic-opt``: onnxruntime's basic graph optimisations only;
* ``TorchScript``: ``torch.jit.script`` (the eager engine restated in TorchScript, rep3d.layers.scripted_engine).

Ratios are to ``eager auto`` measured in the same run (the machine is shared: compare ratios, not seconds). With
``--profile`` the ORT runs are profiled and the time per ONNX op type is printed: where ORT loses its time.
Results go to ``benchmarks/results/export_latency.json`` (``--out``). ``--layer`` times one deployed layer
instead (12 channels, 32^3, k21): eager vs ORT for the FFT engine (ONNX ``DFT`` with power-of-two lengths, or
``MatMul`` transforms) and for the direct engine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

import rep3d
from rep3d.export import conv_path, example_input, export_onnx, prepare_model

VARIANTS = ("eager auto", "eager direct", "eager fft", "compiled", "exported program", "TorchScript", "ORT auto",
            "ORT direct", "ORT fft", "ORT auto DFT", "ORT auto basic-opt")
DEFAULT_VARIANTS = ("eager auto", "exported program", "TorchScript", "ORT auto", "ORT fft", "ORT direct",
                    "ORT auto DFT")


def machine() -> str:
    """CPU model and logical core count (from /proc/cpuinfo where there is one)."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} logical cores"


def seconds(fn, x: torch.Tensor) -> float:
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def ort_session(path: Path, threads: int, profile_prefix: str | None = None, basic: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if basic
                                     else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
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
    nets = {backend: prepare_model(deployed, backend)[0] for backend in ("auto", "direct", "fft")}
    runners, sessions = {}, {}
    for variant in variants:
        backend = next((b for b in ("direct", "fft") if f" {b}" in variant), "auto")
        net = nets[backend]
        if variant.startswith("eager"):
            runners[variant] = net
        elif variant == "compiled":
            runners[variant] = torch.compile(net)
        elif variant == "exported program":
            with torch.no_grad():
                runners[variant] = torch.export.export(net, (x,)).module()
        elif variant == "TorchScript":
            runners[variant] = torch.jit.script(net)
        else:
            transforms = "dft" if variant.endswith("DFT") else "matmul"
            path = workdir / f"{name}_{backend}_{transforms}.onnx"
            if not path.exists():
                export_onnx(net, path, x, fft_transforms=transforms)
            tag = variant.replace(" ", "_")
            session = sessions[variant] = ort_session(path, threads, str(workdir / f"{name}_{tag}") if profile
                                                      else None, basic=variant.endswith("basic-opt"))
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
    """One deployed large-kernel layer in eager PyTorch vs onnxruntime, per engine and ONNX form of the FFT.

    Eager and ORT take turns in each round; ``ratio`` is the median over rounds of ORT / eager.
    """
    from rep3d.layers import RepLKConv3d
    from rep3d.layers.fft_conv import fft_lengths

    conv = RepLKConv3d(channels, kernel, deploy=True).eval()
    x = torch.randn(1, channels, size, size, size)
    rows = []
    for engine, transforms in (("fft", "dft"), ("fft", "matmul"), ("direct", "-")):
        conv.conv_backend = engine
        path = workdir / f"layer_{engine}_{transforms}.onnx"
        export_onnx(conv, path, x, fft_transforms="dft" if transforms == "dft" else "matmul")
        session = ort_session(path, threads)

        def run_ort(t: torch.Tensor, s=session) -> list:
            return s.run(None, {"image": t.numpy()})

        eager, ort_times = [], []
        with torch.no_grad():
            conv(x), run_ort(x)  # warm-up
            for _ in range(repeats):  # in turns: each round compares them under the same load
                eager.append(seconds(conv, x))
                ort_times.append(seconds(run_ort, x))
        if engine == "fft":
            length = (fft_lengths((size,) * 3, (kernel,) * 3)[0], 1 << (size + kernel // 2 - 1).bit_length()
                      if transforms == "dft" else size + kernel // 2)
        else:
            length = None
        row = {"engine": engine, "onnx_fft_transforms": transforms,
               "fft_length_eager_onnx": list(length) if length else None,
               "eager_s": statistics.median(eager), "ort_s": statistics.median(ort_times),
               "ratio": statistics.median(o / e for o, e in zip(ort_times, eager)), "eager_runs": eager,
               "ort_runs": ort_times}
        rows.append(row)
        print(f"  layer {channels}ch {size}^3 k{kernel} {engine} (ONNX transforms {transforms}, lengths {length}): "
              f"eager {row['eager_s']:.3f} s, ORT {row['ort_s']:.3f} s ({row['ratio']:.2f}x)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["rep3d_tiny", "rep3d_base"])
    parser.add_argument("--roi", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    parser.add_argument("--profile", action="store_true", help="per-op-type time of the ORT runs")
    parser.add_argument("--layer", action="store_true",
                        help="only one deployed 12-channel 32^3 k21 layer: eager vs ORT per engine / FFT length")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "export_latency.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxruntime

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads, float32, "
          f"batch 1, {'one layer' if args.layer else f'{args.roi}^3'}, median of {args.repeats} after one warm-up")
    rows = []
    if args.layer:
        with tempfile.TemporaryDirectory() as tmp:
            layer = bench_layer(args.threads, args.repeats, Path(tmp))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "threads": args.threads,
                "repeats": args.repeats, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "machine": machine(), "load_average_at_end": [round(v, 1) for v in os.getloadavg()]}
        args.out.write_text(json.dumps({"meta": meta, "layer": layer}, indent=2) + "\n")
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
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
            "load_average_at_end": [round(v, 1) for v in os.getloadavg()]}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
