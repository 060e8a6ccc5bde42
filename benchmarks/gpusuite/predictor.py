"""Section 2, ``predictor``: the Predictor with the bundled phantom weights, stitching on the device and the CPU."""


import contextlib
import functools
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


import rep3d  # noqa: E402
from gpusuite.common import Suite, _sync, sizes  # noqa: E402

# ---------------------------------------------------------------------------------------------------- 2. predictor


@contextlib.contextmanager
def count_forwards(model: torch.nn.Module):
    """Counts ``model``'s forward calls inside the block (windows x batches of a sliding-window run): ``[n]``."""
    count = [0]
    handle = model.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    try:
        yield count
    finally:
        handle.remove()


@functools.lru_cache(maxsize=1)
def _phantom_volume(shape):
    """One synthetic volume (6 s to make at 256x256x160), shared by the predictor and model sections."""
    from rep3d.data.phantom import DEFAULT_SPACING, case_seed, make_phantom

    return make_phantom(case_seed(0, "test", 1000), tuple(shape), DEFAULT_SPACING)


def section_predictor(suite: Suite, deadline: float) -> dict:
    from rep3d.metrics import dice_per_class, mean_dice

    sz = sizes(suite.args.tiny)
    model = rep3d.create_model("rep3d_tiny.phantom", pretrained=True)
    vol = _phantom_volume(tuple(sz["phantom_shape"]))
    num_classes = model.num_classes
    out: dict = {
        "model": "rep3d_tiny.phantom (bundled weights, trained on synthetic phantoms)",
        "volume": list(sz["phantom_shape"]),
        "runs": {},
    }
    labels = {}
    for stitch in ("device", "cpu"):
        if time.perf_counter() > deadline:
            out["runs"][stitch] = {"status": "skipped", "reason": "section budget spent"}
            continue
        kwargs = {} if sz["predictor_roi"] is None else {"roi_size": sz["predictor_roi"]}
        predictor = rep3d.Predictor(
            model, device=suite.device, stitch_device=suite.device if stitch == "device" else "cpu", **kwargs
        )
        crop = tuple(slice(0, r) for r in predictor.roi_size)
        predictor(vol.image[(None, *crop)], vol.affine)  # warm-up on one window: cuDNN / FFT plans
        _sync(suite.device)
        t = time.perf_counter()
        with count_forwards(predictor.model) as windows:
            pred = predictor(vol.image[None], vol.affine)
        _sync(suite.device)
        seconds = time.perf_counter() - t
        labels[stitch] = pred.label
        dice = dice_per_class(
            torch.from_numpy(pred.label.astype("int64")), torch.from_numpy(vol.label.astype("int64")), num_classes
        )
        out["runs"][stitch] = {
            "seconds": seconds,
            "windows_forwarded": windows[0],
            "roi": list(predictor.roi_size),
            "mean_dice_vs_phantom_truth": mean_dice(dice),
        }
    if len(labels) == 2:
        same = float((labels["device"] == labels["cpu"]).mean())
        out["label_agreement_device_vs_cpu_stitching"] = same
        out["identical"] = bool(same == 1.0)
        if same < 0.999:
            out["status"], out["reason"] = "failed", f"device and CPU stitching agree on only {same:.4%} of voxels"
    return out


