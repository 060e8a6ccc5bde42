"""No command destroys a file it did not write.

Every writing command runs against hostile output paths: the working directory, the parent of its input, a file it
reads, a non-empty folder of someone else's files (with names that clash with the command's outputs), and a folder
of its own earlier outputs (with a foreign file added). Every file in the tree is hashed before and after: a file
that existed before may change only if it is one of the command's own earlier outputs; nothing is ever removed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import shutil
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import rep3d
from rep3d.cli import main
from rep3d.outputs import MARKER_NAME
from rep3d.presets import PHANTOM_CLASSES

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = dict(roi_size=(32, 32, 32), spacing=(3.0, 3.0, 3.5), intensity_window=(-125.0, 275.0), orientation="RAS",
           class_names=list(PHANTOM_CLASSES), modality="CT", tta_flip_axes=[])
ROI = ["32", "32", "32"]


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return rep3d.create_model("rep3d_tiny", num_classes=len(PHANTOM_CLASSES), kernel_size=5,
                              pretrained_cfg_overlay=dict(CFG)).eval()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A saved tiny model, a phantom scan and a 3-case MSD dataset, built once and copied into each test's tree."""
    from rep3d.data.phantom import make_phantom
    from tests.test_official import official_state

    root = tmp_path_factory.mktemp("sources")
    rep3d.save_pretrained(tiny_model(), root / "model")
    phantom = make_phantom(0, shape=(40, 36, 30))
    nib.save(nib.Nifti1Image(phantom.image.astype(np.int16), phantom.affine), root / "scan.nii.gz")
    assert main(["phantom", str(root / "dataset"), "--num-train", "2", "--num-test", "1", "--shape", "32", "32",
                 "32", "--quiet"]) == 0
    torch.save(official_state("rep3d"), root / "official.pth")
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# each command: argv given the output path and the tree; what its outputs are named (to plant clashing foreign files)
def _predict(out, t):
    return ["predict", f"local-dir:{t / 'data/model'}", str(t / "data/scan.nii.gz"), "-o", out, "--quiet",
            "--overwrite", "--device", "cpu"]


def _export(fmt, suffix):
    def argv(out, t):
        return ["export", f"local-dir:{t / 'data/model'}", "--format", fmt, "-o", out, "--overwrite", "--roi", *ROI]
    argv.suffix = suffix
    return argv


def _import_official(out, t):
    return ["import-official", str(t / "data/official.pth"), "-o", out, "--overwrite"]


def _phantom(out, t):
    return ["phantom", out, "--num-train", "1", "--num-test", "0", "--shape", "16", "16", "16", "--quiet",
            "--overwrite"]


def _erf(out, t):
    return ["erf", f"local-dir:{t / 'data/model'}", "-o", out, "--n-samples", "1", "--roi", *ROI, "--overwrite"]


def _masks(out, t):
    return ["masks", f"local-dir:{t / 'data/model'}", "-o", out, "--overwrite"]


def _evaluate(out, t):
    return ["evaluate", f"local-dir:{t / 'data/model'}", "--data", str(t / "data/dataset"), "--json", out,
            "--overwrite", "--device", "cpu"]


def _train(out, t):
    return ["train", "--data", str(t / "data/dataset"), "--out", out, "--model", "rep3d_tiny", "--iterations", "1",
            "--roi", *ROI, "--spacing", "3", "3", "3.5", "--val-every", "1", "--workers", "0", "--device", "cpu",
            "--model-arg", "kernel_size=5", "--crops-per-subject", "1", "--num-val", "1"]


def _nnunet_pretrained(out, t):
    return ["nnunet-pretrained", f"local-dir:{t / 'data/model'}", "-o", out, "--overwrite"]


def _nnunet_export(out, t):
    return ["nnunet-export", str(t / "data/nnunet/fold_0"), "-o", out, "--overwrite"]


# command -> (argv builder, output kind, clashing names planted in foreign folders)
COMMANDS = {
    "predict": (_predict, "folder", ["scan_seg.nii.gz", "scan_seg.json"]),
    "export-onnx": (_export("onnx", ".onnx"), "file", []),
    "export-torchscript": (_export("torchscript", ".ts"), "file", []),
    "export-exported-program": (_export("exported-program", ".pt2"), "file", []),
    "export-monai-bundle": (_export("monai-bundle", ""), "owned", ["configs/inference.json", "models/model.ts"]),
    "import-official": (_import_official, "owned", ["config.json", "model.safetensors"]),
    "phantom": (_phantom, "owned", ["imagesTr/phantom_000.nii.gz"]),
    "erf": (_erf, "prefix", ["erf_logits.json"]),
    "masks": (_masks, "prefix", ["masks.json"]),
    "evaluate-json": (_evaluate, "file", []),
    "train": (_train, "owned", ["config.json"]),
    "nnunet-pretrained": (_nnunet_pretrained, "file", []),
    "nnunet-export": (_nnunet_export, "owned", ["config.json", "model.safetensors"]),
}
SLOW_FIRST_RUN = {"train", "nnunet-export"}  # their own-output case is covered elsewhere (test_train, nnunet e2e)


