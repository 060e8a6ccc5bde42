"""Fold a rep3d model, export it to ONNX and a torch.export program, and serve the ONNX file over HTTP without rep3d.

What it shows:

1. ``rep3d.reparameterize_model``: masks and BatchNorms folded into plain depthwise convs (outputs checked);
2. ``rep3d.export.export_model``: the folded model written as ONNX and as a ``torch.export`` program (``.pt2``),
   both at a static ROI (the FFT layers become ONNX ``DFT`` ops), each loaded back in its own runtime and verified
   by rep3d before it is kept; a small ``model.json`` beside them says what the model expects (spacing, intensity
   window, ROI, classes). (``"torchscript"`` and ``"monai-bundle"`` are the other formats; recent PyTorch, 2.14
   here, warns that TorchScript is deprecated.)
3. a segmentation service that needs only onnxruntime, nibabel, numpy and MONAI's sliding window -- no rep3d: a
   ``POST /segment`` with a NIfTI volume answers with the label map as NIfTI (same shape, same affine; the body's
   bounding box segmented, as rep3d's training and Predictor do, the air around it background), and refuses
   (HTTP 422, with the reason) a volume whose voxel spacing is not the model's instead of segmenting it wrongly;
4. a client: it sends a SYNTHETIC phantom (``rep3d.data.make_phantom``) to the server running on localhost, saves the
   answer, and checks it against PyTorch: the same sliding window with the eager folded model (max abs difference
   of the stitched logits, voxel agreement of the labels), the ``.pt2`` program on one window, and Dice against the
   phantom's ground truth.

Run (about 30 s on one CPU core at the defaults)::

    python examples/export_and_serve.py --out-dir serve_demo
    python examples/export_and_serve.py --out-dir serve_demo --model local-dir:runs/my_run --overwrite
    python examples/export_and_serve.py --out-dir /tmp/serve --smoke      # the tiny run the tests use

Exported files are only replaced with ``--overwrite``. The default model is the bundled ``rep3d_tiny.phantom``
(trained on SYNTHETIC phantoms only).
"""

from __future__ import annotations

import argparse
import gzip
import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

# ------------------------------------------------------------------------------------------------------------------
# the service: onnxruntime + nibabel + MONAI's sliding window, no rep3d import


def sliding_logits(run, x: torch.Tensor, roi: tuple[int, ...], overlap: float) -> torch.Tensor:
    """Logits of a preprocessed volume ``[1, C, X, Y, Z]``: ``run`` (windows ``[1, C, *roi]`` -> logits) slid over it
    with Gaussian blending (MONAI)."""
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(x, tuple(roi), sw_batch_size=1, predictor=run, overlap=overlap, mode="gaussian")


def body_box(x: torch.Tensor) -> tuple[slice, ...]:
    """The box around the voxels above the window's floor (the body) of ``x [1, C, X, Y, Z]``: the field of view the
    model was trained on (rep3d's training crops to it; ``rep3d.inference.foreground_box`` is the same rule). A
    large-kernel model uses the volume's extent as context, so segmenting the air around the body costs Dice."""
    inside = (x[0] > 0).any(0)
    if not inside.any():
        return tuple(slice(0, n) for n in inside.shape)
    hits = inside.nonzero()
    lo, hi = hits.min(0).values, hits.max(0).values + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


class RequestError(ValueError):
    """A request the service refuses; the message goes back to the client."""


