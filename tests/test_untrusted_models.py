"""A model folder or Hub repository from a stranger is data: nothing in it runs, and nothing in it changes what the
model computes without the caller asking.

Every test builds a hostile folder in ``tmp_path`` the way an attacker would (editing a real ``save_pretrained``
folder). A harmless pickle payload that would create a marker file proves that no code ran: the marker must be
absent. Size bombs run in a subprocess under ``resource.setrlimit`` and must fail fast with a ``Rep3DError``.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hub_server import HubServer

import rep3d
from rep3d.cli import main
from rep3d.errors import Rep3DError, Rep3DWeightsError

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(kernel_size=3, widths=(4, 8, 16, 32), hidden_size=16)
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Payload:
    """Unpickling this creates ``marker``: the stand-in for an attacker's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def write_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    return path


def tiny_folder(tmp_path: Path, name: str = "model", **kwargs) -> Path:
    torch.manual_seed(0)
    model = rep3d.create_model("rep3d_tiny", **{"num_classes": 3, **TINY, **kwargs})
    return rep3d.save_pretrained(model, tmp_path / name)


def edit_config(folder: Path, edit) -> Path:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def write_scan(path: Path, shape=(32, 32, 32)) -> Path:
    data = np.random.default_rng(0).normal(0, 100, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


# --- 1. critical: model_args never reach timm's factory -----------------------------------------------------------


@pytest.mark.parametrize("key, value", [
    ("checkpoint_path", "{evil}"),
    ("checkpoint_path", "evil.pth"),  # relative to the working directory, which is the folder below
    ("pretrained_cfg_overlay", {"file": "{evil}"}),
    ("pretrained_cfg", {"file": "{evil}"}),
    ("pretrained_strict", False),
    ("features_only", True),
    ("cache_dir", "{evil}"),
    ("pretrained", True),
])
def test_timm_factory_keys_in_model_args_are_refused_by_name_and_run_no_code(tmp_path, monkeypatch, key, value):
    marker = tmp_path / "PWNED"
    folder = tiny_folder(tmp_path)
    evil = write_pickle(folder / "evil.pth", marker)
    value = json.loads(json.dumps(value).replace("{evil}", str(evil)))
    edit_config(folder, lambda c: c["model_args"].update({key: value}))
    monkeypatch.chdir(folder)
    with pytest.raises(Rep3DWeightsError, match=key) as err:
        rep3d.create_model(f"local-dir:{folder}", pretrained=True)
    assert "factory option" in str(err.value) or "does not take" in str(err.value)
    assert not marker.exists()


def test_predict_on_a_folder_whose_config_names_a_pickle_runs_no_code(tmp_path):
    """The reported attack, end to end through the CLI: before, the payload ran and predict exited 0."""
    marker = tmp_path / "PWNED"
    folder = tiny_folder(tmp_path)
    evil = write_pickle(tmp_path / "evil.pth", marker)
    edit_config(folder, lambda c: c["model_args"].update(checkpoint_path=str(evil)))
    scan = write_scan(tmp_path / "scan.nii.gz")
    proc = subprocess.run([sys.executable, "-m", "rep3d", "predict", f"local-dir:{folder}", str(scan), "-o",
                           str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "checkpoint_path" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("command", ["export", "evaluate", "erf", "masks", "train"])
def test_every_command_that_builds_from_a_folder_refuses_factory_keys(tmp_path, command, capsys):
    marker = tmp_path / "PWNED"
    folder = tiny_folder(tmp_path)
    evil = write_pickle(tmp_path / "evil.pth", marker)
    edit_config(folder, lambda c: c["model_args"].update(checkpoint_path=str(evil)))
    model = f"local-dir:{folder}"
    argv = {
        "export": ["export", model, "--format", "torchscript", "-o", str(tmp_path / "m.ts")],
        "evaluate": ["evaluate", model, "--data", str(tmp_path)],
        "erf": ["erf", model, "-o", str(tmp_path / "erf.png")],
        "masks": ["masks", model, "-o", str(tmp_path / "masks.png")],
        "train": ["train", "--model", model, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")],
    }[command]
    if command == "train":
        from rep3d.data import write_msd_dataset

        write_msd_dataset(tmp_path / "data", num_train=2, num_test=0, seed=0, shape=(32, 32, 32), progress=False)
    assert main(argv) == 1
    assert "checkpoint_path" in capsys.readouterr().err
    assert not marker.exists()


# --- the Hub path, through the loopback Hub server (tests/hub_server.py) -------------------------------------------


@pytest.fixture(scope="module")
def server():
    srv = HubServer().start()
    yield srv
    srv.stop()


def hub_run(server: HubServer, tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter whose huggingface_hub talks to the loopback server (HF_ENDPOINT)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          env={**env(), "HF_ENDPOINT": server.endpoint, "HF_HOME": str(tmp_path / "hf"),
                               "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1", "HF_HUB_OFFLINE": "0"})


def test_hub_repo_with_checkpoint_path_in_the_cache_runs_no_code(server, tmp_path):
    """The attacker publishes a pickle next to the config and points checkpoint_path at where the HF cache will
    hold it; the user only runs create_model('hf-hub:...')."""
    marker = tmp_path / "PWNED"
    folder = tiny_folder(tmp_path)
    write_pickle(folder / "evil.pth", marker)
    repo = f"evil/m-{uuid.uuid4().hex[:8]}"
    snapshot = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots"
    edit_config(folder, lambda c: c["model_args"].update(checkpoint_path=str(snapshot / "COMMIT" / "evil.pth")))
    commit = server.publish(repo, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_args"]["checkpoint_path"] = str(snapshot / commit / "evil.pth")
    (folder / "config.json").write_text(json.dumps(config))
    commit = server.publish(repo, folder)
    proc = hub_run(server, tmp_path, f"""
        import huggingface_hub, rep3d
        huggingface_hub.hf_hub_download({repo!r}, "evil.pth", revision={commit!r})  # the pickle is in the cache
        rep3d.create_model("hf-hub:{repo}@{commit}", pretrained=True)
    """)
    assert proc.returncode == 1 and "Rep3DWeightsError" in proc.stderr and "checkpoint_path" in proc.stderr, \
        proc.stderr[-2000:]
    assert not marker.exists()


def test_hub_config_naming_another_weight_file_is_ignored(server, tmp_path):
    """pretrained_cfg.file / bundled / hf_hub_id / url in a Hub config do not choose the weights: the repository's
    own model.safetensors is loaded."""
    folder = tiny_folder(tmp_path)
    other = tiny_folder(tmp_path, "other", num_classes=3)
    with torch.no_grad():
        model = rep3d.create_model(f"local-dir:{other}", pretrained=True)
        for p in model.parameters():
            p.add_(1.0)
    other = rep3d.save_pretrained(model, tmp_path / "other2")
    edit_config(folder, lambda c: c["pretrained_cfg"].update(
        file=str(other / "model.safetensors"), bundled="../../../" + str(other / "model.safetensors"),
        hf_hub_id="someone/else", url="http://127.0.0.1:9/x"))
    repo = f"evil/m-{uuid.uuid4().hex[:8]}"
    commit = server.publish(repo, folder)
    proc = hub_run(server, tmp_path, f"""
        import rep3d, torch
        model = rep3d.create_model("hf-hub:{repo}@{commit}", pretrained=True)
        own = rep3d.create_model("local-dir:{folder}", pretrained=True)
        print("SAME" if all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                           own.state_dict().values())) else "DIFFERENT")
        print(model.pretrained_cfg["weights_source"])
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SAME" in proc.stdout and str(other) not in proc.stdout


# --- path confinement -------------------------------------------------------------------------------------------


def test_weights_symlinked_out_of_the_folder_are_refused(tmp_path):
    folder = tiny_folder(tmp_path)
    outside = tmp_path / "outside.safetensors"
    (folder / "model.safetensors").rename(outside)
    (folder / "model.safetensors").symlink_to(outside)
    with pytest.raises(Rep3DWeightsError, match="outside the model folder"):
        rep3d.create_model(f"local-dir:{folder}", pretrained=True)


@pytest.mark.parametrize("filename", ["../outside.safetensors", "/etc/passwd", "evil.pth", "sub/../../x.safetensors"])
def test_weight_file_entries_outside_the_folder_or_not_safetensors_are_refused(tmp_path, filename):
    folder = tiny_folder(tmp_path)
    edit_config(folder, lambda c: c["rep3d"]["weights"].update(file=filename))
    with pytest.raises(Rep3DWeightsError, match="weights.file"):
        rep3d.create_model(f"local-dir:{folder}", pretrained=True)


# --- 2. typed config classes ----------------------------------------------------------------------------------------


def test_config_classes_round_trip_and_refuse_unknown_or_missing_keys():
    from rep3d.configs.cfg import InputCfg, LabelCfg, ModelCfg, Provenance

    cfgs = [ModelCfg("rep3d_tiny", dict(TINY, num_classes=3)),
            InputCfg(1, (64, 64, 64), (2.0, 2.0, 2.5), (-125.0, 275.0), "RAS", "CT",
                     {"modality": "CT", "spacing_range": [1.0, 3.0], "foreground_fraction": 0.2}),
            LabelCfg(3, ("background", "liver", "spleen")),
            Provenance("hf-hub", None, "apache-2.0", True, "rep3d-phantom", "synthetic", None)]
    for cfg in cfgs:
        data = json.loads(json.dumps(cfg.to_dict()))
        assert data["version"] == 1
        assert type(cfg).from_dict(data) == cfg
        with pytest.raises(Rep3DError, match="unknown key"):
            type(cfg).from_dict({**data, "checkpoint_path": "x"})
        missing = dict(data)
        missing.pop(next(k for k in data if k != "version"))
        with pytest.raises(Rep3DError, match="missing key"):
            type(cfg).from_dict(missing)
        with pytest.raises(Rep3DError, match="version"):
            type(cfg).from_dict({**data, "version": 99})


def test_input_orientation_is_axis_codes_or_native():
    from rep3d.configs.cfg import InputCfg

    assert InputCfg(1, orientation="LPS").orientation == "LPS"
    assert InputCfg(1, orientation="native").orientation == "native"  # nnU-Net folders: the file's own axes
    for bad in ("$RAS", "RRS", "RA", "@x"):
        with pytest.raises(Rep3DError, match="orientation"):
            InputCfg(1, orientation=bad)


@pytest.mark.parametrize("distribution", [{"mean": float("nan")}, {"nested": {"a": 1}}, {"x": "y" * 1000},
                                          {"many": list(range(100))}, {"code": None}])
def test_training_distribution_must_be_a_flat_mapping_of_numbers_lists_or_short_strings(distribution):
    from rep3d.configs.cfg import InputCfg

    with pytest.raises(Rep3DError, match="training_distribution"):
        InputCfg(1, training_distribution=distribution)


def test_old_config_files_still_load_into_the_typed_classes():
    from rep3d.configs.folder import read_folder_config

    config = json.loads((ROOT / "rep3d/weights/rep3d_tiny_phantom.json").read_text())
    folder = read_folder_config(config, "phantom", "bundled", "registry")
    assert folder.model.architecture == "rep3d_tiny" and folder.model.args["widths"] == (12, 24, 48, 96)
    assert folder.labels.count == 9 and folder.labels.names[1] == "liver"
    assert folder.input.spacing == (2.0, 2.0, 2.5) and folder.input.orientation == "RAS"
    assert folder.provenance.synthetic is True and folder.provenance.license == "apache-2.0"
    assert folder.sha256 == config["rep3d"]["weights"]["sha256"]


# --- 3. sizes are bounded before anything is allocated ------------------------------------------------------------


BOMB_SCRIPT = """
import json, resource, sys, time
limit = 6 * 2**30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import rep3d
import rep3d.builder  # import rep3d is lazy: load timm and the model tree before the clock starts
from rep3d.errors import Rep3DError
results = {}
for name in sys.argv[1:]:
    start = time.perf_counter()
    try:
        model = rep3d.create_model("local-dir:" + name, pretrained=True)
        results[name] = ["built", time.perf_counter() - start]
    except Rep3DError as err:
        results[name] = ["Rep3DError", time.perf_counter() - start, str(err)]
    except BaseException as err:
        results[name] = [type(err).__name__, time.perf_counter() - start, str(err)[:300]]
print(json.dumps(results))
"""


def test_size_bombs_in_a_config_fail_fast_under_a_memory_limit(tmp_path):
    bombs = {
        "kernel": lambda c: c["model_args"].update(kernel_size=1001),
        "depths": lambda c: c["model_args"].update(depths=[100000, 1, 1, 1]),
        "classes": lambda c: (c["model_args"].update(num_classes=1000000), c.update(num_classes=1000000),
                              c["pretrained_cfg"].update(num_classes=1000000), c.pop("label_names", None)),
        "roi": lambda c: c["rep3d"]["metadata"].update(roi_size=[4096, 4096, 4096]),
        "widths": lambda c: c["model_args"].update(widths=[2048, 2048, 2048, 2048], kernel_size=63),
    }
    folders = [str(edit_config(tiny_folder(tmp_path, name), edit)) for name, edit in bombs.items()]
    proc = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, *folders], capture_output=True, text=True, env=env(),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for folder in folders:
        kind, seconds, *message = results[folder]
        assert kind == "Rep3DError", (folder, kind, message)
        assert seconds < 10, (folder, seconds)


def test_config_whose_class_count_differs_from_the_weights_is_refused_before_building(tmp_path):
    folder = tiny_folder(tmp_path)
    edit_config(folder, lambda c: (c["model_args"].update(num_classes=5), c.update(num_classes=5),
                                   c["pretrained_cfg"].update(num_classes=5), c.pop("label_names", None),
                                   c["rep3d"]["metadata"].pop("class_names", None)))
    with pytest.raises(Rep3DWeightsError, match="does not describe these weights"):
        rep3d.create_model(f"local-dir:{folder}", pretrained=True)


def test_caller_may_still_ask_for_head_and_input_adaptation(tmp_path):
    folder = tiny_folder(tmp_path)
    with pytest.warns(UserWarning, match="re-initialised"):
        model = rep3d.create_model(f"local-dir:{folder}", pretrained=True, num_classes=5)
    assert model.num_classes == 5
    with pytest.warns(UserWarning, match="input channel"):
        model = rep3d.create_model(f"local-dir:{folder}", pretrained=True, in_chans=2)
    assert model.in_chans == 2


def lying_pth(path: Path, replacements: list[tuple[tuple, tuple]]) -> Path:
    """A .pth of one 4-element tensor whose pickled size / stride tuples are replaced (storage unchanged)."""
    import io
    import zipfile

    torch.save({"encoder.downsample_layers.0.0.weight": torch.zeros(4)}, path)
    src, out = zipfile.ZipFile(io.BytesIO(path.read_bytes())), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                for old, new in replacements:
                    # the pickled tuple without protocol header, memo PUT and STOP
                    old_bytes, new_bytes = (pickle.dumps(t, protocol=2)[2:-3] for t in (old, new))
                    assert data.count(old_bytes) == 1
                    data = data.replace(old_bytes, new_bytes)
            dst.writestr(info, data)
    path.write_bytes(out.getvalue())
    return path


@pytest.mark.parametrize("replacements", [
    [((4,), (400000000,))],  # size past the storage's end
    [((4,), (1000000, 1000000)), ((1,), (0, 0))],  # 1e12 elements over 4 stored values through zero strides
])
def test_pth_whose_tensors_claim_more_elements_than_their_storage_is_refused(tmp_path, replacements):
    path = lying_pth(tmp_path / "lying.pth", replacements)
    model = rep3d.create_model("rep3d_tiny", **TINY)
    with pytest.raises(Rep3DWeightsError, match="storage holds"):
        rep3d.hub.load_checkpoint(model, path)


# --- 4. a config cannot change what the model computes ----------------------------------------------------------


def test_pretrained_strict_false_in_a_config_does_not_loosen_loading(tmp_path):
    folder = tiny_folder(tmp_path)
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    state.pop("decoder.out.conv.conv.bias")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    edit_config(folder, lambda c: (c["pretrained_cfg"].update(pretrained_strict=False),
                                   c["model_args"].update(pretrained_strict=False),
                                   c["rep3d"]["weights"].pop("sha256")))
    with pytest.raises(Rep3DWeightsError, match="pretrained_strict"):  # before: loaded with the head bias random
        rep3d.create_model(f"local-dir:{folder}", pretrained=True)
    edit_config(folder, lambda c: c["model_args"].pop("pretrained_strict"))
    with pytest.raises(Rep3DWeightsError, match="missing"):  # in pretrained_cfg it is ignored: the load stays strict
        rep3d.create_model(f"local-dir:{folder}", pretrained=True)
    model = rep3d.create_model(f"local-dir:{folder}", pretrained=True, pretrained_strict=False)  # the caller asks
    assert model.num_classes == 3


@pytest.mark.parametrize("key, value", [("intensity_window", "[-Infinity, 275]"), ("intensity_window", "[1e999, 2]"),
                                        ("spacing", "[NaN, 1, 1]"), ("spacing", "[0, 1, 1]"),
                                        ("intensity_window", "[300, 100]")])
def test_non_finite_or_empty_window_and_spacing_are_refused(tmp_path, key, value):
    folder = tiny_folder(tmp_path)
    text = (folder / "config.json").read_text()
    config = json.loads(text)
    config["rep3d"]["metadata"][key] = "PLACEHOLDER"
    (folder / "config.json").write_text(json.dumps(config).replace('"PLACEHOLDER"', value))
    # NaN / Infinity tokens are not JSON: the parser refuses them; 1e999 parses to inf and the schema refuses it
    with pytest.raises(Rep3DWeightsError, match=f"{key}|not a number JSON allows"):
        rep3d.create_model(f"local-dir:{folder}", pretrained=True)


# --- 5. strings written into a MONAI bundle are data ----------------------------------------------------------------


def test_exported_monai_bundle_runs_no_injected_expression(tmp_path):
    from monai.bundle import run as run_bundle

    from rep3d.export.monai_bundle import write_monai_bundle

    marker = tmp_path / "PWNED"
    inject = f"$open({str(marker)!r}, 'w')"
    model = rep3d.create_model("rep3d_tiny", num_classes=2, **TINY).eval()
    model.pretrained_cfg.update(orientation=inject)
    with pytest.raises(Rep3DError, match="orientation"):
        write_monai_bundle(model, tmp_path / "refused", roi=(32, 32, 32))
    model.pretrained_cfg.update(orientation="RAS", class_names=[inject, f"@{inject}"], description=inject,
                                dataset=f"%{marker}#x", spacing=(2.0, 2.0, 2.0), intensity_window=(-100.0, 100.0),
                                metrics={"_target_": 1.0})
    bundle = write_monai_bundle(rep3d.reparameterize_model(model), tmp_path / "bundle", roi=(32, 32, 32))
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    strings = json.dumps(meta)
    assert '"$' not in strings and '"@' not in strings and '"%' not in strings
    (tmp_path / "in").mkdir()
    write_scan(tmp_path / "in" / "case.nii.gz")
    run_bundle(run_id="run", config_file=str(bundle / "configs/inference.json"),
               meta_file=str(bundle / "configs/metadata.json"), bundle_root=str(bundle),
               dataset_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"))
    assert (tmp_path / "out" / "case_seg.nii.gz").is_file()
    assert not marker.exists()


# --- 6. printing, re-saving, caps -----------------------------------------------------------------------------------


def test_control_characters_from_a_folder_are_never_printed(tmp_path):
    folder = tiny_folder(tmp_path)
    fake = "\x1b[2J\x1b[H\x1b]0;title\x07verified: weights OK"
    edit_config(folder, lambda c: (c.update(label_names=[fake, "a", "b"]), c["rep3d"]["metadata"].update(
        class_names=[fake, "a", "b"], description=fake)))
    model = rep3d.create_model(f"local-dir:{folder}", pretrained=True)
    assert not any("\x1b" in str(v) or "\x07" in str(v) for v in model.pretrained_cfg.values())
    edit_config(folder, lambda c: c.update(architecture="\x1b[2Jrep3d_tiny"))
    proc = subprocess.run([sys.executable, "-m", "rep3d", "erf", f"local-dir:{folder}", "-o", str(tmp_path / "e")],
                          capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 1 and "architecture" in proc.stderr
    assert "\x1b" not in proc.stderr + proc.stdout


def test_html_in_a_folder_is_escaped_in_the_resaved_card(tmp_path):
    folder = tiny_folder(tmp_path)
    script = "<script>alert(1)</script>"
    edit_config(folder, lambda c: (c.update(label_names=[script, "a", "b"]), c["rep3d"]["metadata"].update(
        class_names=[script, "a", "b"], dataset=script), c["pretrained_cfg"].update(description=script)))
    model = rep3d.create_model(f"local-dir:{folder}", pretrained=True)
    card = (rep3d.save_pretrained(model, tmp_path / "resaved") / "README.md").read_text()
    assert "<script>" not in card and "&lt;script&gt;" in card


BIG_CONFIG_SCRIPT = """
import resource, sys, time
limit = 6 * 2**30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import rep3d
from rep3d.errors import Rep3DError
for folder in sys.argv[1:]:
    start = time.perf_counter()
    try:
        rep3d.create_model("local-dir:" + folder, pretrained=True)
        print("BUILT", folder)
    except Rep3DError as err:
        print("Rep3DError", round(time.perf_counter() - start, 2), str(err).splitlines()[0])
    except BaseException as err:
        print(type(err).__name__, folder)
"""


def test_huge_or_deeply_nested_configs_are_refused_with_a_clear_error(tmp_path):
    big, deep = tmp_path / "big", tmp_path / "deep"
    big.mkdir()
    deep.mkdir()
    (big / "config.json").write_text("{" + " " * (8 * 2**20) + "}")
    (deep / "config.json").write_text('{"a": ' + "[" * 100000 + "]" * 100000 + "}")
    proc = subprocess.run([sys.executable, "-c", BIG_CONFIG_SCRIPT, str(big), str(deep)], capture_output=True,
                          text=True, env=env(), timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("Rep3DError") for line in lines), proc.stdout + proc.stderr
    assert "bytes" in lines[0] and "nested" in lines[1]


def test_timm_create_model_on_a_folder_loads_only_the_folders_own_weights(tmp_path):
    """timm's own loader reads the config (``timm.create_model("local-dir:...")``): a source the file names is
    dropped, and factory keys in its model_args are refused as through rep3d.create_model."""
    import timm

    folder = tiny_folder(tmp_path)
    other = tiny_folder(tmp_path, "other")
    with torch.no_grad():
        model = rep3d.create_model(f"local-dir:{other}", pretrained=True)
        for p in model.parameters():
            p.add_(1.0)
    rep3d.save_pretrained(model, tmp_path / "other2")
    edit_config(folder, lambda c: c["pretrained_cfg"].update(hf_hub_filename="../other2/model.safetensors",
                                                             bundled="../other2/model.safetensors"))
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    own = rep3d.create_model(f"local-dir:{folder}", pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), own.state_dict().values()))
    marker = tmp_path / "PWNED"
    evil = write_pickle(tmp_path / "evil.pth", marker)
    edit_config(folder, lambda c: c["model_args"].update(checkpoint_path=str(evil)))
    with pytest.raises(Rep3DError, match="checkpoint_path"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert not marker.exists()


@pytest.mark.parametrize(("key", "value"), [("pretrained_strict", False), ("features_only", True)])
def test_timm_create_model_refuses_factory_options_a_folder_config_sets(tmp_path, key, value):
    """timm merges a folder config's model_args into the caller's keyword arguments; a loading option set there
    (non-strict loading that would leave layers random, a different model) is refused as rep3d.create_model does,
    while the caller may still pass the same option in code."""
    import timm

    folder = tiny_folder(tmp_path)
    edit_config(folder, lambda c: c["model_args"].update({key: value}))
    with pytest.raises(Rep3DError, match=key):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    clean = tiny_folder(tmp_path, "clean")
    assert timm.create_model(f"local-dir:{clean}", pretrained=True, **{key: value}) is not None
