"""One preset table: the paper's recipe written once in rep3d/presets.py and read by model cfgs, recipes, the
Predictor and the phantom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from torch import nn

from rep3d.configs.pretrained import PretrainedCfg
from rep3d.errors import Rep3DValueError
from rep3d.inference import Predictor
from rep3d.models.registry import resolve_cfg
from rep3d.presets import DEFAULT_ROI, PAPER_CT, PHANTOM, PHANTOM_CLASSES, PRESETS, get_preset
from rep3d.train import build_config


def test_paper_ct_preset_is_the_papers_amos_ct_recipe():
    assert PAPER_CT.spacing == (1.5, 1.5, 2.0) and PAPER_CT.intensity_window == (-125.0, 275.0)
    assert PAPER_CT.orientation == "RAS" and PAPER_CT.roi_size == DEFAULT_ROI == (96, 96, 96)
    assert PRESETS["amos_mri"].intensity_window == (0.0, 1000.0)
    assert PRESETS["msd_hepatic_vessel"].intensity_window == (0.0, 230.0)


PAPER_CT_INPUT = dict(modality="CT", spacing=(1.5, 1.5, 2.0), intensity_window=(-125.0, 275.0), orientation="RAS",
                      roi_size=(96, 96, 96))
"""The paper's AMOS CT recipe written out as numbers (not read from the preset table it checks)."""
PHANTOM_INPUT = dict(modality="CT", spacing=(2.0, 2.0, 2.5), intensity_window=(-125.0, 275.0), orientation="RAS",
                     roi_size=(64, 64, 64))


def _input(cfg: PretrainedCfg) -> dict:
    return dict(modality=cfg.modality, spacing=cfg.spacing, intensity_window=cfg.intensity_window,
                orientation=cfg.orientation, roi_size=cfg.roi_size)


def test_presets_give_every_input_key_of_a_model_cfg():
    # an empty or shortened model_cfg() would make the checks below vacuous
    assert set(PAPER_CT.model_cfg()) == set(PAPER_CT_INPUT)
    assert set(PHANTOM.model_cfg()) == set(PHANTOM_INPUT) | {"class_names"}


@pytest.mark.parametrize("name", ["rep3d_base", "rep3d_small_fixed", "uxnet3d_base"])
def test_registered_model_cfgs_carry_the_papers_ct_recipe(name):
    assert _input(PretrainedCfg.from_dict(resolve_cfg(name))) == PAPER_CT_INPUT


def test_the_phantom_weights_cfg_carries_the_phantom_recipe_and_class_names():
    cfg = PretrainedCfg.from_dict(resolve_cfg("rep3d_tiny.phantom"))
    assert _input(cfg) == PHANTOM_INPUT
    assert cfg.class_names == PHANTOM_CLASSES and len(PHANTOM_CLASSES) == 9 and PHANTOM_CLASSES[0] == "background"


def test_recipes_read_the_preset_table():
    for name, preset in PRESETS.items():
        cfg = build_config("paper", name)
        assert (cfg.spacing, cfg.intensity_window, cfg.orientation) == (
            preset.spacing, preset.intensity_window, preset.orientation)
    paper = build_config("paper")
    assert (paper.spacing, paper.intensity_window, paper.roi_size) == (
        PAPER_CT_INPUT["spacing"], PAPER_CT_INPUT["intensity_window"], PAPER_CT_INPUT["roi_size"])
    phantom_recipe = build_config("phantom")
    assert (phantom_recipe.roi_size, phantom_recipe.spacing) == (PHANTOM_INPUT["roi_size"], PHANTOM_INPUT["spacing"])


@pytest.mark.parametrize(("modality", "window"), [("CT", (-125.0, 275.0)), ("MRI", (0.0, 1000.0))])
def test_predictor_falls_back_to_the_window_of_the_models_modality(modality, window):
    class Bare(nn.Module):
        pretrained_cfg = {"modality": modality}

    predictor = Predictor(Bare(), device="cpu")
    assert predictor.roi_size == (96, 96, 96) and tuple(predictor.intensity_window) == window


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
