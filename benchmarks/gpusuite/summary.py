"""``summary.md``: the markdown tables of a (possibly partial) suite.json."""


import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))



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


