"""Weights that would load silently wrong are refused or folded, and malformed sources say what is wrong: non-float
or non-finite tensors, train-form tensors copied into a deployed model, invalid Hub ids, malformed local folders,
malformed ``model_args``, pickles that hold code."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

import rep3d
from rep3d.errors import Rep3DError, Rep3DWeightsError
from rep3d.hub.weights import read_weights

SMALL = dict(widths=(4, 8, 16, 32), depths=(1, 1, 1, 1), kernel_size=3, hidden_size=16, num_classes=3)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def small(name: str = "rep3d_tiny_vanilla", **kwargs) -> torch.nn.Module:
    return rep3d.create_model(name, **{**SMALL, **kwargs})


# ------------------------------------------------------------------------------ item 6: non-float / non-finite

KERNEL = "encoder.stages.0.0.dwconv.weight"


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("damage", ["int32", "bool", "nan", "inf"])
def test_checkpoint_with_integer_or_non_finite_weights_is_refused_naming_the_tensor(tmp_path, damage, suffix):
    state = {k: v.clone() for k, v in small().state_dict().items()}
    if damage == "int32":
        state[KERNEL] = (state[KERNEL] * 100).to(torch.int32)
    elif damage == "bool":
        state[KERNEL] = state[KERNEL] > 0
    else:
        state[KERNEL][0, 0, 1, 1, 1] = float(damage)
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    with pytest.raises(Rep3DWeightsError) as info:
        small(checkpoint_path=path)
    assert KERNEL in str(info.value)
    assert info.value.reason == ("dtype" if damage in ("int32", "bool") else "non_finite")
    with pytest.raises(Rep3DWeightsError, match=KERNEL):  # the pretrained-file path checks too
        small(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_integer_buffers_of_the_model_still_load(tmp_path):
    source = small()
    path = tmp_path / "ok.pth"
    torch.save(source.state_dict(), path)  # holds BatchNorm's int64 num_batches_tracked
    loaded = small(checkpoint_path=path)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))


def test_import_official_with_integer_kernels_is_refused_naming_the_tensor(tmp_path):
    from test_official import SMALL as OFFICIAL
    from test_official import official_state

    state = official_state("rep3d", **OFFICIAL)
    key = "rep3d.stages.0.0.dwconv.weight"
    state[key] = (state[key] * 100).to(torch.int32)
    torch.save(state, tmp_path / "official.pth")
    with pytest.raises(Rep3DWeightsError, match=r"stages\.0\.0\.dwconv\.weight.*int32") as info:
        rep3d.official.load_official_checkpoint(tmp_path / "official.pth")
    assert info.value.reason == "dtype"
