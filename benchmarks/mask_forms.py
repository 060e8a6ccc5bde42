"""Which mask form keeps learning? Short phantom training runs of rep3d_tiny, one per ``mask_form``.

Each run uses the phantom recipe (AdamW, lr 2e-3 with its 50-step warmup and 1500-step cosine schedule, 2 crops of
``--roi`` (recipe: 64³) per step, gradient clipping 1.0) for the first ``--steps`` steps, identical data and seed for
every form, and records every ``--every`` steps, per block (``mask_stats()``):

- ``at_bound``: fraction of kernel elements within 1 % of a bound of the form;
- ``M/P`` at the centre and on the edge;
- ``grad``: the generator's gradient norm of that step (before clipping);
- ``change``: mean ``|M_t/P - M_{t-every}/P|`` since the previous record (0 = the mask stopped moving).

A form that saturates shows ``at_bound`` rising and ``grad``/``change`` collapsing; the default should keep both
alive. Synthetic data (rep3d's phantoms); CPU; float32.

    rep3d phantom /work/data/phantom --num-train 40 --num-test 10 --seed 0
    for scale in none fan_in sqrt_fan_in; do
        python benchmarks/mask_forms.py --data /work/data/phantom --roi 32 32 32 --steps 100 --every 10 \\
            --threads 1 --output-scale $scale --json mask_forms_$scale.json
    done
    python benchmarks/mask_forms.py --combine mask_forms_*.json --roi 32 32 32 --threads 1 \\
        --json benchmarks/results/mask_forms_cpu.json --markdown benchmarks/results/mask_forms_cpu.md
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from monai.losses import DiceCELoss
from timm.optim import param_groups_weight_decay

import rep3d
from rep3d.data.msd import load_msd_dataset
from rep3d.layers.mask import MASK_FORMS, OUTPUT_SCALES, ModulatedKernelParam, mask_health
from rep3d.train.data import CachedVolumes, StepSampler, train_loader
from rep3d.train.recipes import build_config
from rep3d.train.runtime import lr_lambda


def masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: (m.mask() / m.prior_volume()).detach().clone() for name, m in model.named_modules()
            if isinstance(m, ModulatedKernelParam) and m.generator is not None}


def run_form(form: str, cfg, dataset, train_set: CachedVolumes, steps: int, every: int, rows: list[dict],
             json_path: str | None = None, output_scale: str = "sqrt_fan_in") -> None:
    """Train one form, appending its records to ``rows`` (and rewriting ``json_path`` after each record)."""
    torch.manual_seed(cfg.seed)
    model = rep3d.create_model(cfg.model, num_classes=len(dataset.class_names), in_chans=dataset.in_chans,
                               mask_form=form, generator_output_scale=output_scale)
    model.to(memory_format=torch.channels_last_3d).train()
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    sampler = StepSampler(len(train_set), steps, 0, cfg.seed, cfg.subjects_per_step)
    previous = masks(model)
    losses, t0 = [], time.perf_counter()
    for step, batch in enumerate(train_loader(train_set, sampler, 0), start=1):
        image = batch["image"].to(memory_format=torch.channels_last_3d)
        loss = loss_fn(model(image), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        losses.append(loss.item())
        if step % every == 0 or step == 1:
            health = mask_health(model)  # gradient of this step, before clipping
            current = masks(model)
            for name, stats in health.items():
                key = name + ".modulation"
                rows.append({
                    "form": form, "output_scale": output_scale, "step": step,
                    "block": name.removeprefix("encoder.").removesuffix(".dwconv"),
                    "loss": sum(losses) / len(losses), "at_bound": stats["at_bound"],
                    "negative": stats["negative"], "ratio_centre": stats["ratio_centre"],
                    "ratio_edge": stats["ratio_edge"], "grad": stats["generator_grad_norm"],
                    "change": float((current[key] - previous[key]).abs().mean()),
                    "seconds": time.perf_counter() - t0,
                })
            previous, losses = current, []
            if json_path:  # after every record, so that a run stopped early still leaves its numbers
                Path(json_path).write_text(json.dumps({"rows": rows}, indent=1))
            print(f"{form:8s} step {step:4d} loss {rows[-1]['loss']:.4f} "
                  + " ".join(f"[{r['block']} bound {r['at_bound']:.3f} c {r['ratio_centre']:.3f} "
                             f"e {r['ratio_edge']:.3f} g {r['grad']:.1e} d {r['change']:.1e}]"
                             for r in rows[-len(health):]), flush=True)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()


def markdown(rows: list[dict], threads: int, roi: tuple[int, ...], every: int = 20) -> str:
    """Summary table: per form, generator output scale and record step (every ``every`` steps), over the blocks."""
    lines = [
        f"rep3d_tiny on rep3d's SYNTHETIC phantoms, phantom recipe (AdamW lr 2e-3, 50 warmup steps) with "
        f"{'x'.join(map(str, roi))} crops, seed 0; CPU {threads} thread(s), float32, torch {torch.__version__}. "
        "Per form, generator output scale and step, over the 4 blocks: max fraction at a bound, max fraction "
        "negative, mean M/P at centre and edge (min-max over blocks), median generator gradient norm, median "
        "mean |ΔM/P| over the last 10 steps.",
        "",
        "| form | output scale | step | loss | at bound (max) | M < 0 (max) | M/P centre | M/P edge | grad (median) "
        "| ΔM/P per 10 steps (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    scales = ("none", "fan_in", "sqrt_fan_in")
    keys = sorted({(r["form"], r.get("output_scale", "none"), r["step"]) for r in rows
                   if r["step"] % every == 0 or r["step"] == 1},
                  key=lambda k: (MASK_FORMS.index(k[0]), scales.index(k[1]), k[2]))
    for form, scale, step in keys:
        group = [r for r in rows if (r["form"], r.get("output_scale", "none"), r["step"]) == (form, scale, step)]
        grads = sorted(r["grad"] for r in group)
        changes = sorted(r["change"] for r in group)
        centre = [r["ratio_centre"] for r in group]
        edge = [r["ratio_edge"] for r in group]
        lines.append(
            f"| {form} | {scale} | {step} | {group[0]['loss']:.3f} | {max(r['at_bound'] for r in group):.3f} "
            f"| {max(r['negative'] for r in group):.3f} | {min(centre):.3g}–{max(centre):.3g} "
            f"| {min(edge):.3g}–{max(edge):.3g} | {grads[len(grads) // 2]:.1e} | {changes[len(changes) // 2]:.1e} |")
    return "\n".join(lines) + "\n"


def first_weights_health(path: str) -> dict[str, dict]:
    """mask_stats of the first bundled rep3d_tiny.phantom weights (residual block, tanh form, 4 hidden channels)::

        git show 6ac822b:rep3d/weights/rep3d_tiny_phantom.safetensors > /tmp/first.safetensors
    """
    from safetensors.torch import load_file

    model = rep3d.create_model("rep3d_tiny", num_classes=9, block_residual=True, mask_form="tanh",
                               generator_hidden_channels=4)
    state = {k.replace("generator.norm.", "generator.norm1."): v.float() for k, v in load_file(path).items()}
    model.load_state_dict(state, strict=True)
    return mask_health(model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="phantom dataset folder (rep3d phantom ...)")
    parser.add_argument("--first-weights", metavar="SAFETENSORS",
                        help="instead of training, print mask_stats of the first bundled weights (tanh form)")
    parser.add_argument("--combine", nargs="+", metavar="JSON",
                        help="instead of training, build the table from the --json files of earlier runs")
    parser.add_argument("--forms", nargs="+", default=list(MASK_FORMS), choices=MASK_FORMS)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-scale", default="sqrt_fan_in", choices=OUTPUT_SCALES,
                        help="generator_output_scale of the model")
    parser.add_argument("--roi", type=int, nargs=3, default=(64, 64, 64), help="training crop (recipe: 64³)")
    parser.add_argument("--json", help="write all records here")
    parser.add_argument("--markdown", help="write the summary table here")
    args = parser.parse_args(argv)
    rows = []
    if args.first_weights:
        for name, stats in first_weights_health(args.first_weights).items():
            print(name, json.dumps({k: None if v is None else round(v, 4) for k, v in stats.items()}))
        return 0
    if args.combine:
        for path in args.combine:
            rows += json.loads(Path(path).read_text())["rows"]
        args.steps = max(r["step"] for r in rows)
    else:
        if not args.data:
            parser.error("--data is required unless --combine is given")
        torch.set_num_threads(args.threads)
        cfg = build_config("phantom", data=args.data, seed=args.seed, workers=0, roi_size=tuple(args.roi))
        dataset = load_msd_dataset(cfg.data, num_val=None, seed=cfg.seed)
        train_set = CachedVolumes(dataset.train, cfg)  # preprocessed once, shared by the forms
        for form in args.forms:
            run_form(form, cfg, dataset, train_set, args.steps, args.every, rows, json_path=args.json,
                     output_scale=args.output_scale)
    table = markdown(rows, args.threads, tuple(args.roi))
    print(table)
    meta = {"roi": list(args.roi), "steps": args.steps, "every": args.every, "threads": args.threads,
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "data": "rep3d phantom (synthetic)"}
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