def make_tree(tmp_path: Path, sources: Path, clashes: list[str]) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(sources, tree / "data")
    for folder in (tree / "work", tree / "foreign"):
        folder.mkdir(parents=True)
        (folder / "notes.txt").write_text("someone else's notes")
        for name in clashes:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text("someone else's file with rep3d's output name")
    return tree


def hostile_output(kind: str, case: str, tree: Path) -> str:
    """The output path for a hostile ``case``: ``cwd``, ``input_parent``, ``read_file`` or ``foreign_folder``."""
    if case == "cwd":
        return "."
    if case == "input_parent":
        return str(tree / "data")
    if case == "read_file":
        return str(tree / "data/model/model.safetensors")
    return str(tree / "foreign") if kind in ("folder", "owned", "prefix") else str(tree / "foreign/notes.txt")


def assert_nothing_foreign_changed(before: dict[str, str], after: dict[str, str], ours: set[str] = frozenset()):
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in before if k in after and before[k] != after[k] and k not in ours
                     and not k.endswith(MARKER_NAME))
    assert not removed, f"files removed: {removed}"
    assert not changed, f"files that rep3d did not write were changed: {changed}"


@pytest.mark.parametrize("case", ["cwd", "input_parent", "read_file", "foreign_folder"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_hostile_output_paths_never_change_a_file_rep3d_did_not_write(command, case, sources, tmp_path,
                                                                      monkeypatch, capsys):
    argv, kind, clashes = COMMANDS[command]
    tree = make_tree(tmp_path, sources, clashes)
    monkeypatch.chdir(tree / "work")
    before = snapshot(tree)
    code = main(argv(hostile_output(kind, case, tree), tree))
    err = capsys.readouterr().err
    assert_nothing_foreign_changed(before, snapshot(tree))
    if code != 0:  # refused: one line that says why, and nothing left behind
        assert "error:" in err and "Traceback" not in err
        assert not [p for p in tree.rglob("*") if ".tmp" in p.name]


OWN_OUTPUT = {"predict": "ours", "export-onnx": "ours/m.onnx", "export-torchscript": "ours/m.ts",
              "export-exported-program": "ours/m.pt2", "export-monai-bundle": "ours/bundle",
              "import-official": "ours/model", "phantom": "ours/dataset", "erf": "ours/erf", "masks": "ours/masks",
              "evaluate-json": "ours/dice.json", "nnunet-pretrained": "ours/weights.pth"}


@pytest.mark.parametrize("command", sorted(OWN_OUTPUT))
def test_overwrite_replaces_only_the_commands_own_earlier_outputs(command, sources, tmp_path, monkeypatch, capsys):
    argv, kind, clashes = COMMANDS[command]
    tree = make_tree(tmp_path, sources, clashes)
    monkeypatch.chdir(tree / "work")
    args = argv(str(tree / OWN_OUTPUT[command]), tree)
    assert main([a for a in args if a != "--overwrite"]) == 0, capsys.readouterr().err
    earlier = {k for k in snapshot(tree) if k.startswith("ours/")}
    assert earlier  # the first run wrote its outputs
    (tree / "ours" / "keep.txt").write_text("a file the user put next to the outputs")
    if (tree / OWN_OUTPUT[command]).is_dir():
        (tree / OWN_OUTPUT[command] / "keep.txt").write_text("a file the user put into the output folder")
    before = snapshot(tree)
    assert main(args) == 0, capsys.readouterr().err  # --overwrite: replaces the earlier outputs only
    assert_nothing_foreign_changed(before, snapshot(tree), ours=earlier)
    again = snapshot(tree)
    assert main([a for a in args if a != "--overwrite"]) == 1  # without --overwrite nothing is replaced
    assert "--overwrite" in capsys.readouterr().err
    assert snapshot(tree) == again


def test_models_json_never_replaces_a_file_rep3d_did_not_write(tmp_path, capsys):
    target = tmp_path / "notes.json"
    target.write_text("mine")
    assert main(["models", "rep3d_tiny", "--table", "--json", str(target), "--overwrite"]) == 1
    assert "was not written by rep3d" in capsys.readouterr().err and target.read_text() == "mine"


def test_export_never_writes_over_its_own_source_or_checkpoint(sources, tmp_path, capsys):
    tree = make_tree(tmp_path, sources, [])
    model = tree / "data/model"
    torch.save(tiny_model(1).state_dict(), tree / "data/ck.pt")
    before = snapshot(tree)
    for argv, why in (
            (["export", f"local-dir:{model}", "--format", "onnx", "-o", str(model / "model.safetensors")], "reads"),
            (["export", "rep3d_tiny", "--checkpoint", str(tree / "data/ck.pt"), "--format", "torchscript", "-o",
              str(tree / "data/ck.pt")], "reads"),
            (["export", f"local-dir:{model}", "--format", "exported-program", "-o", str(tree / "data")], "folder")):
        assert main([*argv, "--overwrite"]) == 1
        assert why in capsys.readouterr().err
    assert snapshot(tree) == before


def test_save_pretrained_into_a_trained_run_folder_needs_overwrite_and_keeps_other_files(tmp_path):
    from rep3d.errors import Rep3DValueError

    run = rep3d.save_pretrained(tiny_model(0), tmp_path / "run")
    (run / "train_state").mkdir()
    (run / "train_state" / "last.pt").write_bytes(b"checkpoint")
    (run / "notes.md").write_text("mine")
    before = snapshot(run)
    with pytest.raises(Rep3DValueError, match="pass --overwrite"):
        rep3d.save_pretrained(tiny_model(1), run)
    assert snapshot(run) == before
    rep3d.save_pretrained(tiny_model(1), run, overwrite=True)
    after = snapshot(run)
    assert after["notes.md"] == before["notes.md"] and after["train_state/last.pt"] == before["train_state/last.pt"]
    assert after["model.safetensors"] != before["model.safetensors"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(Rep3DValueError, match="non-empty folder rep3d did not create"):
        rep3d.save_pretrained(tiny_model(1), foreign, overwrite=True)
    assert (foreign / "config.json").read_text() == "{}"


def test_predict_never_segments_its_own_earlier_outputs(sources, tmp_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(sources / "scan.nii.gz", folder / "x.nii.gz")
    model = f"local-dir:{sources / 'model'}"
    for _ in range(3):
        assert main(["predict", model, str(folder), "-o", str(folder), "--quiet", "--overwrite"]) == 0
    names = sorted(p.name for p in folder.iterdir())
    assert names == [MARKER_NAME, "x.nii.gz", "x_seg.json", "x_seg.nii.gz"]
    assert main(["predict", model, str(folder / "x_seg.nii.gz"), "-o", str(tmp_path / "o"), "--quiet"]) == 1
    assert "is an output of rep3d predict" in capsys.readouterr().err


def test_saved_weights_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        run = rep3d.save_pretrained(tiny_model(), tmp_path / "run")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run.iterdir() if p.name != MARKER_NAME}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644, "README.md": 0o644}
    assert stat.S_IMODE(run.stat().st_mode) == 0o755


def test_a_full_disk_during_training_says_so_and_keeps_the_last_good_checkpoint(sources, tmp_path, monkeypatch,
                                                                                 capsys):
    from rep3d.train import checkpoint

    out = tmp_path / "run"
    argv = _train(str(out), tmp_path)
    argv[argv.index("--data") + 1] = str(sources / "dataset")
    argv[argv.index("--iterations") + 1] = "2"
    real_save, calls = torch.save, []

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:  # the first checkpoint fits; the disk is full at the second
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_the_disk_fills)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "disk holding" in err and "is full" in err and "kept" in err and "Traceback" not in err
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    state = checkpoint.load_state(out / "train_state" / "last.pt")
    assert state["step"] == 1
    assert not checkpoint.temp_files(out / "train_state" / "last.pt")


def _predict_in_child(model: str, scan: str, out: str) -> None:
    os._exit(main(["predict", model, scan, "-o", out, "--quiet", "--device", "cpu"]))


def test_four_concurrent_predict_runs_never_replace_each_others_outputs(sources, tmp_path, capfd):
    """Four runs with four models at once into one folder, two per input: per input exactly one run writes its
    outputs, the other is refused with one line (it never silently replaces the first), and the shared marker lists
    every file written."""
    models, scans = [], tmp_path / "scans"
    scans.mkdir()
    for i in range(4):
        models.append(rep3d.save_pretrained(tiny_model(i), tmp_path / f"model{i}"))
    for i in range(2):
        shutil.copy(sources / "scan.nii.gz", scans / f"case{i}.nii.gz")
    out = tmp_path / "out"
    # forked processes (rep3d already imported: an import per run would take most of the test's time)
    fork = multiprocessing.get_context("fork")
    runs = [fork.Process(target=_predict_in_child, args=(f"local-dir:{models[i]}", str(scans / f"case{i % 2}.nii.gz"),
                                                         str(out))) for i in range(4)]
    for r in runs:
        r.start()
    for r in runs:
        r.join(timeout=600)
    codes = [r.exitcode for r in runs]
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    assert sorted(codes) == [0, 0, 1, 1], err  # one winner per input; the loser says the output exists
    marker = json.loads((out / MARKER_NAME).read_text())["files"]
    assert sorted(marker) == sorted(f"case{i}_seg.{s}" for i in range(2) for s in ("json", "nii.gz"))
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER_NAME, *marker])  # no temporary leftovers
    for i in range(2):
        assert nib.load(out / f"case{i}_seg.nii.gz").shape == (40, 36, 30)
