"""``rep3d erf``: the effective receptive field of a model (:func:`rep3d.analysis.effective_receptive_field`) as a
PNG (orthogonal slices and radial profile) and a JSON of its summary numbers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rep3d.errors import Rep3DValueError
from rep3d.outputs import check_file_output, model_source_files, write_output, write_text_output

EXAMPLE = "rep3d erf rep3d_tiny.phantom -o erf/"
# rep3d.analysis.TARGETS, repeated so that `rep3d erf --help` loads no torch; tests/test_cli_help.py checks it
TARGETS = ("logits", "stage1", "stage2", "stage3", "stage4")
# rep3d.analysis.DEFINITIONS, repeated for the same reason
DEFINITIONS = ("rep3d", "replknet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="model name (rep3d_tiny, rep3d_tiny.phantom, local-dir:RUN, hf-hub:ORG/NAME)")
    parser.add_argument("--checkpoint", metavar="FILE", help="load these weights (default: the pretrained ones of a "
                        "tagged or saved model, else the random initialisation)")
    parser.add_argument("--random-init", action="store_true",
                        help="do not load any weights: an untrained model (default: off)")
    parser.add_argument("--data", metavar="DIR", help="MSD-layout dataset: inputs are seeded random crops of its "
                        "images on the model grid (default: standard-normal noise)")
    parser.add_argument("--target", default="logits", choices=TARGETS,
                        help="output whose central voxel is traced (default: logits)")
    parser.add_argument("--definition", default="rep3d", choices=DEFINITIONS,
                        help="rep3d (default): mean |gradient| of the central output, area ratios on the raw map; "
                        "replknet: RepLKNet's code (relu of the central output and of the gradient, log10(1 + .), "
                        "area ratios of growing centred cubes) -- see the analysis guide")
    parser.add_argument("--n-samples", type=int, default=8, help="inputs averaged over (default 8)")
    parser.add_argument("--roi", type=int, nargs=3, metavar=("D", "H", "W"),
                        help="input size (default: the model cfg's roi_size)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output prefix: writes OUT.png and OUT.json (a folder: OUT/erf_<target>.*)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT.png / OUT.json of an earlier run (default: off)")


def write_png_output(path: Path, save, *, overwrite: bool, command: str) -> Path:
    """``save(tmp)`` a PNG to a temporary name next to ``path``, then install it as rep3d's output."""
    return write_output(path, save, overwrite=overwrite, command=command)


def output_paths(output: str, stem: str) -> tuple[Path, Path]:
    """``OUT.png`` / ``OUT.json`` for a prefix, or ``OUT/<stem>.png`` / ``.json`` for an existing folder or one
    ending in a slash."""
    out = Path(output)
    if output.endswith(("/", "\\")) or out.is_dir():
        return out / f"{stem}.png", out / f"{stem}.json"
    if out.suffix.lower() in (".png", ".json"):
        out = out.with_suffix("")
    return out.with_name(out.name + ".png"), out.with_name(out.name + ".json")


def check_prefix_outputs(args: argparse.Namespace, png: Path, js: Path) -> None:
    """Refuse, before the model is built, outputs that would replace a file rep3d did not write or one being read."""
    reads = model_source_files(args.model, getattr(args, "checkpoint", None))
    for path in (png, js):
        check_file_output(path, overwrite=getattr(args, "overwrite", False), reads=reads)


def load_model(args: argparse.Namespace):
    """``(model, weights)`` for ``MODEL``: pretrained weights where it has them (a tag, a saved folder, a Hub
    model), the ``--checkpoint``, or the random initialisation (a bare architecture name, ``--random-init``);
    ``weights`` says which, for the outputs."""
    from rep3d.builder import create_model

    name = args.model
    pretrained = not args.checkpoint and not args.random_init and ("." in name.split("/")[-1]
                                                                   or name.startswith(("local-dir:", "hf-hub:")))
    model = create_model(name, pretrained=pretrained, checkpoint_path=args.checkpoint)
    weights = f"checkpoint {args.checkpoint}" if args.checkpoint else "pretrained" if pretrained else \
        "random initialisation (untrained)"
    return model, weights


def run(args: argparse.Namespace) -> int:
    from rep3d.analysis import effective_receptive_field, msd_crops, random_inputs, save_erf_png
    from rep3d.inference import AUTO, Predictor

    if args.n_samples < 1:
        raise Rep3DValueError(f"--n-samples must be >= 1, got {args.n_samples}")
    if args.roi is not None and any(r < 1 for r in args.roi):
        raise Rep3DValueError(f"--roi must be three positive sizes, got {args.roi}")
    suffix = "" if args.definition == "rep3d" else f"_{args.definition}"
    png, js = output_paths(args.output, f"erf_{args.target}{suffix}")
    check_prefix_outputs(args, png, js)
    model, weights = load_model(args)
    # the Predictor resolves ROI, grid and intensity window from the model cfg exactly as rep3d predict does
    predictor = Predictor(model, roi_size=args.roi or AUTO, device=args.device)
    roi = list(predictor.roi_size)
    in_chans = predictor.in_chans or 1
    if args.data:
        inputs = msd_crops(args.data, roi, args.n_samples, seed=args.seed, spacing=predictor.spacing,
                           orientation=predictor.orientation, intensity_window=predictor.intensity_window,
                           in_chans=in_chans)
        source = f"crops of {args.data}"
    else:
        inputs = random_inputs((in_chans, *roi), args.n_samples, seed=args.seed)
        source = "standard-normal noise"
    result = effective_receptive_field(predictor.model, inputs, target=args.target, n_samples=args.n_samples,
                                       definition=args.definition)
    title = f"{args.model} ({weights}), {source}, roi {roi}"
    write_png_output(png, lambda tmp: save_erf_png(tmp, result, title=title),
                     overwrite=args.overwrite, command="rep3d erf")
    write_text_output(js, json.dumps({"model": args.model, "weights": weights, "inputs": source, "roi": roi,
                                      "seed": args.seed, **result.to_json()}, indent=2) + "\n",
                      overwrite=args.overwrite, command="rep3d erf")
    ratios = ", ".join(f"{float(t) * 100:g}%: {r:.4f}" for t, r in result.summary["area_ratio"].items())
    print(f"ERF ({args.definition} definition) of {args.target} of {args.model} ({weights}) over "
          f"{result.n_samples} inputs ({source}); "
          f"volume fraction holding {ratios}")
    print(f"wrote {png} and {js}")
    return 0
