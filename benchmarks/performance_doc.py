"""Renderers of the measured tables of ``docs/guides/performance.md``, one per results JSON (``model_forward.json``,
``full_scan.json``). ``benchmarks/report.py`` fills the page's ``report:model-forward`` / ``report:full-scan`` blocks
with them (``python benchmarks/report.py``; ``--check`` and tests/test_report.py fail when the page drifts), so no
number on the page is typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "guides" / "performance.md"


def render_model_forward(data: dict) -> str:
    meta = data["meta"]
    variants = ("fp32", "fp32 channels_last", "fp32 optimized (before)", "fp32 optimized", "bf16", "bf16 optimized")
    lines = [f"torch {meta['torch']}, {meta['threads']} CPU threads, batch 1, {meta['state']}; "
             f"{meta['repeats']} interleaved rounds on a shared 2-core machine (CPU flags: "
             f"{', '.join(meta['cpu_flags']) or 'unknown'}); each allocator in its own process, the two taking "
             "turns round by round. Each cell: speed-up over `fp32` with the default allocator (median over rounds "
             "of the ratio within a round) and, in brackets, the output difference max |y - y_fp32| / max |y_fp32|.",
             ""]
    lines.append("| model | input | allocator | " + " | ".join(f"`{v}`" for v in variants) + " | peak RSS MiB |")
    lines.append("|---|---|---|" + "---|" * len(variants) + "---|")
    for row in data["rows"]:
        for allocator, cell in row["allocators"].items():
            speedup, error = cell["speedup_paired_median"], cell["max_abs_error_rel"]
            cells = [f"{speedup[v]:.2f}× ({error[v]:.0e})" for v in variants]
            lines.append(f"| {row['model']} | {row['roi']}³ | `{allocator}` | " + " | ".join(cells)
                         + f" | {cell['peak_rss_mib']:.0f} |")
    lines.append("")
    for row in data["rows"]:
        before = row["allocators"]["default"]["speedup_paired_median"]["fp32 optimized (before)"]
        now = row["allocators"]["keep"]["speedup_paired_median"]["fp32 optimized"]
        bf16 = row["allocators"]["keep"]["speedup_paired_median"]["bf16 optimized"]
        lines.append(f"- {row['model']} at {row['roi']}³ (decoder {row['decoder_share_fp32']:.0%} of the `fp32` "
                     f"forward): what `rep3d predict` runs in fp32 now (`fp32 optimized`, `keep`) is {now:.2f}× the "
                     f"model as built and {now / before:.2f}× what it ran before these changes (`fp32 optimized "
                     f"(before)`, `default`: {before:.2f}×); with `--precision bf16`, {bf16:.2f}×."
                     + (f" In bf16 the model as built ran faster than the channels-last copy that `Predictor` "
                        f"uses ({row['allocators']['keep']['speedup_paired_median']['bf16']:.2f}×): an open item."
                        if row["allocators"]["keep"]["speedup_paired_median"]["bf16"] > bf16 else ""))
    profiled = [r for r in data["rows"] if "profiles" in r]
    if profiled:
        lines += ["", "Where the time goes (torch.profiler, self time by op, top 4; transposed convolutions in "
                  "total):", ""]
        for row in profiled:
            for allocator, prof in row["profiles"].items():
                top = list(prof["self_time_share"].items())[:4]
                lines.append(f"- {row['model']} at {row['roi']}³, `{prof['variant']}`, `{allocator}`: "
                             + ", ".join(f"`{k}` {v:.0%}" for k, v in top)
                             + f"; transposed convolutions {prof['transposed_conv_share']:.1%}.")
    return "\n".join(lines)


def _cpu_words(meta: dict) -> str:
    """' of an AMD EPYC ... (CPU flags: avx2)' where the results file says which CPU ran it."""
    if "cpu" not in meta:
        return ""
    flags = ", ".join(meta.get("cpu_flags") or []) or "none of avx2/avx512f/avx512_bf16/amx"
    return f" of {meta['cpu']} (CPU flags: {flags})"


def machine_of(meta: dict) -> dict:
    """What ran a row: torch, threads, CPU model and flags (rows added with ``full_scan.py --append`` may come
    from another machine, so each row carries its own)."""
    return {k: meta[k] for k in ("torch", "threads", "cpu", "cpu_flags") if k in meta}


def _machine(row: dict, meta: dict) -> dict:
    """The torch/threads/CPU that ran ``row``: its own record, else the file's (older files had one machine)."""
    return row.get("machine") or machine_of(meta)


