"""The bundled phantom model computes what it computed before the fold-path refactor (issue 27).

The expected numbers below were recorded from the code before the refactor, on a fixed seeded input; they are a
fingerprint of the logits (a few voxels, per-class sums, the absolute sum), compared in float64 with a relative
tolerance that absorbs a different CPU's SIMD summation order but not a changed function. The weights themselves are
compared bit for bit with the bundled file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rep3d

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

WEIGHTS = Path(rep3d.__file__).parent / "weights" / "rep3d_tiny_phantom.safetensors"
VOXELS = (0, 1000, 77777, 123456, 200000, 9 * 32**3 - 1)
EXPECTED_VOXELS = (8.258750915527344, 5.138127326965332, -4.0368146896362305, -5.645008087158203,
                   -3.0836727619171143, -2.922602891921997)
EXPECTED_CLASS_SUMS = (112101.22777873278, -71635.71066996455, -127952.42787487805, -147379.88020332158,
                       -146231.6980702281, -131835.42625991255, -148120.81501047313, -108700.7037617825,
                       -186828.79272859544)
EXPECTED_ABS_SUM = 1203995.8555378877


def _input() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(1, 1, 32, 32, 32)


def _check_fingerprint(model: torch.nn.Module) -> None:
    with torch.no_grad():
        y = model.eval()(_input()).double()
    assert y.shape == (1, 9, 32, 32, 32)
    flat = y.flatten()
    assert [flat[i].item() for i in VOXELS] == pytest.approx(EXPECTED_VOXELS, rel=1e-6, abs=1e-5)
    assert y.sum((0, 2, 3, 4)).tolist() == pytest.approx(EXPECTED_CLASS_SUMS, rel=1e-6)
    assert y.abs().sum().item() == pytest.approx(EXPECTED_ABS_SUM, rel=1e-6)


@pytest.fixture(scope="module")
def train_form() -> torch.nn.Module:
    return rep3d.create_model("rep3d_tiny.phantom", pretrained=True).eval()


def test_bundled_phantom_train_form_logits_match_the_recorded_fingerprint(train_form):
    _check_fingerprint(train_form)


def test_bundled_phantom_folded_in_memory_logits_match_the_recorded_fingerprint(train_form):
    _check_fingerprint(rep3d.reparameterize_model(train_form))


def test_bundled_phantom_folded_on_load_equals_the_in_memory_fold_bit_for_bit(train_form):
    loaded = rep3d.create_model("rep3d_tiny.phantom", pretrained=True, deploy=True).eval()
    _check_fingerprint(loaded)
    folded = rep3d.reparameterize_model(train_form).state_dict()
    got = loaded.state_dict()
    assert list(got) == list(folded)
    assert all(torch.equal(got[k], folded[k]) for k in folded)


def test_loaded_phantom_weights_are_the_bundled_tensors_bit_for_bit(train_form):
    stored = load_file(str(WEIGHTS))
    state = train_form.state_dict()
    assert set(state) == set(stored)
    for key, tensor in stored.items():
        # the file stores float16 (exact in the model's float32), and converting back gives the file's bits
        assert torch.equal(state[key], tensor.to(state[key].dtype)), key
        assert torch.equal(state[key].to(tensor.dtype), tensor), key


def test_saved_and_reloaded_phantom_weights_are_bit_identical(train_form, tmp_path):
    rep3d.save_pretrained(train_form, tmp_path / "folder")
    files = list((tmp_path / "folder").glob("*.safetensors"))
    assert len(files) == 1
    stored, saved = load_file(str(WEIGHTS)), load_file(str(files[0]))
    assert set(saved) == set(stored)
    assert all(torch.equal(saved[k].to(stored[k].dtype), stored[k]) for k in stored)
    reloaded = rep3d.create_model(f"local-dir:{tmp_path / 'folder'}", pretrained=True).state_dict()
    assert all(torch.equal(reloaded[k].to(stored[k].dtype), stored[k]) for k in stored)
