"""Provenance: a model carries metadata of weights (class names, dataset, "synthetic", description, origin) only when
those weights were loaded into it. The bare architecture name means the architecture with the paper's CT preset;
a tag names weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rep3d
from rep3d.data import write_msd_dataset
from rep3d.presets import PAPER_CT, PHANTOM_CLASSES
from rep3d.train import Trainer, build_config

SMALL = dict(kernel_size=3)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def saved(model, folder: Path) -> tuple[dict, str]:
    rep3d.save_pretrained(model, folder)
    return json.loads((folder / "config.json").read_text()), (folder / "README.md").read_text()


def assert_no_phantom_claims(config: dict, card: str) -> None:
    meta = config["rep3d"]["metadata"]
    assert "origin" not in meta and not meta.get("synthetic") and "dataset" not in meta
    assert "description" not in config["pretrained_cfg"]
    assert "phantom" not in card.lower() and "synthetic" not in card.lower() and "liver" not in card


def test_bare_name_is_the_architecture_with_the_paper_ct_preset_not_the_default_tag(tmp_path):
    model = rep3d.create_model("rep3d_tiny", num_classes=3, **SMALL)
    cfg = model.pretrained_cfg
    assert cfg.get("tag") in (None, "") and "class_names" not in cfg and not cfg.get("synthetic")
    assert tuple(cfg["spacing"]) == PAPER_CT.spacing and tuple(cfg["intensity_window"]) == PAPER_CT.intensity_window
    config, card = saved(model, tmp_path / "out")
    assert_no_phantom_claims(config, card)
    assert "label_names" not in config and "class_names" not in config["rep3d"]["metadata"]
    assert card.splitlines()[card.splitlines().index("---", 1) + 2] == "# rep3d_tiny"


def test_a_tag_without_its_weights_carries_no_claims_about_them(tmp_path):
    model = rep3d.create_model("rep3d_tiny.phantom", **SMALL)  # pretrained=False: random weights
    for key in ("class_names", "dataset", "synthetic", "description"):
        assert not model.pretrained_cfg.get(key), key
    config, card = saved(model, tmp_path / "out")
    assert_no_phantom_claims(config, card)


def test_loaded_tag_weights_keep_their_metadata_and_origin(tmp_path):
    model = rep3d.create_model("rep3d_tiny.phantom", pretrained=True)
    config, card = saved(model, tmp_path / "out")
    meta = config["rep3d"]["metadata"]
    assert meta["origin"] == "rep3d_tiny.phantom" and meta["synthetic"] is True
    assert config["label_names"] == list(PHANTOM_CLASSES) and "Synthetic" in card


def test_bare_name_with_pretrained_true_loads_the_default_tag_as_timm_does():
    model = rep3d.create_model("rep3d_tiny", pretrained=True)
    assert model.pretrained_cfg["tag"] == "phantom" and model.pretrained_cfg["weights_source"]
    assert model.pretrained_cfg["class_names"] == list(PHANTOM_CLASSES)


def test_class_names_that_do_not_match_num_classes_are_dropped(tmp_path):
    model = rep3d.create_model("rep3d_tiny", num_classes=3, pretrained_cfg_overlay=dict(class_names=["bg", "a"]),
                               **SMALL)
    assert "class_names" not in model.pretrained_cfg
    model.pretrained_cfg["class_names"] = list(PHANTOM_CLASSES)  # set by hand, 9 names for 3 classes
    config, card = saved(model, tmp_path / "out")
    assert "label_names" not in config and "class_names" not in config["rep3d"]["metadata"]
    assert "## Classes" not in card
    named = rep3d.create_model("rep3d_tiny", num_classes=3, pretrained_cfg_overlay=dict(class_names=["bg", "a", "b"]),
                               **SMALL)
    config, _ = saved(named, tmp_path / "named")
    assert config["label_names"] == ["bg", "a", "b"]


def test_training_rep3d_tiny_on_a_users_dataset_does_not_publish_the_phantom_origin(tmp_path):
    data = write_msd_dataset(tmp_path / "data", num_train=2, num_test=0, seed=2, shape=(24, 24, 16))
    meta = json.loads((data / "dataset.json").read_text())
    meta.update(name="my-ct-study", description="our own CT scans", synthetic=False)
    (data / "dataset.json").write_text(json.dumps(meta))
    cfg = build_config("phantom", data=str(data), out=str(tmp_path / "run"), model="rep3d_tiny", iterations=1,
                       roi_size=(32, 32, 32), model_args=SMALL, workers=0, threads=1)
    trainer = Trainer(cfg)
    trainer.publish(trainer.model, 0.0)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    card = (tmp_path / "run" / "README.md").read_text()
    meta = config["rep3d"]["metadata"]
    assert "origin" not in meta and meta["dataset"] == "my-ct-study" and meta["synthetic"] is False
    assert "rep3d_tiny.phantom" not in card and "Synthetic" not in card and "SYNTHETIC" not in card
    assert config["pretrained_cfg"]["description"] == "our own CT scans"