def render_full_scan(data: dict) -> str:
    meta = data["meta"]
    scan = meta["scan"]
    phases = ("setup", "read", "resample", "infer", "stitch", "write")
    machines = [_machine(row, meta) for row in data["rows"]]
    distinct = list({json.dumps(m, sort_keys=True): m for m in machines}.values())
    if len(distinct) == 1:
        where = f"torch {distinct[0]['torch']}, {distinct[0]['threads']} CPU threads{_cpu_words(distinct[0])}"
    else:  # rows from runs on different machines: name each, and compare only rows from the same one
        where = ("rows from " + str(len(distinct)) + " machines (the CPU column; "
                 + "; ".join(f"{chr(ord('A') + i)}: torch {m['torch']}, {m['threads']} CPU threads{_cpu_words(m)}"
                             for i, m in enumerate(distinct)) + ")")
    lines = [f"SYNTHETIC CT {' × '.join(map(str, scan['shape']))} voxels at "
             f"{' × '.join(f'{s:g}' for s in scan['spacing_mm'])} mm ({scan['dtype']}); {where}, overlap "
             f"{meta['overlap']}, {meta['blend']} blending, sliding-window batch {meta['sw_batch_size']}; one run "
             "each on a shared 2-core machine. Seconds per phase; peak RSS of the process (Python, torch and the "
             "model included).", ""]
    cpu_column = len(distinct) > 1
    lines.append("| model | pipeline | precision | allocator | " + ("CPU | " if cpu_column else "")
                 + "windows | wall s | " + " | ".join(phases)
                 + " | infer s / window | peak RSS MiB (before reading) | Dice vs phantom truth |")
    lines.append("|---|---|---|---|" + ("---|" if cpu_column else "") + "---|---|" + "---|" * len(phases)
                 + "---|---|---|")
    letter = {json.dumps(m, sort_keys=True): chr(ord("A") + i) for i, m in enumerate(distinct)}
    for row, machine in zip(data["rows"], machines):
        cells = [f"{row['phases_s'].get(p, 0.0):.1f}" for p in phases]
        per_window = row["phases_s"]["infer"] / max(row["windows"], 1)
        dice = f"{row['dice_vs_phantom_truth']:.3f}" if "dice_vs_phantom_truth" in row else "–"
        model = row["model"] + (" (random weights)" if row.get("weights", "").startswith("random") else "")
        cpu = f"{letter[json.dumps(machine, sort_keys=True)]} | " if cpu_column else ""
        lines.append(f"| {model} | {row['pipeline']} | {row.get('precision', 'fp32')} | "
                     f"`{row.get('allocator', 'default')}` | {cpu}{row['windows']} | "
                     f"{row['wall_s']:.0f} | "
                     + " | ".join(cells) + f" | {per_window:.2f} | {row['peak_rss_mib']:.0f} "
                     f"({row['baseline_rss_mib']:.0f}) | {dice} |")
    rows = {(r["model"], r["pipeline"], r.get("precision", "fp32"), r.get("allocator", "default")): r
            for r in data["rows"]}
    for model in dict.fromkeys(r["model"] for r in data["rows"]):
        for ours_alloc, theirs_alloc in (("keep", "default"), ("default", "default"), ("keep", "keep")):
            ours = rows.get((model, "rep3d", "fp32", ours_alloc))
            theirs = rows.get((model, "monai", "fp32", theirs_alloc))
            if ours and theirs and _machine(ours, meta) != _machine(theirs, meta):
                lines += ["", f"{model}: the `rep3d` and `monai` rows ran on different machines, so they are not "
                          "compared here."]
            elif ours and theirs:
                per = [r["phases_s"]["infer"] / max(r["windows"], 1) for r in (ours, theirs)]
                lines += ["", f"{model}, fp32, rep3d with the `{ours_alloc}` allocator against MONAI with "
                          f"`{theirs_alloc}`: `rep3d predict` took {ours['wall_s'] / theirs['wall_s']:.2f}× MONAI's "
                          f"wall time ({ours['windows']} vs {theirs['windows']} windows; "
                          f"{per[0] / per[1]:.2f}× its inference time per window) at "
                          f"{ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}× its peak memory."]
    from rep3d.data import FIELD_OF_VIEW_MM  # the default phantom's, the one the bundled weights were trained on

    fov = [n * s for n, s in zip(scan["shape"], scan["spacing_mm"])]
    if any(abs(f - d) > 1 for f, d in zip(fov, FIELD_OF_VIEW_MM)):
        scale = max(f / d for f, d in zip(fov, FIELD_OF_VIEW_MM))
        lines += ["", f"The phantom anatomy fills {' × '.join(f'{f:.0f}' for f in fov)} mm, up to {scale:.1f}× "
                  f"the {' × '.join(f'{d:.0f}' for d in FIELD_OF_VIEW_MM)} mm field of view the bundled phantom "
                  "weights were trained on: its organs are larger than any the model has seen, so the Dice column "
                  "is not an accuracy figure here: it only shows whether the two pipelines score alike on the same "
                  "unknown input."]
    return "\n".join(lines)


RENDERERS = {"model_forward": render_model_forward, "full_scan": render_full_scan}
