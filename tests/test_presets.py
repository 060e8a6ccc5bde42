"""One preset table: the paper's recipe written once in rep3d/presets.py and read by model cfgs, recipes, the
Predictor and the phantom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from torch import nn

from rep3d.errors import Rep3DValueError
from rep3d.inference import Predictor
from rep3d.models.registry import VOLUME_METADATA
from rep3d.presets import DEFAULT_ROI, PAPER_CT, PHANTOM, PRESETS, get_preset
from rep3d.train import build_config


def test_paper_ct_preset_is_the_papers_amos_ct_recipe():
    assert PAPER_CT.spacing == (1.5, 1.5, 2.0) and PAPER_CT.intensity_window == (-125.0, 275.0)
    assert PAPER_CT.orientation == "RAS" and PAPER_CT.roi_size == DEFAULT_ROI == (96, 96, 96)
    assert PRESETS["amos_mri"].intensity_window == (0.0, 1000.0)
    assert PRESETS["msd_hepatic_vessel"].intensity_window == (0.0, 230.0)


def test_model_cfgs_recipes_and_predictor_read_the_preset_table():
    for key, value in PAPER_CT.model_cfg().items():
        assert VOLUME_METADATA["rep3d_base"][key] == value, key
        assert VOLUME_METADATA["uxnet3d_base"][key] == value, key
    for key, value in PHANTOM.model_cfg().items():
        assert VOLUME_METADATA["rep3d_tiny.phantom"][key] == value, key
    for name, preset in PRESETS.items():
        cfg = build_config("paper", name)
        assert (cfg.spacing, cfg.intensity_window, cfg.orientation) == (
            preset.spacing, preset.intensity_window, preset.orientation)
    phantom_recipe = build_config("phantom")
    assert phantom_recipe.roi_size == PHANTOM.roi_size and phantom_recipe.spacing == PHANTOM.spacing

    class Bare(nn.Module):
        pretrained_cfg = {"modality": "CT"}

    predictor = Predictor(Bare(), device="cpu")
    assert predictor.roi_size == DEFAULT_ROI and predictor.intensity_window == PAPER_CT.intensity_window


def test_unknown_preset_names_the_choices():
    with pytest.raises(Rep3DValueError, match="amos_ct"):
        get_preset("amos")
    with pytest.raises(Rep3DValueError, match="amos_ct"):
        build_config("paper", "amos")


def test_presets_module_sits_at_the_bottom_of_the_layer_order():
    tree = ast.parse((Path(__file__).resolve().parents[1] / "rep3d" / "presets.py").read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {m for m in modules if m.startswith("rep3d")} <= {"rep3d.errors"}
