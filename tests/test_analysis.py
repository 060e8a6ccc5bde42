"""Analysis instruments on known answers: the ERF of a conv is its kernel's footprint, a student started at its
teacher has zero error at every ring, the summaries are exact on hand-made maps, and ``rep3d erf`` / ``rep3d masks``
write valid PNG and JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from rep3d.analysis import (
    VARIANTS,
    effective_receptive_field,
    high_contribution_area_ratios,
    kernel_convergence,
    mask_report,
    mass_within_radii,
    msd_crops,
    radial_profile,
    random_inputs,
    ratio_by_ring,
    replknet_area_ratios,
    ring_errors,
    stability_sweep,
    summarise_stability,
    teacher_kernel,
)
from rep3d.builder import create_model
from rep3d.cli import main
from rep3d.data import write_msd_dataset
from rep3d.errors import Rep3DValueError
from rep3d.hub import save_pretrained
from rep3d.layers import ModulatedKernelParam, distance_prior


def _depthwise(kernel: torch.Tensor) -> nn.Conv3d:
    k = kernel.shape[-1]
    conv = nn.Conv3d(1, 1, k, padding=k // 2, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(kernel.view(1, 1, k, k, k))
    return conv


def _placed(kernel: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``kernel`` written into a zero volume of ``shape`` centred on ``size // 2``."""
    out = np.zeros(shape)
    k = kernel.shape[0]
    c = [s // 2 - k // 2 for s in shape]
    out[c[0]:c[0] + k, c[1]:c[1] + k, c[2]:c[2] + k] = kernel
    return out


def _full_convolution(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """True 3-D convolution of two cubes (size ka + kb - 1), by explicit sums."""
    ka, kb = a.shape[0], b.shape[0]
    out = np.zeros((ka + kb - 1,) * 3)
    for idx in np.ndindex(b.shape):
        out[idx[0]:idx[0] + ka, idx[1]:idx[1] + ka, idx[2]:idx[2] + ka] += b[idx] * a
    return out


def test_erf_of_one_conv_is_its_kernel_footprint():
    torch.manual_seed(0)
    kernel = torch.randn(5, 5, 5, dtype=torch.float64)  # signed: the ERF is |kernel|
    result = effective_receptive_field(_depthwise(kernel), random_inputs((1, 15, 15, 15), 3).double(), n_samples=3)
    np.testing.assert_allclose(result.erf, _placed(kernel.abs().numpy(), (15, 15, 15)), rtol=0, atol=1e-6)
    assert result.centre == (7.0, 7.0, 7.0) and result.n_samples == 3


def test_erf_of_two_stacked_signed_convs_is_the_magnitude_of_the_convolved_kernels():
    # signed kernels: contributions of opposite sign cancel inside the composite kernel before |.| is taken
    torch.manual_seed(1)
    k1, k2 = torch.randn(3, 3, 3, dtype=torch.float64), torch.randn(5, 5, 5, dtype=torch.float64)
    model = nn.Sequential(_depthwise(k1), _depthwise(k2))
    result = effective_receptive_field(model, random_inputs((1, 16, 16, 16), 2).double())
    composite = _full_convolution(k1.numpy(), k2.numpy())
    assert (composite < 0).any() and (composite > 0).any()
    expected = _placed(np.abs(composite), (16, 16, 16))
    np.testing.assert_allclose(result.erf, expected, rtol=0, atol=1e-6)
    # composing the magnitudes instead (no cancellation) is a different map
    assert np.abs(result.erf - _placed(_full_convolution(np.abs(k1.numpy()), np.abs(k2.numpy())),
                                       (16, 16, 16))).max() > 1e-2


def test_replknet_definition_keeps_positive_gradients_of_positive_outputs_on_a_log_scale():
    torch.manual_seed(3)
    kernel = torch.randn(5, 5, 5, dtype=torch.float64)
    conv = _depthwise(kernel)
    x = random_inputs((1, 15, 15, 15), 1).double()
    if float(conv(x)[0, 0, 7, 7, 7].detach()) < 0:
        x = -x  # a positive central output, so relu(y) passes the gradient
    result = effective_receptive_field(conv, torch.cat([x, -x]), definition="replknet")
    # the second input's central output is negative: relu cuts it, and the average is over both inputs
    mean = _placed(np.maximum(kernel.numpy(), 0), (15, 15, 15)) / 2
    expected = np.log10(1 + mean) / np.log10(1 + mean).max()
    np.testing.assert_allclose(result.erf, expected, rtol=0, atol=1e-9)
    assert result.definition == "replknet" and result.to_json()["definition"] == "replknet"
    assert set(result.summary["area_ratio"]) == {"0.2", "0.3", "0.5", "0.99"}
    with pytest.raises(Rep3DValueError, match="definition must be one of"):
        effective_receptive_field(conv, x, definition="mine")


def test_replknet_area_ratios_grow_centred_cubes_until_the_share_exceeds_t():
    erf = np.zeros((9, 9, 9))
    erf[4, 4, 4] = 2.0  # half of the total at the centre: the 3³ cube holds exactly 0.5, not more
    erf[4, 4, 6] = 1.0  # in the 5³ cube
    erf[0, 0, 0] = 1.0  # outside every cube that fits (sides 3, 5, 7, 9)
    ratios = replknet_area_ratios(erf, (4, 4, 4), (0.2, 0.5, 0.6, 0.99))
    assert ratios == {0.2: 27 / 729, 0.5: 125 / 729, 0.6: 125 / 729, 0.99: 729 / 729}


def test_erf_of_a_stage_is_centred_under_the_stage_voxel_and_restores_train_mode():
    model = create_model("rep3d_tiny", kernel_size=5, conv_backend="direct").train()
    result = effective_receptive_field(model, random_inputs((1, 32, 32, 32), 1), target="stage2")
    assert model.training
    assert result.erf.shape == (32, 32, 32) and result.centre == (17.5, 17.5, 17.5)  # voxel 4 of 8 covers 16..19
    assert result.erf.sum() > 0 and set(result.summary) == {"area_ratio", "mass_within", "radial_profile"}
    with pytest.raises(Rep3DValueError, match="target must be one of"):
        effective_receptive_field(model, random_inputs((1, 32, 32, 32), 1), target="stage5")


def test_erf_leaves_the_parameters_gradients_as_they_were():
    torch.manual_seed(2)
    model = nn.Sequential(_depthwise(torch.rand(3, 3, 3, dtype=torch.float64)),
                          _depthwise(torch.rand(3, 3, 3, dtype=torch.float64)))
    model[0].weight.grad = torch.full_like(model[0].weight, 0.25)  # a training step's gradient, not yet applied
    effective_receptive_field(model, random_inputs((1, 9, 9, 9), 2).double())
    assert torch.equal(model[0].weight.grad, torch.full_like(model[0].weight, 0.25))
    assert model[1].weight.grad is None


def test_area_ratio_and_mass_within_radii_on_a_hand_made_map():
    erf = np.zeros((9, 9, 9))
    erf[4, 4, 4] = 2.0  # half of the total at the centre
    erf[4, 4, 6] = 1.0  # a quarter at distance 2 (box half-width 2)
    erf[0, 0, 0] = 1.0  # a quarter in the far corner (half-width 4: the whole volume)
    ratios = high_contribution_area_ratios(erf, (4, 4, 4), (0.2, 0.5, 0.6, 0.99))
    assert ratios == {0.2: 1 / 729, 0.5: 1 / 729, 0.6: 125 / 729, 0.99: 1.0}
    mass = mass_within_radii(erf, (4, 4, 4), (0, 1, 2, 6.9, 7))
    assert mass == {0: 0.5, 1: 0.5, 2: 0.75, 6.9: 0.75, 7: 1.0}  # the corner is at sqrt(48) = 6.93
    profile = radial_profile(erf, (4, 4, 4))
    assert profile[0] == 2.0 and profile[1] == 0.0 and profile[7] > 0


def test_msd_crops_are_seeded_and_on_the_model_grid(tmp_path):
    data = write_msd_dataset(tmp_path / "data", num_train=2, num_test=0, seed=3, shape=(24, 24, 20))
    kwargs = dict(spacing=None, orientation="RAS", intensity_window=(-125.0, 275.0))
    a = msd_crops(data, (16, 16, 24), 3, seed=4, **kwargs)
    b = msd_crops(data, (16, 16, 24), 3, seed=4, **kwargs)
    assert [tuple(x.shape) for x in a] == [(1, 16, 16, 24)] * 3  # the 20-voxel axis is zero-padded to 24
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert min(float(x.min()) for x in a) >= 0.0 and max(float(x.max()) for x in a) <= 1.0


def test_ring_errors_are_relative_per_ring():
    teacher = np.ones((1, 1, 3, 3, 3))
    kernel = teacher.copy()
    kernel[0, 0, 1, 1, 1] = 1.5  # centre off by half; ring 1 (faces at 1, edges at sqrt 2 = 1.41) exact
    kernel[0, 0, 0, 0, 0] = 0.0  # one of the 8 corners (distance sqrt 3 = 1.73 -> ring 2) wrong by 1
    np.testing.assert_allclose(ring_errors(kernel, teacher), [0.5, 0.0, np.sqrt(1 / 8)])


@pytest.mark.parametrize("variant", VARIANTS)
def test_student_started_away_from_the_teacher_reduces_its_error_at_every_ring(variant):
    record = kernel_convergence(variant, channels=2, size=10, kernel_size=7, steps=40, lr=1e-2, record_every=20,
                                dtype=torch.float64)
    errors = np.asarray(record["ring_error"])
    assert record["steps"] == [0, 20, 40] and errors.shape == (3, 6)  # rings 0..5 of a 7³ kernel
    assert (errors[0] > 0.9).all(), "the student must start away from the teacher"
    assert (errors[-1] < 0.5 * errors[0]).all() and not record["diverged"]


def test_a_tapered_mask_fits_the_centre_before_the_periphery_and_a_plain_kernel_does_not():
    # the learning-rate field of W * M: elements where the prior is small move slowly (docs/design.md)
    def ring_ratio(variant: str) -> float:
        record = kernel_convergence(variant, channels=2, size=10, kernel_size=7, steps=20, lr=1e-2,
                                    record_every=20, dtype=torch.float64)
        after = record["ring_error"][-1]
        return after[5] / after[1]  # outer ring's error over the first ring's, after 20 steps

    assert ring_ratio("fixed") > 2.0
    assert ring_ratio("vanilla") < 1.5


@pytest.mark.parametrize("variant", VARIANTS)
def test_student_started_at_the_teacher_keeps_zero_error_at_every_ring(variant):
    record = kernel_convergence(variant, channels=2, size=8, kernel_size=5, steps=6, record_every=3,
                                start_at_teacher=True, dtype=torch.float64)
    errors = np.asarray(record["ring_error"])
    assert record["steps"] == [0, 3, 6] and errors.shape == (3, 4)  # rings 0..3 of a 5³ kernel
    assert (errors == 0).all() and record["loss"] == [0.0, 0.0, 0.0] and not record["diverged"]


def test_teacher_envelopes_have_unit_output_scale_and_the_prior_shape():
    uniform = teacher_kernel(3, 5, seed=2, dtype=torch.float64)
    prior = teacher_kernel(3, 5, seed=2, dtype=torch.float64, envelope="prior")
    assert float(uniform.pow(2).sum(dim=(1, 2, 3, 4)).mean()) == pytest.approx(1.0)
    assert float(prior.pow(2).sum(dim=(1, 2, 3, 4)).mean()) == pytest.approx(1.0)
    ratio = prior / uniform / distance_prior(5, dtype=torch.float64)  # one common factor everywhere
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio.flatten()[0])))


