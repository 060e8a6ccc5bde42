"""NaN / infinite input never becomes a silent all-background segmentation: refused by default, replaced by a stated
value with a warning on request; the conv engine's own behaviour is documented and can be checked."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from rep3d import cli
from rep3d.cli import predict as predict_command
from rep3d.errors import Rep3DValueError
from rep3d.inference import InputError, NonFiniteInputWarning, Predictor
from rep3d.layers.depthwise import depthwise_conv3d
from tests.standins import ThresholdOracle, threshold_oracle


def blob(shape=(16, 16, 16)) -> np.ndarray:
    image = np.zeros((1, *shape), np.float32)
    image[0, 4:12, 4:12, 4:12] = 100.0
    return image


def predictor(model=None, **kwargs) -> Predictor:
    return Predictor(model or ThresholdOracle(), roi_size=16, spacing=None, intensity_window=(0, 100), device="cpu",
                     **kwargs)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_single_nonfinite_voxel_is_refused_by_default(bad):
    image = blob()
    image[0, 8, 8, 8] = bad
    model = ThresholdOracle()
    with pytest.raises(InputError, match=r"input array: 1 of 4096 voxels are NaN or infinite.*--nonfinite replace"):
        predictor(model)(image)
    assert model.calls == 0


def test_replacing_nonfinite_voxels_uses_the_stated_value_and_warns():
    image = blob()
    image[0, 8, 8, 8] = np.nan
    image[0, 0, 0, 0] = np.inf
    with pytest.warns(NonFiniteInputWarning, match="replaced 2 of 4096 NaN / infinite voxels with -1024"):
        replaced = predictor(nonfinite=-1024)(image, probabilities=True)
    by_hand = np.nan_to_num(image, nan=-1024.0, posinf=-1024.0)
    expected = predictor()(by_hand, probabilities=True)
    assert np.array_equal(replaced.label, expected.label) and np.allclose(replaced.probabilities,
                                                                          expected.probabilities)
    assert replaced.label[8, 8, 8] == 0 and replaced.label[6, 6, 6] == 1


def test_an_all_nan_volume_is_refused_even_when_replacing():
    with pytest.raises(InputError, match="all 4096 voxels are NaN or infinite"):
        predictor(nonfinite=0.0)(np.full((1, 16, 16, 16), np.nan, np.float32))


@pytest.mark.parametrize("bad", ["replace", float("nan"), None, True])
def test_the_nonfinite_policy_must_be_error_or_a_finite_number(bad):
    with pytest.raises(Rep3DValueError, match="nonfinite must be 'error' or a finite number"):
        predictor(nonfinite=bad)


class NaNModel(ThresholdOracle):
    def forward(self, x):
        return super().forward(x) * torch.nan


def test_a_model_whose_output_is_not_finite_is_an_error_not_background():
    with pytest.raises(Rep3DValueError, match="the model's output is not finite"):
        predictor(NaNModel())(blob())


def test_predict_command_refuses_or_replaces_nonfinite_voxels(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predict_command, "create_model", lambda name, **kw: threshold_oracle(name))
    data = blob()[0]
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "nan.nii.gz")
    argv = ["predict", "m", str(tmp_path / "nan.nii.gz"), "-o", str(tmp_path / "out"), "--quiet"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "nan.nii.gz: 1 of 4096 voxels are NaN or infinite" in err and "Traceback" not in err
    assert not (tmp_path / "out/nan_seg.nii.gz").exists()
    assert cli.main([*argv, "--nonfinite", "replace:-1024"]) == 0
    assert "rep3d predict: warning: " in capsys.readouterr().err
    assert nib.load(tmp_path / "out/nan_seg.nii.gz").shape == (16, 16, 16)


def test_fft_spreads_a_nan_over_the_whole_map_direct_over_the_footprint_and_check_finite_refuses():
    x = torch.zeros(1, 2, 9, 9, 9)
    x[0, 0, 4, 4, 4] = torch.nan
    w = torch.ones(2, 1, 3, 3, 3)
    direct = depthwise_conv3d(x, w, backend="direct")
    fft = depthwise_conv3d(x, w, backend="fft")
    assert int(direct[0, 0].isnan().sum()) == 27 and int(fft[0, 0].isnan().sum()) == 9**3
    assert torch.isfinite(direct[0, 1]).all() and torch.isfinite(fft[0, 1]).all()  # channels stay apart
    with pytest.raises(Rep3DValueError, match="x holds 1 non-finite value"):
        depthwise_conv3d(x, w, check_finite=True)
    assert torch.equal(depthwise_conv3d(torch.ones(1, 2, 5, 5, 5), w, check_finite=True),
                       depthwise_conv3d(torch.ones(1, 2, 5, 5, 5), w))
