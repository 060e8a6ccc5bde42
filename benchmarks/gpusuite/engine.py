"""Section 3, ``engine``: the depthwise 21^3 conv on the Rep3D stage shapes, every path and precision, and the
CUDA auto rule refitted from the table."""


import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import calibrate_auto  # noqa: E402
import conv_backends  # noqa: E402

from gpusuite.common import PRECISIONS, Suite, _sync, sizes, tf32  # noqa: E402

# ---------------------------------------------------------------------------------------------------- 3. engine


def _native_probe(device: torch.device, dtype: torch.dtype, channels: int, spatial: int, kernel: int) -> dict:
    """Seconds of one native forward and forward+backward at a small shape (second call, without setup)."""
    x = torch.randn(1, channels, spatial, spatial, spatial, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(channels, 1, kernel, kernel, kernel, device=device, dtype=dtype, requires_grad=True)
    times = {}
    for _ in range(2):
        _sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            F.conv3d(x, w, padding=kernel // 2, groups=channels)
        _sync(device)
        times["fwd"] = time.perf_counter() - t
        t = time.perf_counter()
        y = F.conv3d(x, w, padding=kernel // 2, groups=channels)
        torch.autograd.grad(y, (x, w), torch.ones_like(y))
        _sync(device)
        times["fwd+bwd"] = time.perf_counter() - t
    return {"channels": channels, "spatial": spatial, **times}


def native_estimate_s(probe: dict, batch: int, channels: int, spatial: int, pass_: str) -> float:
    """Native cost scales with B * C * S^3 at a fixed full kernel (native never crops it)."""
    return probe[pass_] * batch * channels * spatial**3 / (probe["channels"] * probe["spatial"] ** 3)


def engine_rows_plan(sz: dict) -> list[dict]:
    """Rows in order of importance: the 96^3 patch first (all precisions), then 128^3."""
    plan = []
    for patch in sz["patches"]:
        for precision in PRECISIONS:
            for channels, spatial in conv_backends.stage_shapes(patch, sz["widths"]):
                for backward in (False, True):
                    plan.append(
                        dict(patch=patch, precision=precision, channels=channels, spatial=spatial, backward=backward)
                    )
    return plan


def section_engine(suite: Suite, deadline: float) -> dict:
    sz = sizes(suite.args.tiny)
    device = suite.device
    paths = {n: conv_backends.make_path(n) for n in conv_backends.PATHS}
    c_small, s_small = conv_backends.stage_shapes(min(sz["patches"]), sz["widths"])[-1]
    probes = {}
    for dtype in (torch.float32, torch.bfloat16):
        with tf32(False):
            probes[str(dtype)] = _native_probe(device, dtype, c_small, s_small, sz["kernel"])
    rows, skipped = [], []
    out = {
        "native_probe": probes,
        "kernel": sz["kernel"],
        "batch": sz["batch"],
        "repeats": sz["repeats"],
        "native_limit_s": suite.args.native_limit_s,
        "rows": rows,
        "rows_not_run": skipped,
        "peers": {p: ("installed" if paths[p] else "not installed") for p in ("torch-fftconv", "fft-conv-pytorch")},
    }
    for plan in engine_rows_plan(sz):
        if time.perf_counter() > deadline:
            skipped.append({**plan, "reason": "section budget spent"})
            continue
        dtype = torch.bfloat16 if plan["precision"] == "bf16" else torch.float32
        pass_ = "fwd+bwd" if plan["backward"] else "fwd"
        est = native_estimate_s(probes[str(dtype)], sz["batch"], plan["channels"], plan["spatial"], pass_)
        skip = {"native"} if est > suite.args.native_limit_s else set()
        t = time.perf_counter()
        with tf32(plan["precision"] == "fp32_tf32_on"):
            row = conv_backends.bench_row(
                plan["channels"],
                plan["spatial"],
                sz["batch"],
                sz["kernel"],
                plan["backward"],
                paths,
                device=device,
                dtype=dtype,
                autocast=False,
                repeats=sz["repeats"],
                skip=skip,
                slow_ms=suite.args.native_limit_s * 1e3,
            )
        row.update(
            patch=plan["patch"],
            precision=plan["precision"],
            dtype=str(dtype).replace("torch.", ""),
            native_estimate_s=est,
            row_s=time.perf_counter() - t,
        )
        if skip:
            row["status"]["native"] = f"skipped (probe estimates {est:.1f} s per call > --native-limit-s)"
        rows.append(row)
        print(
            f"   {plan['precision']} {plan['patch']}³ {plan['channels']}@{plan['spatial']}³ {pass_}: "
            + ", ".join(f"{n} {v:.2f}" for n, v in row["ms"].items())
            + f" ms [auto→{row['auto_choice']}]",
            flush=True,
        )
        suite.results["sections"]["engine"].update(out)
        suite.save()
    (suite.out / "engine_table.json").write_text(
        json.dumps({"environment": suite.results["environment"], "rows": rows}, indent=1)
    )
    md = [
        f"## {p}\n\n" + conv_backends.markdown([r for r in rows if r["precision"] == p])
        for p in PRECISIONS
        if any(r["precision"] == p for r in rows)
    ]
    (suite.out / "engine_table.md").write_text("\n\n".join(md) + "\n")
    fit = calibrate_auto.fit_cuda_rule(rows)
    (suite.out / "cuda_rule_fit.json").write_text(json.dumps(fit, indent=1))
    out["cuda_rule_fit"] = {k: v for k, v in fit.items() if k != "rows"}
    if skipped:
        out["status"], out["reason"] = "partial", f"{len(skipped)} rows not run: section budget spent"
    return out