def test_student_from_scratch_reduces_the_error_and_the_sweep_counts_divergence():
    record = kernel_convergence("lrbm-additive", channels=2, size=10, kernel_size=5, steps=30, record_every=10,
                                lr=3e-2)
    assert record["loss"][-1] < 0.5 * record["loss"][0]
    assert np.mean(record["ring_error"][-1]) < np.mean(record["ring_error"][0])
    sweep = stability_sweep(["vanilla"], lrs=(1e-3, 1e3), seeds=(0, 1), channels=1, size=6, kernel_size=3, steps=3)
    assert sweep["summary"]["vanilla"]["0.001"]["divergence_rate"] == 0.0
    assert sweep["summary"]["vanilla"]["1000"]["divergence_rate"] == 1.0  # Adam moves each weight by ~1e3
    assert len(sweep["runs"]) == 4
    runs = [dict(variant="v", lr=1e-3, final_loss=1.0, diverged=False), dict(variant="v", lr=1e-3, final_loss=3.0,
            diverged=False), dict(variant="v", lr=1e-3, final_loss=float("nan"), diverged=True)]
    summary = summarise_stability(runs)["v"]["0.001"]
    assert summary == {"divergence_rate": pytest.approx(1 / 3), "final_loss_mean": 2.0, "final_loss_var": 1.0, "n": 3}


