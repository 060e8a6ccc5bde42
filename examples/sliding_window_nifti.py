"""Segment a NIfTI volume with a rep3d model and your own pre- and post-processing around MONAI's sliding window.

What it shows, step by step (all in this file, with nibabel, numpy and torch):

1. input: a NIfTI path (``--input``), or a SYNTHETIC phantom written here (``rep3d.data.make_phantom``) in LPS
   orientation -- the axis order many DICOM converters write -- so that the reorientation below has work to do;
2. pre-processing: reorient to RAS (``nibabel.as_closest_canonical``), resample to the model's voxel spacing
   (trilinear ``torch.nn.functional.interpolate``), map the model's CT window to [0, 1] -- the spacing and window
   are read from ``model.pretrained_cfg``, i.e. what the weights were trained with -- then crop to the body
   (``rep3d.inference.foreground_box``: voxels above the window's floor), the field of view rep3d's training sees:
   large kernels use the volume's extent as context, so the air around a body changes their predictions;
3. ``monai.inferers.sliding_window_inference`` with the model (Gaussian blending of overlapping windows) on the
   crop; everything outside it is background;
4. post-processing: softmax probabilities resampled back onto the input grid, argmax, then the largest connected
   component of every class (a small torch implementation; removes isolated false-positive islands);
5. the label map saved as ``<name>_seg.nii.gz`` with the input's own axis order, affine, qform and sform, so it
   overlays the scan in any viewer (never over an existing file unless ``--overwrite``);
6. a comparison with ``rep3d.Predictor``, which does steps 2-4 its own way (MONAI transforms, no connected
   components): voxel agreement, and Dice of both against the phantom's ground truth.

Run (about 15 s on one CPU core at the defaults)::

    python examples/sliding_window_nifti.py --out-dir sw_demo
    python examples/sliding_window_nifti.py --input scan.nii.gz --out-dir out/ --model local-dir:runs/my_run
    python examples/sliding_window_nifti.py --out-dir /tmp/sw --smoke      # the tiny run the tests use

The default model is the bundled ``rep3d_tiny.phantom`` (trained on SYNTHETIC phantoms only: use it to check the
pipeline, not to read real scans).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

import rep3d
from rep3d.data import make_phantom, save_nifti
from rep3d.data.phantom import DEFAULT_SHAPE, DEFAULT_SPACING
from rep3d.inference import foreground_box
from rep3d.metrics import dice_per_class, mean_dice


def reorient(data: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """``data [X, Y, Z]`` with voxel->world ``affine`` re-laid out in the axis codes ``codes``; the new affine."""
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(codes))
    return apply_orientation(data, transform), affine @ inv_ornt_aff(transform, data.shape)


def write_demo_phantom(folder: Path, shape: tuple[int, int, int], seed: int) -> tuple[Path, Path]:
    """A SYNTHETIC phantom (image in HU, label) as NIfTI in LPS orientation; returns the two paths. The voxel size
    keeps the default field of view, so the anatomy has the size the bundled weights were trained on."""
    spacing = tuple(s * d / n for s, d, n in zip(DEFAULT_SPACING, DEFAULT_SHAPE, shape))
    case = make_phantom(seed, shape, spacing)
    image, affine = reorient(case.image, case.affine, "LPS")
    label, _ = reorient(case.label, case.affine, "LPS")
    paths = folder / "phantom.nii.gz", folder / "phantom_label.nii.gz"
    save_nifti(paths[0], np.ascontiguousarray(image), affine)
    save_nifti(paths[1], np.ascontiguousarray(label), affine)
    return paths


def preprocess(img: nib.Nifti1Image, spacing: tuple[float, ...], window: tuple[float, float]) -> torch.Tensor:
    """NIfTI -> ``[1, 1, X, Y, Z]`` float32 in RAS at ``spacing`` mm with intensities windowed to [0, 1]."""
    ras = nib.as_closest_canonical(img)
    data = torch.from_numpy(np.ascontiguousarray(ras.dataobj, dtype=np.float32))
    zooms = ras.header.get_zooms()[:3]
    size = [max(1, round(n * z / s)) for n, z, s in zip(data.shape, zooms, spacing)]
    x = F.interpolate(data[None, None], size=size, mode="trilinear", align_corners=False)
    lo, hi = window
    return ((x - lo) / (hi - lo)).clamp_(0.0, 1.0)


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """Largest 26-connected component of a boolean ``[X, Y, Z]`` mask (label propagation by 3x3x3 max-pooling).

    Short and dependency-free, not fast: the loop runs once per voxel of the longest path inside a component. For
    large volumes use ``scipy.ndimage.label`` or ``cc3d``."""
    if not mask.any():
        return mask
    nz = mask.nonzero()
    lo, hi = nz.min(0).values, nz.max(0).values + 1  # work inside the bounding box only
    box = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    ids = torch.arange(1, box.numel() + 1, dtype=torch.float64).view(box.shape) * box  # exact integers in float64
    while True:  # every voxel takes the largest id in its neighbourhood, inside the mask, until nothing changes
        grown = F.max_pool3d(ids[None, None], 3, stride=1, padding=1)[0, 0] * box
        if torch.equal(grown, ids):
            break
        ids = grown
    values, counts = ids[box].unique(return_counts=True)
    out = torch.zeros_like(mask)
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = ids == values[counts.argmax()]
    return out


def postprocess(probs: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, int]:
    """``probs [1, K, *model grid]`` -> labels ``[X, Y, Z]`` (RAS input grid) with one connected component per class,
    and the number of voxels the component filter set to background."""
    probs = F.interpolate(probs, size=shape, mode="trilinear", align_corners=False)
    labels = probs[0].argmax(0)
    out = torch.zeros_like(labels)
    for c in range(1, probs.shape[1]):
        out[largest_component(labels == c)] = c
    return out, int((out != labels).sum())


def segment(model: torch.nn.Module, path: Path, roi: tuple[int, int, int],
            overlap: float) -> tuple[nib.Nifti1Image, int]:
    """The whole pipeline on one file: the label map as a NIfTI image on the input's grid, and the number of voxels
    the connected-component filter removed."""
    cfg = model.pretrained_cfg
    img = nib.load(str(path))
    x = preprocess(img, tuple(cfg["spacing"]), tuple(cfg["intensity_window"]))
    box = foreground_box(x[0]) or tuple(slice(0, n) for n in x.shape[2:])  # the body, as training crops
    with torch.no_grad():
        logits = sliding_window_inference(x[(..., *box)], roi, sw_batch_size=1, predictor=model, overlap=overlap,
                                          mode="gaussian")
    probs = torch.zeros((1, logits.shape[1], *x.shape[2:]))
    probs[:, 0] = 1.0  # outside the body: background
    probs[(slice(None), slice(None), *box)] = torch.softmax(logits, 1)
    canonical_shape = nib.as_closest_canonical(img).shape[:3]
    labels_ras, removed = postprocess(probs, canonical_shape)
    labels_ras = labels_ras.numpy().astype(np.uint8)
    # back from RAS to the input's own axis order: the saved map overlays the input voxel for voxel
    back = ornt_transform(axcodes2ornt("RAS"), io_orientation(img.affine))
    labels = np.ascontiguousarray(apply_orientation(labels_ras, back))
    out = nib.Nifti1Image(labels, img.affine)
    out.set_qform(*img.get_qform(coded=True))
    out.set_sform(*img.get_sform(coded=True))
    out.header.set_xyzt_units(*img.header.get_xyzt_units())
    out.header.set_intent("label")
    return out, removed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, help="a NIfTI volume (default: write a SYNTHETIC phantom)")
    parser.add_argument("--label", type=Path, help="ground truth for --input, to print Dice")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--model", default="rep3d_tiny.phantom", help="any name rep3d.create_model knows")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 96, 80), help="demo phantom size (voxels)")
    parser.add_argument("--roi", type=int, nargs=3, help="sliding-window size (default: the model's ROI)")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=7, help="demo phantom seed")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing <name>_seg.nii.gz")
    parser.add_argument("--no-predictor", action="store_true", help="skip the comparison with rep3d.Predictor")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for a quick check (as in the tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.shape = (64, 64, 48)
    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    if args.input is None:
        args.input, args.label = write_demo_phantom(args.out_dir, tuple(args.shape), args.seed)
        print(f"wrote a SYNTHETIC phantom {tuple(args.shape)} in LPS orientation to {args.input}")
    name = args.input.name.removesuffix(".gz").removesuffix(".nii")
    output = args.out_dir / f"{name}_seg.nii.gz"
    if output.exists() and not args.overwrite:
        raise SystemExit(f"{output} exists; pass --overwrite to replace it")

    model = rep3d.create_model(args.model, pretrained=True).eval()
    roi = tuple(args.roi or model.pretrained_cfg["roi_size"])
    t0 = time.perf_counter()
    seg, removed = segment(model, args.input, roi, args.overlap)
    nib.save(seg, str(output))
    img = nib.load(str(args.input))
    print(f"segmented {args.input} {img.shape} ({''.join(nib.aff2axcodes(img.affine))}) with {args.model}: "
          f"{time.perf_counter() - t0:.1f} s, sliding window {roi}, overlap {args.overlap}; largest-component "
          f"filter removed {removed} voxels")
    saved = nib.load(str(output))
    same_grid = saved.shape == img.shape[:3] and np.allclose(saved.affine, img.affine)
    print(f"saved {output}: shape {saved.shape}, dtype {saved.get_data_dtype()}, input affine kept: {same_grid}")

    ours = np.asarray(saved.dataobj)
    names = model.pretrained_cfg.get("class_names") or [f"class_{i}" for i in range(model.num_classes)]
    truth = np.asarray(nib.load(str(args.label)).dataobj).astype(np.int64) if args.label else None
    if truth is not None:
        dice = dice_per_class(torch.from_numpy(ours.astype(np.int64)), torch.from_numpy(truth), len(names))
        print("Dice (this pipeline): " + ", ".join(f"{n} {d:.3f}" for n, d in zip(names[1:], dice)))
        print(f"mean Dice (this pipeline): {mean_dice(dice):.4f}")
    if not args.no_predictor:
        prediction = rep3d.Predictor(model, roi_size=roi, overlap=args.overlap, device="cpu")(str(args.input))
        agreement = float((prediction.label == ours).mean())
        print(f"rep3d.Predictor on the same file: voxel agreement with this pipeline {agreement:.4f}")
        if truth is not None:
            dice = dice_per_class(torch.from_numpy(prediction.label.astype(np.int64)), torch.from_numpy(truth),
                                  len(names))
            print(f"mean Dice (rep3d.Predictor): {mean_dice(dice):.4f}")


if __name__ == "__main__":
    main()
