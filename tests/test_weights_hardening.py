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


# ------------------------------------------------------------------- item 6b: train-form tensors, deployed model

def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and affine values, so that an unfolded kernel differs clearly."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.copy_(torch.rand(module.num_features, generator=gen) - 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
                module.bias.copy_(torch.rand(module.num_features, generator=gen) - 0.5)
    return model.eval()


@pytest.mark.parametrize("name", ["rep3d_tiny", "rep3d_tiny_fixed", "rep3d_tiny_csla"])
@pytest.mark.parametrize("strict", [False, True])
def test_train_form_state_dict_loaded_into_a_deployed_model_is_folded(name, strict):
    trained = _trained_looking(small(name, kernel_size=5))
    deployed = small(name, kernel_size=5, deploy=True).eval()
    result = deployed.load_state_dict(trained.state_dict(), strict=strict)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = trained(x), deployed(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_copy_model_state_of_a_train_form_model_into_a_deployed_one_is_refused():
    from monai.networks.utils import copy_model_state

    trained = _trained_looking(small("rep3d_tiny"))
    deployed = small("rep3d_tiny", deploy=True).eval()
    with pytest.raises(Rep3DError, match=r"unfolded train-form kernel.*copy_model_state"):
        copy_model_state(deployed, trained)


def test_copy_model_state_between_deployed_or_between_train_form_models_still_works():
    from monai.networks.utils import copy_model_state

    trained = _trained_looking(small("rep3d_tiny"))
    twin = small("rep3d_tiny")
    copy_model_state(twin, trained)
    folded = rep3d.reparameterize_model(trained)
    deployed = small("rep3d_tiny", deploy=True)
    _, updated, unchanged = copy_model_state(deployed, folded)
    assert not unchanged
    assert all(torch.equal(a, b) for a, b in zip(deployed.state_dict().values(), folded.state_dict().values()))


def test_train_form_tensors_of_another_variant_are_refused_not_folded():
    trained = _trained_looking(small("rep3d_tiny_csla", kernel_size=5))  # has a small branch the lrbm model does not
    deployed = small("rep3d_tiny", kernel_size=5, deploy=True)
    with pytest.raises(Rep3DError, match="do not fit this conv's train form"):
        deployed.load_state_dict(trained.state_dict(), strict=False)


# ---------------------------------------------------------------------------- item 10: malformed sources and ids

@pytest.mark.parametrize("hub_id", ["../etc", "org/na me", "org/../x", "org/a..b", "org/name/extra"])
def test_invalid_hub_ids_raise_rep3d_weights_error_before_any_request(hub_id, monkeypatch):
    import rep3d.hub.download as download

    def no_network(*args, **kwargs):
        raise AssertionError("no request may be made for an invalid id")

    monkeypatch.setattr(download, "hf_hub_download", no_network)
    monkeypatch.setattr(download, "get_hf_file_metadata", no_network)
    with pytest.raises(Rep3DWeightsError, match="Hub") as info:
        rep3d.create_model(f"hf-hub:{hub_id}", pretrained=True)
    assert info.value.reason == "config" and repr(hub_id) in str(info.value)


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "saved"
    rep3d.save_pretrained(small(), folder)
    return folder


def _edit_config(folder, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("sha256", [12345, ["ab"], "not-hex"])
def test_local_dir_with_a_malformed_sha256_says_so(saved, sha256):
    _edit_config(saved, lambda c: c["rep3d"]["weights"].update(sha256=sha256))
    with pytest.raises(Rep3DWeightsError, match="sha256") as info:
        rep3d.create_model(f"local-dir:{saved}", pretrained=True)
    assert info.value.reason == "config"


@pytest.mark.parametrize("model_args", [[1, 2], "widths", {"no_such_argument": 1}])
def test_local_dir_with_malformed_model_args_raises_a_rep3d_error_naming_them(saved, model_args):
    _edit_config(saved, lambda c: c.update(model_args=model_args))
    with pytest.raises(Rep3DWeightsError, match="model_args") as info:
        rep3d.create_model(f"local-dir:{saved}")
    assert info.value.reason == "config"
    if isinstance(model_args, dict):
        assert "no_such_argument" in str(info.value)


@pytest.mark.parametrize("where", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors", 7])
def test_local_dir_weight_file_outside_its_folder_is_refused(saved, where):
    (saved.parent / "outside.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
    _edit_config(saved, lambda c: c["rep3d"]["weights"].update(file=where, sha256=None))
    with pytest.raises(Rep3DWeightsError, match="inside the model's folder"):
        rep3d.create_model(f"local-dir:{saved}", pretrained=True)


def test_local_dir_that_does_not_exist_says_the_folder_is_missing(tmp_path):
    with pytest.raises(Rep3DWeightsError, match="the folder does not exist") as info:
        rep3d.create_model(f"local-dir:{tmp_path / 'missing'}")
    assert "JSON" not in str(info.value) and info.value.reason == "not_found"
    (tmp_path / "empty").mkdir()
    with pytest.raises(Rep3DWeightsError, match="has no config.json"):
        rep3d.create_model(f"local-dir:{tmp_path / 'empty'}")


class _Code:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_a_pickle_with_a_blocked_global_is_reported_as_holding_code(tmp_path):
    torch.save({"weight": torch.zeros(2), "payload": _Code()}, tmp_path / "evil.pth")
    with pytest.raises(Rep3DWeightsError, match="holds code") as info:
        read_weights(tmp_path / "evil.pth", "evil")
    assert info.value.reason == "unsafe" and "corrupt" not in str(info.value)
    (tmp_path / "garbage.pth").write_bytes(pickle.dumps(b"x", protocol=2)[:-3])
    with pytest.raises(Rep3DWeightsError) as info:
        read_weights(tmp_path / "garbage.pth", "garbage")
    assert info.value.reason == "corrupt"


@pytest.mark.parametrize("shape", [(0, 4, 8, 8, 8), (2, 4, 0, 8, 8), (1, 4, 8, 8, 0)])
@pytest.mark.parametrize("backend", ["auto", "fft", "direct"])
def test_depthwise_conv_of_an_empty_tensor_is_empty_like_f_conv3d(shape, backend):
    x = torch.randn(*shape, requires_grad=True)
    weight = torch.randn(4, 1, 5, 5, 5, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    y = rep3d.layers.depthwise_conv3d(x, weight, bias, backend=backend)
    assert y.shape == x.shape and y.dtype == x.dtype
    y.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight)) and torch.equal(bias.grad, torch.zeros_like(bias))
    assert x.grad.shape == x.shape
