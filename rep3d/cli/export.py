"""``rep3d export``: write a deployable, verified copy of a model (ONNX, TorchScript, torch.export, MONAI bundle)."""

from __future__ import annotations

import argparse
import sys

EXAMPLE = "rep3d export rep3d_tiny.phantom --format onnx -o tiny.onnx"
# The library's constants (rep3d.export.FORMATS, DYNAMIC_AXES, ONNX_OPSET; rep3d.layers.depthwise.BACKENDS), repeated
# so that `rep3d export --help` loads no torch; tests/test_cli_help.py checks that they agree.
FORMATS = ("onnx", "torchscript", "exported-program", "monai-bundle")
DYNAMIC_AXES = ("batch", "spatial")
ONNX_OPSET = 18
BACKENDS = ("auto", "direct", "fft")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".ts", "exported-program": ".pt2", "monai-bundle": ""}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("model", metavar="MODEL",
                       help="registered name (rep3d_tiny.phantom), local-dir:RUN_FOLDER or hf-hub:org/name")
    model.add_argument("--checkpoint", metavar="FILE",
                       help="load these weights instead of the pretrained ones (default: the pretrained ones)")
    graph = parser.add_argument_group("graph")
    graph.add_argument("--roi", type=int, nargs=3, metavar=("D", "H", "W"),
                       help="example input size (default: the model cfg's roi_size)")
    graph.add_argument("--dynamic", default="", metavar="AXES",
                       help=f"comma-separated dynamic axes among {', '.join(DYNAMIC_AXES)} (onnx, exported-program; "
                            "TorchScript is always dynamic); dynamic axes use the direct conv engine (default: none, "
                            "static shapes)")
    graph.add_argument("--backend", choices=BACKENDS,
                       help="large-kernel conv engine in the graph (default: the model's, usually auto)")
    graph.add_argument("--opset", type=int, default=ONNX_OPSET, help="ONNX opset, >= 17")
    output = parser.add_argument_group("output")
    output.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    output.add_argument("-o", "--output", required=True, metavar="OUT",
                        help=f"output file ({', '.join(f'{k}: *{v}' for k, v in SUFFIXES.items() if v)}) or, for "
                             "monai-bundle, a folder")
    output.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export at OUT, never a file rep3d did not write nor the model's own "
                             "files (default: refuse)")


def check_export_arguments(args: argparse.Namespace, dynamic: tuple[str, ...]) -> None:
    """Refuse, before the model is built, what :func:`rep3d.export.export_model` would refuse after it."""
    from rep3d.errors import Rep3DValueError
    from rep3d.outputs import check_file_output, check_folder_output, model_source_files

    if args.backend == "fft" and "spatial" in dynamic and args.format in ("onnx", "exported-program"):
        raise Rep3DValueError("--backend fft cannot be exported with --dynamic spatial: the FFT graph depends on the "
                              "volume size; drop --backend fft (dynamic shapes use the direct engine) or drop "
                              "--dynamic spatial")
    if args.roi is not None and any(r < 1 for r in args.roi):
        raise Rep3DValueError(f"--roi must be three positive sizes, got {args.roi}")
    reads = model_source_files(args.model, args.checkpoint)
    if args.format == "monai-bundle":
        check_folder_output(args.output, overwrite=args.overwrite, reads=reads)
    else:
        check_file_output(args.output, overwrite=args.overwrite, reads=reads)


def run(args: argparse.Namespace) -> int:
    from rep3d.builder import create_model
    from rep3d.errors import Rep3DError
    from rep3d.export import export_model, parse_dynamic, require_format
    from rep3d.outputs import model_source_files

    def fail(message: str) -> int:
        print(f"rep3d export: error: {message}", file=sys.stderr)
        return 1

    try:
        dynamic = parse_dynamic(args.dynamic)
        require_format(args.format)  # a missing extra is one line, before the model is built
        check_export_arguments(args, dynamic)
    except Rep3DError as err:
        return fail(str(err))
    try:
        model = create_model(args.model, pretrained=not args.checkpoint, checkpoint_path=args.checkpoint)
    except Exception as err:  # noqa: BLE001 - report and stop: nothing can be exported without a model
        return fail(f"cannot build {args.model}: {type(err).__name__}: {err}")
    try:
        report = export_model(model, args.format, args.output, roi=args.roi, dynamic=dynamic, backend=args.backend,
                              opset=args.opset, overwrite=args.overwrite,
                              reads=model_source_files(args.model, args.checkpoint))
    except Rep3DError as err:
        return fail(str(err))
    if report.folded:
        print(f"rep3d export: {args.model} is in training form: folded it (mask, small branch, BatchNorm -> one "
              "depthwise conv per block) before exporting")
    print(report.summary())
    return 0
