"""Pretrained weights through the real huggingface_hub client against a loopback Hub (tests/hub_server.py).

The client is pointed at the server the way huggingface_hub's own tests do it: the values it read from HF_ENDPOINT /
HF_HUB_OFFLINE / HF_HUB_CACHE at import time are patched in ``huggingface_hub.constants`` (every download call reads
them from there); one test runs a fresh interpreter with the environment variables set before import.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import timm
import torch
from hub_server import HubServer

import rep3d
from rep3d.hub import Rep3DWeightsError, save_pretrained
from rep3d.models import registry

TINY = dict(kernel_size=3, widths=(4, 8, 16, 32), hidden_size=16)
"""A rep3d_tiny small enough that building, saving and serving it take milliseconds."""


def tiny(name: str = "rep3d_tiny", **kwargs) -> torch.nn.Module:
    return rep3d.create_model(name, **{**TINY, **kwargs}).eval()


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and weights, so that loading the wrong tensors would show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.5 + (0.5 if "running_var" in key else -0.25))
    return model


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def volume(channels: int = 1, seed: int = 1) -> torch.Tensor:
    # 2 x 1 x 1 voxels at stride 16: the smallest input the decoder's instance norms accept
    return torch.randn(1, channels, 32, 16, 16, generator=torch.Generator().manual_seed(seed))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def server():
    srv = HubServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def hub(server, monkeypatch, tmp_path):
    """The real huggingface_hub client talking to the loopback server, with an empty default cache."""
    from huggingface_hub import constants, hf_hub_url

    monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 5)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 5)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    assert hf_hub_url("a/b", "c").startswith(server.endpoint)  # the patch reaches the client
    server.reset_requests()
    return server


@pytest.fixture
def repo_id():
    return f"rep3d-test/m-{uuid.uuid4().hex[:8]}"


def publish(server: HubServer, model: torch.nn.Module, repo_id: str, tmp_path: Path, **save_kwargs) -> str:
    folder = save_pretrained(model, tmp_path / f"publish-{uuid.uuid4().hex[:6]}", **save_kwargs)
    return server.publish(repo_id, folder)


def hub_overlay(repo_id: str, commit: str | None = None, **extra) -> dict:
    return dict(hf_hub_id=repo_id, **({"hf_revision": commit} if commit else {}), **extra)


def cache_files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() or p.is_symlink())


# ------------------------------------------------------------------------------------------------ download and cache

def test_first_download_then_pinned_cache_hit_makes_zero_requests(hub, repo_id, tmp_path):
    source = randomize(tiny())
    commit = publish(hub, source, repo_id, tmp_path)
    cache = tmp_path / "cache"
    hub.reset_requests()
    model = tiny(pretrained=True, pretrained_cfg_overlay=hub_overlay(repo_id, commit), cache_dir=cache)
    assert same_state(model, source)
    assert ("GET", f"/{repo_id}/resolve/{commit}/model.safetensors") in hub.requests
    assert model.pretrained_cfg["weights_source"].startswith(hub.endpoint)
    hub.reset_requests()
    again = tiny(pretrained=True, pretrained_cfg_overlay=hub_overlay(repo_id, commit), cache_dir=cache)
    assert same_state(again, source)
    assert hub.requests == []


def test_revision_pin_selects_the_commit_and_branch_follows_updates(hub, repo_id, tmp_path):
    old, new = randomize(tiny(), seed=1), randomize(tiny(), seed=2)
    old_commit = publish(hub, old, repo_id, tmp_path)
    publish(hub, new, repo_id, tmp_path)
    cache = tmp_path / "cache"
    pinned = tiny(pretrained=True, pretrained_cfg_overlay=hub_overlay(repo_id, old_commit), cache_dir=cache)
    on_main = tiny(pretrained=True, pretrained_cfg_overlay=hub_overlay(repo_id), cache_dir=cache)
    assert same_state(pinned, old) and same_state(on_main, new)
    hub.reset_requests()  # a branch is re-validated with one HEAD, the file itself comes from the cache
    assert same_state(tiny(pretrained=True, pretrained_cfg_overlay=hub_overlay(repo_id), cache_dir=cache), new)
    assert [m for m, _ in hub.requests] == ["HEAD"]


def test_offline_with_warm_cache_makes_no_requests(hub, repo_id, tmp_path, monkeypatch):
    from huggingface_hub import constants

    source = randomize(tiny())
    publish(hub, source, repo_id, tmp_path)
    cache = tmp_path / "cache"
    tiny(pretrained=True, pretrained_cfg_overlay=hub_overlay(repo_id), cache_dir=cache)  # warm, branch "main"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.reset_requests()
    assert same_state(tiny(pretrained=True, pretrained_cfg_overlay=hub_overlay(repo_id), cache_dir=cache), source)
    assert hub.requests == []


def test_offline_with_empty_cache_fails_fast_with_the_fix(hub, repo_id, tmp_path, monkeypatch):
    from huggingface_hub import constants

    publish(hub, tiny(), repo_id, tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.reset_requests()
    with pytest.raises(Rep3DWeightsError) as info:
        tiny(pretrained=True, pretrained_cfg_overlay=hub_overlay(repo_id), cache_dir=tmp_path / "empty")
    err = info.value
    assert err.reason == "offline" and repo_id in str(err) and "HF_HUB_OFFLINE" in str(err)
    assert "dict(file=PATH)" in err.fix and hub.requests == []


def test_unreachable_hub_fails_within_seconds(hub, repo_id, tmp_path, monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
    start = time.monotonic()
    with pytest.raises(Rep3DWeightsError) as info:
        tiny(pretrained=True, pretrained_cfg_overlay=hub_overlay(repo_id), cache_dir=tmp_path / "cache")
    assert time.monotonic() - start < 5, "must not sit in huggingface_hub's retry back-off"
    assert info.value.reason == "unreachable" and dead in str(info.value) and "HF_ENDPOINT" in info.value.fix
    assert "tiny" in info.value.name


def test_hub_server_error_fails_within_seconds(hub, repo_id, tmp_path):
    publish(hub, tiny(), repo_id, tmp_path)
    hub.fault(repo_id, "model.safetensors", "error500")
    start = time.monotonic()
    with pytest.raises(Rep3DWeightsError) as info:
        tiny(pretrained=True, pretrained_cfg_overlay=hub_overlay(repo_id), cache_dir=tmp_path / "cache")
    assert time.monotonic() - start < 5 and info.value.reason == "unreachable" and "HTTP 500" in str(info.value)
    assert len(hub.requests) == 1  # one HEAD, no retries


@pytest.mark.parametrize("fault, reason, needle", [
    ("repo", "repo_not_found", "does not exist"),
    ("revision", "revision_not_found", "v9"),
    ("file", "entry_not_found", "weights.safetensors"),
])
def test_missing_repo_revision_or_file_is_named_with_the_fix(hub, repo_id, tmp_path, fault, reason, needle):
    publish(hub, tiny(), repo_id, tmp_path)
    overlay = {
        "repo": hub_overlay("rep3d-test/no-such-repo"),
        "revision": hub_overlay(repo_id, "v9"),
        "file": hub_overlay(repo_id, hf_hub_filename="weights.safetensors"),
    }[fault]
    start = time.monotonic()
    with pytest.raises(Rep3DWeightsError) as info:
        tiny(pretrained=True, pretrained_cfg_overlay=overlay, cache_dir=tmp_path / "cache")
    err = info.value
    assert time.monotonic() - start < 5 and err.reason == reason and needle in str(err)
    assert hub.endpoint in err.source and err.fix


def test_truncated_download_leaves_nothing_in_the_cache(hub, repo_id, tmp_path):
    publish(hub, tiny(), repo_id, tmp_path)
    hub.fault(repo_id, "model.safetensors", "truncate")
    cache = tmp_path / "cache"
    with pytest.raises(Rep3DWeightsError) as info:
        tiny(pretrained=True, pretrained_cfg_overlay=hub_overlay(repo_id), cache_dir=cache)
    assert info.value.reason == "truncated" and "retry" in info.value.fix
    assert not [f for f in cache_files(cache) if "/blobs/" in f or "/snapshots/" in f or "incomplete" in f]
    hub.fault(repo_id, "model.safetensors", None)  # the next call downloads cleanly
    tiny(pretrained=True, pretrained_cfg_overlay=hub_overlay(repo_id), cache_dir=cache)


def test_corrupt_safetensors_is_reported_and_evicted_from_the_cache(hub, repo_id, tmp_path):
    good = save_pretrained(tiny(), tmp_path / "good")
    data = (good / "model.safetensors").read_bytes()
    hub.publish(repo_id, {"model.safetensors": data[: len(data) // 3], "config.json": b"{}"})
    cache = tmp_path / "cache"
    with pytest.raises(Rep3DWeightsError) as info:
        tiny(pretrained=True, pretrained_cfg_overlay=hub_overlay(repo_id), cache_dir=cache)
    assert info.value.reason == "corrupt" and "removed from the cache" in str(info.value)
    assert not [f for f in cache_files(cache) if f.endswith("model.safetensors") or "/blobs/" in f]


def test_sha256_mismatch_is_reported_and_evicted_from_the_cache(hub, repo_id, tmp_path):
    commit = publish(hub, tiny(), repo_id, tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(Rep3DWeightsError) as info:
        tiny(pretrained=True, pretrained_cfg_overlay=hub_overlay(repo_id, commit, sha256="0" * 64), cache_dir=cache)
    assert info.value.reason == "checksum" and "0" * 64 in str(info.value) and commit in info.value.source
    assert not [f for f in cache_files(cache) if "/blobs/" in f or "/snapshots/" in f]


def test_checkpoint_of_another_architecture_is_named(hub, repo_id, tmp_path):
    publish(hub, tiny(widths=(8, 16, 32, 64)), repo_id, tmp_path)
    with pytest.raises(Rep3DWeightsError) as info:
        tiny(pretrained=True, pretrained_cfg_overlay=hub_overlay(repo_id), cache_dir=tmp_path / "cache")
    assert info.value.reason == "architecture" and "shape mismatch" in str(info.value)


# -------------------------------------------------------------------------------------- registry, files and bundled

def test_base_without_published_weights_fails_before_any_work(hub):
    start = time.monotonic()
    with pytest.raises(Rep3DWeightsError) as info:
        rep3d.create_model("rep3d_base", pretrained=True)
    assert time.monotonic() - start < 1 and hub.requests == []
    err = info.value
    assert err.reason == "no_weights" and "rep3d_base" in str(err) and "tags with weights:" in str(err)
    assert "rep3d_tiny.phantom" in rep3d.list_models(pretrained=True)
    for tag in rep3d.list_models(pretrained=True):
        assert tag in str(err)


def test_registered_weight_tags_are_pinned_hashed_and_present():
    """No tag points at weights that do not exist: bundled files are in the package, Hub tags pin a commit."""
    from rep3d.hub import bundled_weights_dir

    tags = rep3d.list_models(pretrained=True)
    assert "rep3d_tiny.phantom" in tags  # the loop below must check at least the bundled tag
    for tag in tags:
        cfg = timm.models.get_pretrained_cfg(tag).to_dict()
        arch, _, name = tag.partition(".")  # an untagged name stands for its default tag
        meta = registry.volume_metadata(arch, name or cfg.get("tag"))
        assert meta.get("sha256"), f"{tag}: registered weights need a sha256"
        if meta.get("bundled"):
            assert (bundled_weights_dir() / meta["bundled"]).is_file(), tag
        if cfg.get("hf_hub_id"):
            assert len(meta.get("hf_revision") or "") == 40, f"{tag}: pin hf_revision to a commit"


def test_bundled_file_is_resolved_from_the_package_weights_dir(tmp_path, monkeypatch):
    source = randomize(tiny())
    save_pretrained(source, tmp_path / "saved")
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "rep3d_tiny_test.safetensors").write_bytes((tmp_path / "saved" / "model.safetensors").read_bytes())
    monkeypatch.setenv(rep3d.hub.WEIGHTS_DIR_ENV, str(weights))
    model = tiny(pretrained=True, pretrained_cfg_overlay=dict(bundled="rep3d_tiny_test.safetensors"))
    assert same_state(model, source) and model.pretrained_cfg["weights_source"].startswith("bundled file")
    with pytest.raises(Rep3DWeightsError) as info:
        tiny(pretrained=True, pretrained_cfg_overlay=dict(bundled="missing.safetensors"))
    assert info.value.reason == "not_found" and "reinstall" in info.value.fix


def test_bundled_tag_registration_counts_as_weights_for_timm(monkeypatch):
    monkeypatch.setattr(registry, "VOLUME_METADATA", {})
    cfgs = registry.default_cfgs({"rep3d_tiny.testbundle": dict(num_classes=2, bundled="x.safetensors",
                                                                 sha256="ab" * 32)})
    cfg = cfgs["rep3d_tiny"].cfgs["testbundle"]
    assert cfg.has_weights and cfg.file == registry.BUNDLED_PREFIX + "x.safetensors"
    assert registry.VOLUME_METADATA["rep3d_tiny.testbundle"] == {"bundled": "x.safetensors", "sha256": "ab" * 32}


def test_explicit_file_wins_over_bundled_and_hub(hub, tmp_path, monkeypatch):
    source = randomize(tiny())
    save_pretrained(source, tmp_path / "mine")
    monkeypatch.setenv(rep3d.hub.WEIGHTS_DIR_ENV, str(tmp_path / "empty"))
    cfg = dict(bundled="absent.safetensors", hf_hub_id="rep3d-test/absent", sha256="0" * 64)
    registered = dict(architecture="rep3d_tiny", input_size=(1, 64, 64), num_classes=source.num_classes, **cfg)
    model = tiny(pretrained=True, pretrained_cfg=registered,
                 pretrained_cfg_overlay=dict(file=str(tmp_path / "mine" / "model.safetensors")))
    assert same_state(model, source) and hub.requests == []  # registered sha256 described the replaced file
    with pytest.raises(Rep3DWeightsError) as info:
        tiny(pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "nope.safetensors")))
    assert info.value.reason == "not_found" and "nope.safetensors" in info.value.source


def test_missing_and_unexpected_keys_strict_and_non_strict(tmp_path):
    source = randomize(tiny())
    state = dict(source.state_dict())
    state.pop("encoder.norms.0.weight")
    state["encoder.extra.weight"] = torch.zeros(3)
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "w.safetensors"))
    overlay = dict(file=str(tmp_path / "w.safetensors"))
    with pytest.raises(Rep3DWeightsError) as info:
        tiny(pretrained=True, pretrained_cfg_overlay=overlay)
    message = str(info.value)
    assert info.value.reason == "keys" and "encoder.norms.0.weight" in message and "encoder.extra.weight" in message
    assert "pretrained_strict=False" in info.value.fix
    with pytest.warns(UserWarning, match="non-strict"):
        model = tiny(pretrained=True, pretrained_cfg_overlay=overlay, pretrained_strict=False)
    assert torch.equal(model.state_dict()["encoder.stages.0.0.dwconv.weight"],
                       source.state_dict()["encoder.stages.0.0.dwconv.weight"])


def test_checkpoint_path_accepts_wrapped_pickles_but_never_executes_code(tmp_path):
    source = randomize(tiny())
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    assert same_state(tiny(checkpoint_path=str(tmp_path / "ckpt.pth")), source)
    torch.save({"state_dict": source.state_dict(), "args": _Args()}, tmp_path / "unsafe.pth")
    with pytest.raises(Rep3DWeightsError) as info:
        tiny(checkpoint_path=str(tmp_path / "unsafe.pth"))
    assert info.value.reason == "unsafe" and "weights_only" in str(info.value)


class _Args:
    """A pickled object torch.load(weights_only=True) must refuse."""

    def __reduce__(self):
        return (pickle.loads, (pickle.dumps(0),))


# ----------------------------------------------------------------------------------------------------------- adapting

def test_different_num_classes_reinitialises_the_head_with_a_warning(tmp_path):
    source = randomize(tiny(num_classes=4))
    save_pretrained(source, tmp_path / "s", metadata={"class_names": ["bg", "a", "b", "c"]})
    with pytest.warns(UserWarning, match="re-initialised"):
        model = tiny(num_classes=2, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "s")))
    fresh, loaded = model.state_dict(), source.state_dict()
    assert fresh["decoder.out.conv.conv.weight"].shape[0] == 2
    assert all(torch.equal(fresh[k], loaded[k]) for k in fresh if not k.startswith("decoder.out."))
    # the cfg now describes this model: no class names of the old head, its own class count
    assert "class_names" not in model.pretrained_cfg and model.pretrained_cfg["num_classes"] == 2


@pytest.mark.parametrize("source_chans, target_chans", [(1, 3), (3, 1), (2, 6)])
def test_different_in_chans_adapts_the_input_convs(tmp_path, source_chans, target_chans):
    source = randomize(tiny(in_chans=source_chans))
    save_pretrained(source, tmp_path / "s")
    with pytest.warns(UserWarning, match="input channel"):
        model = tiny(in_chans=target_chans, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "s")))
    x = volume(1)
    with torch.no_grad():  # a volume repeated on every channel gives the pretrained output
        expected = source(x.repeat(1, source_chans, 1, 1, 1))
        got = model(x.repeat(1, target_chans, 1, 1, 1))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_train_weights_fold_into_a_deployed_model_and_not_back(tmp_path):
    source = randomize(tiny())
    save_pretrained(source, tmp_path / "train")
    deployed = tiny(deploy=True, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "train")))
    assert rep3d.models.is_deployed(deployed)
    with torch.no_grad():
        torch.testing.assert_close(deployed(volume()), source(volume()), rtol=1e-4, atol=1e-5)
    save_pretrained(deployed, tmp_path / "deploy")
    with pytest.raises(Rep3DWeightsError) as info:
        tiny(pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "deploy")))
    assert info.value.reason == "form" and "deploy=True" in info.value.fix


# --------------------------------------------------------------------------------------------------------- publishing

@pytest.mark.parametrize("deploy", [False, True])
def test_save_pretrained_round_trip_is_bit_exact_and_says_its_form(tmp_path, deploy):
    from huggingface_hub import ModelCard

    model = randomize(tiny(num_classes=3))
    if deploy:
        model = rep3d.reparameterize_model(model)
    folder = save_pretrained(model, tmp_path / "out", metrics={"mean_dice": 0.5}, command="rep3d train --x",
                             dataset="phantom", metadata={"synthetic": True, "class_names": ["bg", "l", "r"]})
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging folder left behind
    config = json.loads((folder / "config.json").read_text())
    assert config["rep3d"]["form"] == ("deploy" if deploy else "train")
    assert config["model_args"].get("deploy", False) is deploy and config["label_names"] == ["bg", "l", "r"]
    assert config["rep3d"]["metadata"]["roi_size"] == [64, 64, 64]
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "image-segmentation" and card.data.library_name == "rep3d"
    assert card.data.license == "apache-2.0" and "rep3d train --x" in card.text and "Synthetic" in card.text
    loaded = tiny(num_classes=3, deploy=deploy, pretrained=True, pretrained_cfg_overlay=dict(file=str(folder)))
    assert same_state(loaded, model)
    assert loaded.pretrained_cfg["roi_size"] == (64, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(volume()), model(volume()))


def test_save_pretrained_failure_leaves_the_target_as_it_was(tmp_path, monkeypatch):
    from rep3d.hub import publish

    model = tiny()
    target = save_pretrained(model, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(publish, "save_file", disk_full)  # the weights write fails half-way through the save
    for folder in (target, tmp_path / "new"):
        with pytest.raises(OSError, match="No space"):
            save_pretrained(randomize(tiny()), folder, overwrite=True)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_push_to_hub_uploads_the_save_pretrained_folder(tmp_path):
    uploaded = {}

    class FakeApi:  # stands in for huggingface_hub.HfApi (the upload endpoints are not emulated here)
        def create_repo(self, repo_id, **kwargs):
            uploaded["create"] = (repo_id, kwargs)

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            uploaded["files"] = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            uploaded["upload"] = (repo_id, kwargs)
            return "commit-info"

    model = rep3d.reparameterize_model(randomize(tiny()))
    assert rep3d.push_to_hub(model, "org/tiny", api=FakeApi(), private=True, metrics={"dice": 0.1}) == "commit-info"
    assert uploaded["create"] == ("org/tiny", {"repo_type": "model", "private": True, "exist_ok": True})
    assert sorted(uploaded["files"]) == ["README.md", "config.json", "model.safetensors"]
    assert uploaded["upload"][0] == "org/tiny" and "deploy form" in uploaded["upload"][1]["commit_message"]
    assert b"hf-hub:org/tiny" in uploaded["files"]["README.md"]
    assert json.loads(uploaded["files"]["config.json"])["model_args"]["deploy"] is True


@pytest.mark.parametrize("deploy", [False, True])
def test_publish_serve_and_create_hf_hub_model_gives_identical_outputs(hub, repo_id, tmp_path, deploy):
    source = randomize(tiny(num_classes=3))
    if deploy:
        source = rep3d.reparameterize_model(source)
    commit = publish(hub, source, repo_id, tmp_path, metadata={"class_names": ["bg", "l", "r"]})
    cache = tmp_path / "cache"
    model = rep3d.create_model(f"hf-hub:{repo_id}", pretrained=True, cache_dir=cache).eval()
    assert rep3d.models.is_deployed(model) is deploy and model.model_args.get("deploy", False) is deploy
    assert same_state(model, source) and model.pretrained_cfg["class_names"] == ["bg", "l", "r"]
    assert model.pretrained_cfg["roi_size"] == (64, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(volume()), source(volume()))
    hub.reset_requests()
    pinned = rep3d.create_model(f"hf-hub:{repo_id}@{commit}", pretrained=True, cache_dir=cache)
    assert same_state(pinned, source) and hub.requests == []


def test_timm_create_model_loads_a_rep3d_hub_repo(hub, repo_id, tmp_path):
    source = randomize(tiny(num_classes=3))
    publish(hub, source, repo_id, tmp_path)
    model = timm.create_model(f"hf-hub:{repo_id}", pretrained=True, cache_dir=tmp_path / "cache").eval()
    assert same_state(model, source) and tuple(model.pretrained_cfg["roi_size"]) == (64, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(volume()), source(volume()))


def test_hf_hub_config_of_a_foreign_model_is_refused(hub, repo_id, tmp_path):
    hub.publish(repo_id, {"config.json": json.dumps({"architecture": "resnet18"}).encode()})
    with pytest.raises(Rep3DWeightsError) as info:
        rep3d.create_model(f"hf-hub:{repo_id}", pretrained=True, cache_dir=tmp_path / "cache")
    assert info.value.reason == "config" and "resnet18" in str(info.value)


def test_environment_variables_read_at_import_in_a_fresh_process(hub, repo_id, tmp_path):
    """HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_CACHE set before import: offline with a warm cache works, no requests."""
    source = randomize(tiny())
    commit = publish(hub, source, repo_id, tmp_path)
    save_pretrained(source, tmp_path / "expected")
    script = textwrap.dedent(f"""
        import torch, rep3d
        from rep3d.hub import Rep3DWeightsError
        args = dict(kernel_size=3, widths=(4, 8, 16, 32), hidden_size=16, pretrained=True)
        model = rep3d.create_model("rep3d_tiny", pretrained_cfg_overlay=dict(hf_hub_id="{repo_id}"), **args)
        want = rep3d.create_model("rep3d_tiny", pretrained_cfg_overlay=dict(file=r"{tmp_path / 'expected'}"), **args)
        a, b = model.state_dict(), want.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        try:
            rep3d.create_model("rep3d_tiny", pretrained_cfg_overlay=dict(hf_hub_id="{repo_id}-other"), **args)
        except Rep3DWeightsError as err:
            assert err.reason == "offline", err
        else:
            raise AssertionError("an uncached repository loaded with HF_HUB_OFFLINE=1")
        print("ok")
    """)
    cache = tmp_path / "hf-cache"
    from huggingface_hub import hf_hub_download

    assert hf_hub_download(repo_id, "model.safetensors", cache_dir=cache).split(os.sep)[-2] == commit  # warm "main"
    hub.reset_requests()
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
    assert hub.requests == []