def test_mask_report_gives_m_over_p_by_ring_and_refuses_a_model_without_mask():
    model = create_model("rep3d_tiny_fixed", kernel_size=5)
    report = mask_report(model)
    assert len(report) == 4
    block = next(iter(report.values()))
    assert block["mode"] == "fixed" and block["ratio_by_ring"]["mean"] == [1.0, 1.0, 1.0, 1.0]
    assert ratio_by_ring(2 * block["prior"], block["prior"])["max"] == [2.0] * 4
    with pytest.raises(Rep3DValueError, match="no receptive-field mask"):
        mask_report(create_model("rep3d_tiny_vanilla", kernel_size=5))


@pytest.mark.parametrize("with_data", [False, True])
def test_rep3d_erf_writes_png_and_json(tmp_path, capsys, with_data):
    out = tmp_path / "out" / "erf"
    data = ["--data", str(write_msd_dataset(tmp_path / "data", num_train=1, num_test=0, shape=(32, 32, 32)))]
    assert main(["erf", "rep3d_tiny", "--roi", "32", "32", "32", "--n-samples", "1", "--target", "stage1",
                 *(data if with_data else []), "-o", str(out)]) == 0
    with Image.open(out.with_suffix(".png")) as img:
        img.verify()
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert numbers["target"] == "stage1" and numbers["roi"] == [32, 32, 32] and numbers["n_samples"] == 1
    assert numbers["inputs"].startswith("crops of") == with_data
    assert numbers["weights"] == "random initialisation (untrained)"  # a bare architecture has no weights
    assert set(numbers["area_ratio"]) == {"0.2", "0.3", "0.5", "0.99"}
    assert 0 < numbers["area_ratio"]["0.2"] <= numbers["area_ratio"]["0.99"] <= 1
    assert numbers["mass_within"]["32"] == pytest.approx(1.0)
    assert "wrote" in capsys.readouterr().out