class SegmentationService:
    """Segments NIfTI volumes with an exported ONNX model described by its ``model.json``."""

    def __init__(self, onnx_path: Path, meta_path: Path) -> None:
        import onnxruntime as ort

        self.meta = json.loads(meta_path.read_text())
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, window: torch.Tensor) -> torch.Tensor:
        """One window ``[1, C, *roi]`` -> logits ``[1, K, *roi]`` through onnxruntime."""
        return torch.from_numpy(self.session.run(None, {self.input_name: window.numpy()})[0])

    def preprocess(self, img: nib.Nifti1Image) -> torch.Tensor:
        """RAS, spacing checked against the model's, intensity window to [0, 1]: ``[1, 1, X, Y, Z]``."""
        ras = nib.as_closest_canonical(img)
        zooms = np.asarray(ras.header.get_zooms()[:3], dtype=float)
        spacing = np.asarray(self.meta["spacing"], dtype=float)
        if not np.allclose(zooms, spacing, rtol=1e-3):
            raise RequestError(f"voxel spacing {zooms.round(4).tolist()} mm (RAS) differs from the model's "
                               f"{spacing.tolist()}; resample the volume to the model's spacing first")
        data = np.ascontiguousarray(ras.dataobj, dtype=np.float32)
        lo, hi = self.meta["intensity_window"]
        return torch.from_numpy(np.clip((data - lo) / (hi - lo), 0.0, 1.0))[None, None]

    def segment(self, body: bytes, overlap: float = 0.25) -> bytes:
        """NIfTI bytes (``.nii`` or ``.nii.gz``) -> label map as ``.nii.gz`` bytes on the input's grid."""
        try:
            img = nib.Nifti1Image.from_bytes(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)
        except Exception as err:  # nibabel raises several types for a body that is not NIfTI
            raise RequestError(f"the body is not a NIfTI-1 volume ({type(err).__name__}: {err})") from err
        if len(img.shape) != 3:
            raise RequestError(f"expected a 3-D volume, got shape {img.shape}")
        x = self.preprocess(img)
        box = body_box(x)
        with torch.no_grad():
            logits = sliding_logits(self.logits, x[(..., *box)], self.meta["roi_size"], overlap)
        labels_ras = np.zeros(x.shape[2:], dtype=np.uint8)  # outside the body: background
        labels_ras[box] = logits[0].argmax(0).numpy()
        back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                               nib.orientations.io_orientation(img.affine))
        labels = np.ascontiguousarray(nib.orientations.apply_orientation(labels_ras, back))
        out = nib.Nifti1Image(labels, img.affine)
        out.set_qform(*img.get_qform(coded=True))
        out.set_sform(*img.get_sform(coded=True))
        out.header.set_intent("label")
        return gzip.compress(out.to_bytes())


