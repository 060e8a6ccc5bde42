"""The decoder's instance norm on CPU, channels-last: accuracy against float64 and time, per form.

    python benchmarks/instance_norm.py --model rep3d_base --roi 96 --threads 2 --repeats 15

Three ways to normalise a float32 ``channels_last_3d`` activation ``[1, C, D, H, W]`` per channel, each keeping or
restoring that layout:

* ``group norm``: ``F.group_norm(x, C)``, PyTorch's channels-last CPU kernel (one pass: ``E[x^2] - E[x]^2``);
* ``two-pass``: :func:`rep3d.layers.instance_norm_channels_last`, what ``InstanceNorm3dKeepFormat`` runs for
  float32 inference (the variance of the centred values);
* ``instance norm + copies``: ``F.instance_norm`` on a channels-first copy, copied back.

The shapes are the ones the model's decoder normalises at ``--roi`` (recorded from a forward). Each shape's data
has channel means ``offset`` standard deviations from zero (``--offsets``): trained decoders have such channels, and
they are where a one-pass variance cancels. Error: max abs difference from ``F.instance_norm`` in float64 (the output
has unit variance, so this is also relative). Time: median over ``--repeats``, the forms taking turns.

``--forward`` also times the whole :func:`rep3d.models.optimize_for_inference` forward with every decoder norm on
the two-pass form (as shipped) against the same model with every decoder norm on the group norm, in turns, and
compares both outputs with the model as built (float32, channels-first). Results:
``benchmarks/results/instance_norm_<model>.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import rep3d
from rep3d.layers import InstanceNorm3dKeepFormat, instance_norm_channels_last
from rep3d.models import optimize_for_inference, reparameterize_model

CL = torch.channels_last_3d
FORMS = {
    "group norm": lambda x: F.group_norm(x, x.shape[1], eps=1e-5),
    "two-pass": lambda x: instance_norm_channels_last(x, 1e-5),
    "instance norm + copies": lambda x: F.instance_norm(x.contiguous(), eps=1e-5).contiguous(memory_format=CL),
}


def decoder_norm_shapes(model: torch.nn.Module, roi: int) -> list[tuple[int, ...]]:
    """Input shapes of every ``InstanceNorm3dKeepFormat`` in one forward of the optimized model, in call order."""
    shapes = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
             for m in model.modules() if isinstance(m, InstanceNorm3dKeepFormat)]
    with torch.no_grad():
        model(torch.randn(1, 1, roi, roi, roi).contiguous(memory_format=CL))
    for h in hooks:
        h.remove()
    return shapes


def median_time(fn, x: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_shape(shapes: list[tuple[int, ...]], offsets: list[float], repeats: int) -> list[dict]:
    rows = []
    for shape in sorted(set(shapes), key=lambda s: (-s[2] * s[3] * s[4], s[1])):
        count = shapes.count(shape)
        for offset in offsets:
            gen = torch.Generator().manual_seed(0)
            channels = shape[1]
            means = offset * torch.linspace(-1.0, 1.0, channels).view(1, channels, 1, 1, 1)
            x = (torch.randn(shape, generator=gen) + means).contiguous(memory_format=CL)
            expected = F.instance_norm(x.double().contiguous(), eps=1e-5)
            row = {"shape": list(shape), "calls_per_forward": count, "offset_std": offset}
            with torch.no_grad():
                for name, fn in FORMS.items():
                    row[f"{name} error"] = (fn(x).double() - expected).abs().max().item()
                    fn(x)  # warm-up
                times = {name: [] for name in FORMS}
                for _ in range(3):  # the forms take turns, three blocks each
                    for name, fn in FORMS.items():
                        times[name].append(median_time(fn, x, repeats))
            for name in FORMS:
                row[f"{name} ms"] = 1e3 * statistics.median(times[name])
            rows.append(row)
    return rows


def forward_ab(model: torch.nn.Module, roi: int, rounds: int) -> dict:
    """Whole optimized forward, decoder norms two-pass (as shipped) vs group norm, in turns; error vs as-built."""
    fast = optimize_for_inference(model)
    norms = [m for m in fast.modules() if isinstance(m, InstanceNorm3dKeepFormat)]
    x = torch.randn(1, 1, roi, roi, roi, generator=torch.Generator().manual_seed(1))
    x_cl = x.contiguous(memory_format=CL)

    def run(form: str) -> tuple[float, torch.Tensor]:
        for m in norms:  # an instance attribute shadows the class's forward
            if form == "group norm":
                m.forward = FORMS["group norm"]
            else:
                m.__dict__.pop("forward", None)
        start = time.perf_counter()
        with torch.no_grad():
            out = fast(x_cl)
        return time.perf_counter() - start, out

    with torch.no_grad():
        reference = model(x).double()
    scale = reference.abs().max().item()
    times, errors = {"two-pass": [], "group norm": []}, {}
    run("two-pass"), run("group norm")
    for r in range(rounds):
        order = ("two-pass", "group norm") if r % 2 == 0 else ("group norm", "two-pass")
        for form in order:
            seconds, out = run(form)
            times[form].append(seconds)
            errors[form] = (out.double() - reference).abs().max().item() / scale
    run("two-pass")
    medians = {form: statistics.median(t) for form, t in times.items()}
    return {"rounds": rounds, "median_s": medians, "two-pass / group norm": medians["two-pass"] / medians["group norm"],
            "max_abs_error_vs_as_built_relative": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="rep3d_base")
    parser.add_argument("--roi", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--offsets", type=float, nargs="+", default=[0.0, 10.0, 30.0])
    parser.add_argument("--forward", type=int, default=0, metavar="ROUNDS",
                        help="also time the whole forward over this many rounds (0: no)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default: benchmarks/results/instance_norm_<model>.json)")
    args = parser.parse_args()
    args.out = args.out or Path(__file__).parent / "results" / f"instance_norm_{args.model}.json"
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = reparameterize_model(rep3d.create_model(args.model, num_classes=16).eval())
    shapes = decoder_norm_shapes(optimize_for_inference(model), args.roi)
    from model_forward import cpu_flags, cpu_model

    result = {"meta": {"torch": torch.__version__, "threads": args.threads, "cpu": cpu_model(),
                       "cpu_flags": cpu_flags(), "model": args.model, "roi": args.roi, "dtype": "float32",
                       "weights": "random (seed 0)"},
              "shapes": per_shape(shapes, args.offsets, args.repeats)}
    names = list(FORMS)
    print(f"{args.model} decoder norms at {args.roi}^3, {args.threads} threads, float32, torch {torch.__version__}")
    print(f"{'shape':>22} {'calls':>5} {'offset':>6} | " + " | ".join(f"{n:>22}" for n in names))
    print(f"{'':>22} {'':>5} {'(std)':>6} | " + " | ".join(f"{'error':>9} {'ms':>12}" for _ in names))
    for row in result["shapes"]:
        cells = " | ".join(f"{row[f'{n} error']:9.1e} {row[f'{n} ms']:12.3f}" for n in names)
        print(f"{str(tuple(row['shape'])):>22} {row['calls_per_forward']:5d} {row['offset_std']:6.0f} | {cells}")
    for n in names:
        per_forward = sum(r[f"{n} ms"] * r["calls_per_forward"] for r in result["shapes"]
                          if r["offset_std"] == args.offsets[0])
        print(f"sum over one forward's decoder norms, {n}: {per_forward:.1f} ms")
    if args.forward:
        result["forward"] = forward_ab(model, args.roi, args.forward)
        f = result["forward"]
        print(f"whole optimized forward: two-pass {f['median_s']['two-pass']:.3f} s, group norm "
              f"{f['median_s']['group norm']:.3f} s, ratio {f['two-pass / group norm']:.3f} (median of {f['rounds']}); "
              f"max |out - as built| / max |out|: " + ", ".join(
                  f"{k} {v:.1e}" for k, v in f["max_abs_error_vs_as_built_relative"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