def test_rep3d_masks_reports_hand_computed_values_and_live_taps(tmp_path):
    # every block's mask is M = P + 0.25 (a constant generator output) on a 5³ kernel, P = 1 / (1 + d)
    model = create_model("rep3d_tiny", kernel_size=5, widths=(4, 8, 8, 8), hidden_size=8, num_classes=2)
    for module in model.modules():
        if isinstance(module, ModulatedKernelParam):
            last = getattr(module.generator, f"conv{module.generator.depth}")
            with torch.no_grad():
                last.weight.zero_()
                last.bias.fill_(0.25 / module.generator.output_gain)
    save_pretrained(model, tmp_path / "model")
    assert main(["masks", f"local-dir:{tmp_path / 'model'}", "--roi", "32", "32", "32", "-o",
                 str(tmp_path / "out") + "/"]) == 0
    with Image.open(tmp_path / "out" / "masks.png") as img:
        img.verify()
    written = json.loads((tmp_path / "out" / "masks.json").read_text())
    assert written["weights"] == "pretrained" and written["roi"] == [32, 32, 32]
    blocks = written["blocks"]
    assert len(blocks) == 4
    offsets = [(i, j, k) for i in range(-2, 3) for j in range(-2, 3) for k in range(-2, 3)]
    dist = {o: math.sqrt(sum(c * c for c in o)) for o in offsets}
    for block in blocks.values():
        stats = block["mask_stats"]
        assert stats["ratio_centre"] == pytest.approx(1.25)
        assert stats["negative"] == 0.0
        # |M/P - 1| = 0.25 (1 + d) >= 0.98 at the 32 offsets with d >= 2.92 (see tests/test_layers.py)
        assert stats["at_bound"] == pytest.approx(32 / 125)
        assert stats["prior_distance"] == pytest.approx(sum(0.25 * (1 + d) for d in dist.values()) / 125, rel=1e-5)
    # feature maps at a 32³ input: 16, 8, 4, 2 voxels; a 5³ kernel (offsets -2..2) is all live down to 3 voxels,
    # on the 2-voxel map only the offsets -1..1 ever meet data
    live = [blocks[f"encoder.stages.{i}.0.dwconv"]["live"] for i in range(4)]
    assert [b["feature_size"] for b in live] == [[16] * 3, [8] * 3, [4] * 3, [2] * 3]
    assert [b["live_taps"] for b in live] == [125, 125, 125, 27] and live[3]["dead_taps"] == 98
    inner = [o for o in offsets if max(map(abs, o)) <= 1]
    masses = {o: 1 / (1 + dist[o]) + 0.25 for o in offsets}
    assert live[3]["abs_mask_on_live"] == pytest.approx(sum(masses[o] for o in inner) / sum(masses.values()))
    rings = live[3]["ratio_by_ring_live"]  # live taps only: d = 0, 1, sqrt 2 (ring 1), sqrt 3 (ring 2)
    assert rings["ring"] == [0, 1, 2]
    ring1 = [o for o in inner if round(dist[o]) == 1]
    assert rings["mean"][1] == pytest.approx(sum(1 + 0.25 * (1 + dist[o]) for o in ring1) / len(ring1), rel=1e-5)
    assert rings["mean"][2] == pytest.approx(1 + 0.25 * (1 + math.sqrt(3)), rel=1e-5)


def test_rep3d_masks_on_a_model_without_mask_is_a_one_line_error(tmp_path, capsys):
    assert main(["masks", "rep3d_tiny_vanilla", "--random-init", "-o", str(tmp_path / "m")]) == 1
    assert capsys.readouterr().err.startswith("rep3d masks: error: ")