def serve(service: SegmentationService) -> ThreadingHTTPServer:
    """Start an HTTP server on a free localhost port in a background thread; ``POST /segment`` segments."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path != "/segment":
                return self._reply(404, b"POST a NIfTI volume to /segment\n", "text/plain")
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                return self._reply(200, service.segment(body), "application/gzip")
            except RequestError as err:
                return self._reply(422, f"{err}\n".encode(), "text/plain")

        def _reply(self, status: int, payload: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:  # keep the example's output readable
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def post(url: str, body: bytes) -> tuple[int, bytes]:
    """``(HTTP status, response body)`` of a POST."""
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/gzip"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


# ------------------------------------------------------------------------------------------------------------------
# export, then a client that checks the service against PyTorch


def main(argv: list[str] | None = None) -> None:
    import rep3d
    from rep3d.data import make_phantom, save_nifti
    from rep3d.export import export_model
    from rep3d.metrics import dice_per_class, mean_dice

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--model", default="rep3d_tiny.phantom", help="any name rep3d.create_model knows")
    parser.add_argument("--roi", type=int, nargs=3, help="export / sliding-window size (default: the model's ROI)")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 96, 80), help="the request phantom's size")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier exported files")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for a quick check (as in the tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.roi, args.shape = (32, 32, 32), (48, 48, 40)
    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    # ---- fold
    model = rep3d.create_model(args.model, pretrained=True).eval()
    deployed = rep3d.reparameterize_model(model)
    roi = tuple(args.roi or deployed.pretrained_cfg["roi_size"])
    probe = torch.randn(1, 1, *roi, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fold_diff = float((deployed(probe) - model(probe)).abs().max())
    print(f"folded {args.model}: deploy vs train max abs diff {fold_diff:.3e}")

    # ---- export (each file is reloaded in its own runtime and verified before it is kept)
    onnx_path, pt2_path = args.out_dir / "model.onnx", args.out_dir / "model.pt2"
    for fmt, path in (("onnx", onnx_path), ("exported-program", pt2_path)):
        t0 = time.perf_counter()
        report = export_model(deployed, fmt, path, roi=roi, overwrite=args.overwrite)
        print(f"exported {fmt} in {time.perf_counter() - t0:.1f} s: {path} ({path.stat().st_size / 1e6:.1f} MB), "
              f"verified max abs error {report.max_abs_error:.3e}")
    cfg = deployed.pretrained_cfg
    meta = {"model": args.model, "roi_size": list(roi), "spacing": list(cfg["spacing"]),
            "intensity_window": list(cfg["intensity_window"]), "orientation": "RAS",
            "class_names": list(cfg.get("class_names") or [])}
    (args.out_dir / "model.json").write_text(json.dumps(meta, indent=2) + "\n")

    # ---- serve the ONNX file on localhost, send it a SYNTHETIC phantom
    service = SegmentationService(onnx_path, args.out_dir / "model.json")
    server = serve(service)
    url = f"http://127.0.0.1:{server.server_address[1]}/segment"
    case = make_phantom(11, tuple(args.shape), spacing=tuple(cfg["spacing"]))
    request_path = args.out_dir / "request.nii.gz"
    save_nifti(request_path, case.image, case.affine)
    t0 = time.perf_counter()
    status, body = post(url, request_path.read_bytes())
    if status != 200:
        raise SystemExit(f"the server answered {status}: {body.decode(errors='replace')}")
    answer_path = args.out_dir / "request_seg.nii.gz"
    answer_path.write_bytes(body)
    answer = nib.load(str(answer_path))
    labels = np.asarray(answer.dataobj).astype(np.int64)
    print(f"POST {url}: {status} in {time.perf_counter() - t0:.1f} s, label map {answer.shape} "
          f"(input {case.image.shape}), same affine: {np.allclose(answer.affine, case.affine)}; saved {answer_path}")

    # a volume at another spacing is refused, not segmented wrongly
    wrong = args.out_dir / "wrong_spacing.nii.gz"
    save_nifti(wrong, case.image, np.diag([1.0, 1.0, 1.0, 1.0]))
    status_wrong, reason = post(url, wrong.read_bytes())
    print(f"POST a 1 mm volume: {status_wrong} {reason.decode().strip()}")
    server.shutdown()
    server.server_close()

    # ---- the same request answered by PyTorch: the eager folded model, then the torch.export program
    full = service.preprocess(nib.load(str(request_path)))
    x = full[(..., *body_box(full))]  # the service's crop
    with torch.no_grad():
        ort_logits = sliding_logits(service.logits, x, roi, args.overlap)
        torch_logits = sliding_logits(deployed, x, roi, args.overlap)
        window = full[..., :roi[0], :roi[1], :roi[2]]
        if tuple(window.shape[2:]) == roi:
            program = torch.export.load(str(pt2_path)).module()
            pt2_diff = float((program(window) - deployed(window)).abs().max())
            print(f"torch.export program vs PyTorch on one {roi} window: max abs diff {pt2_diff:.3e}")
    diff = float((ort_logits - torch_logits).abs().max())
    agreement = float((ort_logits.argmax(1) == torch_logits.argmax(1)).float().mean())
    span = float(torch_logits.max() - torch_logits.min())
    print(f"onnxruntime vs PyTorch, whole volume: max abs logit diff {diff:.3e} ({diff / span:.2e} of the logit "
          f"range {span:.3g}), label agreement {agreement:.4f}")
    names = meta["class_names"] or [f"class_{i}" for i in range(deployed.num_classes)]
    dice = dice_per_class(torch.from_numpy(labels), torch.from_numpy(case.label.astype(np.int64)), len(names))
    print(f"served labels vs the phantom's ground truth: mean Dice {mean_dice(dice):.4f} (SYNTHETIC)")


if __name__ == "__main__":
    main()
