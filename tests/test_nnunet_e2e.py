"""End to end inside nnU-Net v2 on tiny synthetic phantoms (SYNTHETIC data): raw layout -> fingerprint -> plan ->
preprocess -> ``rep3d nnunet-plans`` -> one training iteration with nnU-Net's stock trainer and with rep3d's debug
trainer -> ``nnUNetPredictor`` -> ``rep3d nnunet-export`` -> ``rep3d predict`` on the exported folder."""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nnunetv2") is None,
                                reason="nnunetv2 is not installed (pip install rep3d[nnunet] runs this test)")

DATASET_ID = 987
DATASET = f"Dataset{DATASET_ID}_Rep3DPhantom"
SHAPE = (32, 32, 32)  # X, Y, Z: equal to the rep3d patch, so both predictors run a single window
SPACING = (2.0, 2.0, 2.5)


def write_case(folder_images, folder_labels, name, seed):
    import nibabel as nib

    from rep3d.data.phantom import make_phantom

    ph = make_phantom(seed, SHAPE, SPACING, bowel_loops=1)
    nib.save(nib.Nifti1Image(ph.image.astype(np.float32), ph.affine), folder_images / f"{name}_0000.nii.gz")
    if folder_labels is not None:
        nib.save(nib.Nifti1Image(ph.label.astype(np.uint8), ph.affine), folder_labels / f"{name}.nii.gz")


