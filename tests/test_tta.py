"""Test-time augmentation uses only the flips the weights were trained with: recorded by training in the model's
config, read by the Predictor, refused when absent or empty (the bundled phantom weights were trained without flips)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import rep3d
from rep3d.data import write_msd_dataset
from rep3d.errors import Rep3DValueError
from rep3d.inference import Predictor
from rep3d.train import build_config, train
from rep3d.train.data import FLIP_AXES
from tests.standins import SideOracle


def side_oracle(cfg):
    model = SideOracle()
    if cfg is not None:
        model.pretrained_cfg = cfg
    return model


def predictor(model, **kwargs) -> Predictor:
    return Predictor(model, roi_size=16, spacing=None, intensity_window=None, device="cpu", **kwargs)


def test_tta_is_refused_for_the_bundled_weights_trained_without_flips():
    model = rep3d.create_model("rep3d_tiny.phantom", pretrained=True)
    assert tuple(model.pretrained_cfg["tta_flip_axes"]) == ()
    with pytest.raises(Rep3DValueError, match=r"rep3d_tiny.phantom was trained without flips .*run without --tta"):
        Predictor(model, tta=True, device="cpu")
    Predictor(model, device="cpu")  # without TTA it runs


def test_tta_is_refused_for_a_model_whose_config_does_not_record_its_flips():
    with pytest.raises(Rep3DValueError, match="does not record which flips its training used"):
        predictor(side_oracle(None), tta=True)


def test_tta_flips_only_the_recorded_axes():
    model = side_oracle({"tta_flip_axes": [1]})
    image = np.zeros((1, 16, 16, 16), np.float32)
    image[0, 2:6, 4:12, 4:12] = 1.0
    pred = predictor(model, tta=True)
    assert pred.tta_axes == (1,)
    plain = predictor(side_oracle(None))(image)
    assert np.array_equal(pred(image).label, plain.label) and model.calls == 2  # identity + the one recorded flip
    with pytest.raises(Rep3DValueError, match=r"trained with flips along axes \(1,\) only"):
        predictor(side_oracle({"tta_flip_axes": [1]}), tta=True, tta_axes=(0, 1))


def test_training_records_its_flip_axes_and_the_card_states_them(tmp_path):
    assert FLIP_AXES == ()  # the recipe's augmentation flips nothing: left and right organs differ by position
    data = write_msd_dataset(tmp_path / "data", num_train=2, num_test=0, seed=1, shape=(32, 32, 24))
    cfg = build_config("phantom", data=str(data), out=str(tmp_path / "run"), iterations=1, roi_size=(32, 32, 32),
                       model_args={"kernel_size": 3}, workers=0, val_every=1, checkpoint_every=1, warmup_steps=1)
    train(cfg)
    config = json.loads((tmp_path / "run/config.json").read_text())
    assert config["rep3d"]["metadata"]["tta_flip_axes"] == []
    assert "| test-time flips (TTA) | none: trained without flips, so `--tta` is refused |" in (
        tmp_path / "run/README.md").read_text()
    loaded = rep3d.create_model(f"local-dir:{tmp_path / 'run'}", pretrained=True)
    with pytest.raises(Rep3DValueError, match="trained without flips"):
        Predictor(loaded, tta=True, device="cpu")
