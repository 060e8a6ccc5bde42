"""The bundled synthetic weights and `rep3d demo`, the README's main job: offline, on the CPU, well under 2 minutes."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import torch

import rep3d
from rep3d.hub import bundled_weights_dir
from rep3d.models.registry import VOLUME_METADATA

ROOT = Path(__file__).resolve().parents[1]


def test_phantom_tag_is_registered_with_small_verified_weights():
    assert "rep3d_tiny.phantom" in rep3d.list_models(pretrained=True)
    meta = VOLUME_METADATA["rep3d_tiny.phantom"]
    path = bundled_weights_dir() / meta["bundled"]
    assert path.stat().st_size <= 10e6
    assert len(meta["sha256"]) == 64 and meta["synthetic"] is True
    model = rep3d.create_model("rep3d_tiny.phantom", pretrained=True)  # sha256-checked load
    assert model.num_classes == len(meta["class_names"]) == 9
    assert model.pretrained_cfg["class_names"][3:5] == ["right_kidney", "left_kidney"]
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 1, 64, 64, 64)).shape == (1, 9, 64, 64, 64)


def test_demo_segments_a_new_phantom_offline_with_good_dice(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "rep3d", "demo", "--out", str(tmp_path / "demo")], env=env,
                            capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-2000:]
    assert elapsed < 120
    out = result.stdout
    assert "SYNTHETIC" in out
    mean = float(re.search(r"^mean\s+([0-9.]+)$", out, re.M).group(1))
    assert mean >= 0.85, out
    for kidney in ("right_kidney", "left_kidney"):
        assert float(re.search(rf"^{kidney}\s+([0-9.]+)$", out, re.M).group(1)) >= 0.8, out
    image = nib.load(tmp_path / "demo" / "phantom_image.nii.gz")
    prediction = nib.load(tmp_path / "demo" / "prediction.nii.gz")
    assert prediction.shape == image.shape and (prediction.affine == image.affine).all()
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 10_000
    assert f"into {(tmp_path / 'demo').resolve()}/: phantom_image.nii.gz" in out  # says where it wrote