@pytest.fixture(scope="module")
def nnunet_env(tmp_path_factory):
    """nnU-Net's three folders in a temporary directory, one data-augmentation process, the rep3d trainers."""
    root = tmp_path_factory.mktemp("nnunet")
    env = {"nnUNet_raw": root / "raw", "nnUNet_preprocessed": root / "preprocessed", "nnUNet_results": root / "results"}
    for path in env.values():
        path.mkdir()
    from rep3d.integrations.nnunet import TRAINER_DIR

    values = {**{k: str(v) for k, v in env.items()}, "nnUNet_n_proc_DA": "0", "nnUNet_compile": "f",
              "nnUNet_extTrainer": str(TRAINER_DIR), "OMP_NUM_THREADS": "1"}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    threads = torch.get_num_threads()
    yield root, env
    torch.set_num_threads(threads)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_rep3d_trains_predicts_and_exports_inside_nnunet(nnunet_env, tmp_path, monkeypatch, capsys):
    import nibabel as nib
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.run.run_training import get_trainer_from_args

    from rep3d.cli import main as rep3d_main
    from rep3d.data.phantom import PHANTOM_CLASSES

    root, env = nnunet_env
    raw = env["nnUNet_raw"] / DATASET
    images, labels, tests = raw / "imagesTr", raw / "labelsTr", root / "imagesTs"
    for folder in (images, labels, tests):
        folder.mkdir(parents=True)
    for i in range(3):
        write_case(images, labels, f"phantom_{i:03d}", seed=i)
    write_case(tests, None, "phantom_test", seed=100)
    generate_dataset_json(str(raw), {0: "CT"}, {name: i for i, name in enumerate(PHANTOM_CLASSES)}, 3, ".nii.gz",
                          dataset_name=DATASET, description="SYNTHETIC rep3d phantoms")

    # 1. fingerprint -> plan -> preprocess (nnU-Net's Python API, one process)
    extract_fingerprints([DATASET_ID], num_processes=1, show_progress_bar=False)
    os.environ["nnUNet_n_proc_DA"] = "1"  # noqa: SIM112 - nnU-Net's name; its planner sets threads from it
    plan_experiments([DATASET_ID])
    os.environ["nnUNet_n_proc_DA"] = "0"  # noqa: SIM112 - training: augment in the main process
    preprocess([DATASET_ID], configurations=("3d_fullres",), num_processes=(1,), show_progress_bar=False)
    plans_file = env["nnUNet_preprocessed"] / DATASET / "nnUNetPlans.json"

    # 2. rep3d nnunet-plans (kernel 7 keeps the test fast; the default is 21)
    assert rep3d_main(["nnunet-plans", "-d", str(DATASET_ID), "--kernel-size", "7", "--batch-size", "2"]) == 0
    plans = json.loads(plans_file.read_text())
    rep3d_cfg = plans["configurations"]["3d_fullres_rep3d"]
    assert rep3d_cfg["inherits_from"] == "3d_fullres" and all(s % 16 == 0 for s in rep3d_cfg["patch_size"])
    before = plans_file.read_bytes()
    assert rep3d_main(["nnunet-plans", "-d", str(DATASET_ID)]) == 1  # exists: refused, file untouched
    assert plans_file.read_bytes() == before

    # 3. one iteration with nnU-Net's own trainer on the rep3d configuration
    cpu = torch.device("cpu")
    stock = get_trainer_from_args(str(DATASET_ID), "3d_fullres_rep3d", "all", "nnUNetTrainer", "nnUNetPlans",
                                  device=cpu)
    stock.num_epochs, stock.num_iterations_per_epoch, stock.num_val_iterations_per_epoch = 1, 1, 1
    stock.run_training()
    assert type(stock.network).__name__ == "Rep3DnnUNet"
    assert (stock.output_folder and os.path.isfile(os.path.join(stock.output_folder, "checkpoint_final.pth")))

    # 4. rep3d's debug trainer, found through nnUNet_extTrainer; it keeps OMP_NUM_THREADS on CPU
    torch.set_num_threads(2)
    trainer = get_trainer_from_args(str(DATASET_ID), "3d_fullres_rep3d", "all", "nnUNetTrainerRep3DDebug",
                                    "nnUNetPlans", device=cpu)
    assert torch.get_num_threads() == 1
    trainer.run_training()
    trainer.perform_actual_validation()
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and trainer.grad_clip == 1.0
    no_decay = [g for g in trainer.optimizer.param_groups if g["weight_decay"] == 0.0]
    assert no_decay and all(p.ndim <= 1 for g in no_decay for p in g["params"])
    fold_dir = root / "results" / DATASET / "nnUNetTrainerRep3DDebug__nnUNetPlans__3d_fullres_rep3d" / "fold_all"
    assert (fold_dir / "checkpoint_final.pth").is_file()

    # 5. nnU-Net's predictor on a new volume: same shape, affine, and labels within the label set
    predictor = nnUNetPredictor(use_mirroring=False, device=cpu, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(fold_dir.parent), use_folds=("all",))
    # Record the network's float32 logits for each window before nnU-Net accumulates them in float16.
    window_logits, predict_window = [], predictor._internal_maybe_mirror_and_predict

    def recording_predict(x):
        out = predict_window(x)
        window_logits.append(out[0].detach().clone())
        return out

    predictor._internal_maybe_mirror_and_predict = recording_predict
    nn_out = tmp_path / "nnunet_pred"
    nn_out.mkdir()  # the sequential predictor does not create it
    predictor.predict_from_files_sequential(str(tests), str(nn_out), save_probabilities=True)
    src = nib.load(tests / "phantom_test_0000.nii.gz")
    seg = nib.load(nn_out / "phantom_test.nii.gz")
    assert seg.shape == src.shape
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-4)
    assert set(np.unique(np.asarray(seg.dataobj))) <= set(range(len(PHANTOM_CLASSES)))

    # 6. rep3d nnunet-export, then rep3d predict on the exported folder: it reads the volume as nnU-Net does
    exported = tmp_path / "exported"
    assert rep3d_main(["nnunet-export", str(fold_dir), "-o", str(exported)]) == 0
    # a relative or ~ output: the printed path is where the files are (it named the unexpanded argument before)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert rep3d_main(["nnunet-export", str(fold_dir), "-o", "~/exported_home"]) == 0
    printed = capsys.readouterr().out.split("wrote ", 1)[1].split()[0]
    assert Path(printed).is_absolute() and Path(printed) == tmp_path / "exported_home"
    assert (Path(printed) / "config.json").is_file() and not (tmp_path / "~").exists()
    config = json.loads((exported / "config.json").read_text())
    meta = config["rep3d"]["metadata"]
    assert meta["axis_order"] == "zyx" and meta["normalization"][0]["scheme"] == "clip_zscore"
    assert not any("seg_layers" in k for k in __import__("safetensors.torch").torch.load_file(
        exported / "model.safetensors"))
    # 7. the way back: rep3d weights -> a file nnU-Net's own pretrained-weights loader accepts
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    pretrained = tmp_path / "rep3d_for_nnunet.pth"
    assert rep3d_main(["nnunet-pretrained", f"local-dir:{exported}", "-o", str(pretrained)]) == 0
    for p in stock.network.parameters():
        torch.nn.init.zeros_(p)
    load_pretrained_weights(stock.network, str(pretrained))
    ours_state, theirs_state = trainer.network.state_dict(), stock.network.state_dict()
    assert all(torch.equal(ours_state[k], theirs_state[k]) for k in ours_state if ".seg_layers." not in k)

    rep3d_out = tmp_path / "rep3d_pred"
    assert rep3d_main(["predict", f"local-dir:{exported}", str(tests / "phantom_test_0000.nii.gz"), "-o",
                       str(rep3d_out), "--device", "cpu", "--quiet", "--probabilities"]) == 0
    ours = nib.load(rep3d_out / "phantom_test_0000_seg.nii.gz")
    assert ours.shape == src.shape
    np.testing.assert_allclose(ours.affine, src.affine, atol=1e-4)
    # No resampling and one window: both predictors compute the softmax of the same float32 logits, the ones
    # nnU-Net's network gave for its window (stored [C, z, y, x]; ours are [x, y, z, C]).
    assert len(window_logits) == 1 and tuple(window_logits[0].shape[1:]) == src.shape[::-1]
    logits = window_logits[0].permute(3, 2, 1, 0).double()
    reference = torch.softmax(logits, dim=-1).numpy()
    mine = np.asarray(nib.load(rep3d_out / "phantom_test_0000_prob.nii.gz").dataobj)
    np.testing.assert_allclose(mine, reference, atol=2e-5)  # float32 rounding (it was 1e-3 off with the one-pass norm)
    # nnU-Net accumulates Gaussian-weighted logits in float16: two roundings (the weighted sum, then the division
    # by the same weight), each within 2**-11 of the value, so a logit moves by at most 2 * 2**-11 * |logit|, and
    # p_i = softmax_i moves by at most p_i * 2 * max_c |logit shift|. Where the weight underflows (the corners)
    # this bound does not hold, so compare the central half of the window, where the weight is >= 0.002.
    theirs = np.load(nn_out / "phantom_test.npz")["probabilities"].transpose(3, 2, 1, 0)
    centre = (slice(8, 24),) * 3
    shift = 2 * 2.0**-11 * logits.abs().amax(dim=-1, keepdim=True).numpy()
    bound = reference * 2 * shift + 1e-5
    assert np.all(np.abs(theirs[centre] - reference[centre]) <= bound[centre])


def test_rep3d_trainer_learning_rate_warms_up_then_decays_to_the_recipe_floor():
    from rep3d.integrations.nnunet.trainer import recipe_values, warmup_cosine

    recipe = recipe_values()
    total, warmup, floor = 1000, 100, recipe["min_lr_ratio"]
    factors = [warmup_cosine(s, total, warmup, floor) for s in range(total)]
    assert factors[0] == pytest.approx(1 / warmup) and factors[warmup - 1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[warmup - 1:], factors[warmup:]))
    assert warmup_cosine(total, total, warmup, floor) == pytest.approx(floor)


def test_rep3d_trainer_and_nnunet_trainer_share_one_learning_rate_schedule():
    from rep3d.integrations.nnunet import trainer as nnunet_trainer
    from rep3d.train import runtime

    assert nnunet_trainer.warmup_cosine is runtime.warmup_cosine
