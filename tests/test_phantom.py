"""Synthetic phantom generator, MSD writer / reader and the ``rep3d phantom`` sub-command."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

from rep3d.cli import main
from rep3d.data import (
    PHANTOM_CLASSES,
    PHANTOM_HU,
    PHANTOM_SETTINGS,
    MSDLayoutError,
    load_msd_dataset,
    make_phantom,
    save_overlay_png,
    write_msd_dataset,
)
from rep3d.data import phantom as phantom_mod
from rep3d.data.phantom import case_seed
from rep3d.errors import Rep3DValueError

SMALL = (48, 48, 40)
SMALL_SPACING = (4.0, 4.0, 5.0)  # the same field of view as the default 96x96x80 @ 2x2x2.5 mm


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _centroid_world(label: np.ndarray, affine: np.ndarray, k: int) -> np.ndarray:
    ijk = np.argwhere(label == k).mean(0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def test_same_seed_gives_identical_phantom_and_other_seeds_differ():
    a, b, c = (
        make_phantom(3, SMALL, SMALL_SPACING),
        make_phantom(3, SMALL, SMALL_SPACING),
        make_phantom(4, SMALL, SMALL_SPACING),
    )
    assert (
        np.array_equal(a.image, b.image)
        and np.array_equal(a.label, b.label)
        and np.array_equal(a.affine, b.affine)
    )
    assert not np.array_equal(a.label, c.label)
    assert (
        a.image.dtype == np.float32 and a.label.dtype == np.uint8 and a.image.shape == a.label.shape == SMALL
    )


def test_phantom_is_identical_in_a_fresh_process():
    code = (
        "import hashlib, numpy as np; from rep3d.data import make_phantom; "
        f"p = make_phantom(11, {SMALL}, {SMALL_SPACING}); h = hashlib.sha256(); "
        "h.update(np.ascontiguousarray(p.image).tobytes()); "
        "h.update(np.ascontiguousarray(p.label).tobytes()); "
        "print(h.hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    p = make_phantom(11, SMALL, SMALL_SPACING)
    assert out == _digest(p.image, p.label)


def test_affine_is_ras_with_the_requested_spacing_and_centred_volume():
    p = make_phantom(0, SMALL, SMALL_SPACING)
    assert np.allclose(p.affine[:3, :3], np.diag(SMALL_SPACING))
    centre = p.affine @ np.array([*((np.array(SMALL) - 1) / 2), 1.0])
    assert np.allclose(centre[:3], 0.0)
    assert nib.aff2axcodes(p.affine) == ("R", "A", "S")


def test_default_phantom_has_every_class_with_plausible_size_and_intensity():
    t0 = time.perf_counter()
    p = make_phantom(5)  # default 96x96x80 @ 2x2x2.5 mm
    elapsed = time.perf_counter() - t0
    assert p.image.shape == (96, 96, 80)
    assert elapsed < 3.0, f"make_phantom took {elapsed:.2f}s at 96x96x80 (budget ~1 s)"
    assert len(PHANTOM_CLASSES) >= 7 and PHANTOM_CLASSES[0] == "background"
    counts = np.bincount(p.label.ravel(), minlength=len(PHANTOM_CLASSES))
    assert len(counts) == len(PHANTOM_CLASSES)
    for k, name in enumerate(PHANTOM_CLASSES[1:], start=1):
        assert 500 < counts[k] < 60_000, f"{name}: {counts[k]} voxels"
        # erode by requiring all 6 neighbours inside -> away from partial-volume edges
        m = p.label == k
        core = m.copy()
        for ax in range(3):
            core &= np.roll(m, 1, ax) & np.roll(m, -1, ax)
        mean = float(p.image[core].mean())
        assert abs(mean - PHANTOM_HU[name]) < 25, f"{name}: mean {mean:.1f} HU vs table {PHANTOM_HU[name]}"
    assert counts[0] > 0.8 * p.label.size
    assert p.image.min() < -900 and p.image.max() > 500  # air and bone are present


def test_kidneys_look_alike_and_differ_only_by_side():
    right, left = PHANTOM_CLASSES.index("right_kidney"), PHANTOM_CLASSES.index("left_kidney")
    vols, hus, xs = {right: [], left: []}, {right: [], left: []}, {right: [], left: []}
    for seed in range(8):
        p = make_phantom(seed, SMALL, SMALL_SPACING, noise_std=0.0)
        for k in (right, left):
            vols[k].append((p.label == k).sum())
            hus[k].append(p.image[p.label == k].mean())
            xs[k].append(_centroid_world(p.label, p.affine, k)[0])
    # RAS: the patient's right is +x
    assert min(xs[right]) > 10 and max(xs[left]) < -10
    # mirror-symmetric positions, same size and contrast distribution
    assert abs(np.mean(xs[right]) + np.mean(xs[left])) < 5
    assert 0.8 < np.mean(vols[right]) / np.mean(vols[left]) < 1.25
    assert abs(np.mean(hus[right]) - np.mean(hus[left])) < 10
    assert PHANTOM_HU["right_kidney"] == PHANTOM_HU["left_kidney"]


def test_default_setting_still_generates_the_phantoms_the_bundled_weights_were_tested_on():
    # digest of this case before phantom settings existed: a change here silently changes the demo, the bundled
    # weights' test set and every recorded Dice
    p = make_phantom(case_seed(0, "test", 0), (40, 40, 32), phantom_mod.DEFAULT_SPACING)
    digest = hashlib.sha256(p.image.tobytes() + p.label.tobytes()).hexdigest()
    assert digest == "0df8e4dd24bf24a0755ad2e6660e17817f427559a6508aeb51855b1d021bc798"


def test_hard_setting_keeps_the_anatomy_and_removes_the_intensity_cues():
    liver, spleen = PHANTOM_CLASSES.index("liver"), PHANTOM_CLASSES.index("spleen")
    hard = PHANTOM_SETTINGS["hard"]
    steady = {  # the two settings without the per-volume jitter, so one seed shows the table's effect
        "easy": dataclasses.replace(PHANTOM_SETTINGS["default"], organ_jitter=0.0),
        "hard": dataclasses.replace(hard, organ_jitter=0.0),
    }
    for seed in range(2):
        cases = {k: make_phantom(seed, SMALL, SMALL_SPACING, noise_std=0.0, blur_sigma=0.0, setting=v)
                 for k, v in steady.items()}
        np.testing.assert_array_equal(cases["easy"].label, cases["hard"].label)
        organs = [k for k in range(1, len(PHANTOM_CLASSES)) if (cases["easy"].label == k).any()]
        means = {name: {k: float(p.image[p.label == k].mean()) for k in organs} for name, p in cases.items()}
        assert np.std(list(means["hard"].values())) < 0.5 * np.std(list(means["easy"].values())), means
        assert means["easy"][liver] - means["easy"][spleen] == pytest.approx(15.0)
        assert means["hard"][liver] == pytest.approx(means["hard"][spleen])  # position-only pair
    assert hard.noise_range[0] > PHANTOM_SETTINGS["default"].noise_range[1]
    assert hard.organ_jitter > PHANTOM_SETTINGS["default"].organ_jitter


def test_unknown_phantom_setting_names_the_choices():
    with pytest.raises(Rep3DValueError, match="default.*hard"):
        make_phantom(0, SMALL, SMALL_SPACING, setting="harder")


def test_hard_dataset_records_its_setting(tmp_path):
    root = write_msd_dataset(tmp_path / "hard", num_train=1, num_test=1, shape=SMALL, spacing=SMALL_SPACING,
                             setting="hard")
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["phantom"]["setting"]["name"] == "hard"
    assert "hard" in meta["description"]


def test_make_phantom_rejects_bad_shape_and_spacing():
    with pytest.raises(ValueError, match="shape"):
        make_phantom(0, (48, 48))
    with pytest.raises(ValueError, match="spacing"):
        make_phantom(0, SMALL, (1.0, 0.0, 1.0))


def test_write_msd_dataset_writes_a_valid_layout(tmp_path):
    root = write_msd_dataset(
        tmp_path / "ds", num_train=2, num_test=1, seed=7, shape=SMALL, spacing=SMALL_SPACING
    )
    meta = json.loads((root / "dataset.json").read_text())
    for key in (
        "name",
        "description",
        "tensorImageSize",
        "modality",
        "labels",
        "numTraining",
        "numTest",
        "training",
        "test",
    ):
        assert key in meta
    assert "synthetic" in meta["description"].lower() and meta["synthetic"] is True
    assert meta["tensorImageSize"] == "3D" and meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {str(k): n for k, n in enumerate(PHANTOM_CLASSES)}
    assert meta["numTraining"] == len(meta["training"]) == 2 and meta["numTest"] == len(meta["test"]) == 1
    assert all(isinstance(t, str) for t in meta["test"])  # MSD: test entries are plain image paths
    for entry in meta["training"] + meta["test_labeled"]:
        img, lab = nib.load(root / entry["image"]), nib.load(root / entry["label"])
        assert img.shape == lab.shape == SMALL
        assert np.allclose(img.affine, lab.affine) and nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert int(img.header["qform_code"]) == int(img.header["sform_code"]) == 1
        assert np.asanyarray(lab.dataobj).dtype == np.uint8 and np.asanyarray(img.dataobj).dtype == np.int16
        assert set(np.unique(np.asanyarray(lab.dataobj))) <= set(range(len(PHANTOM_CLASSES)))
    # the first training image is the rounded phantom of its case seed
    case = make_phantom(phantom_mod.case_seed(7, "train", 0), SMALL, SMALL_SPACING)
    assert np.array_equal(
        np.asanyarray(nib.load(root / "imagesTr/phantom_000.nii.gz").dataobj), np.rint(case.image)
    )
    # MONAI reads it as a decathlon datalist
    from monai.data import load_decathlon_datalist

    assert len(load_decathlon_datalist(str(root / "dataset.json"), data_list_key="training")) == 2
    assert len(load_decathlon_datalist(str(root / "dataset.json"), data_list_key="test_labeled")) == 1


def test_test_cases_do_not_depend_on_the_number_of_training_cases(tmp_path):
    a = write_msd_dataset(tmp_path / "a", num_train=1, num_test=1, seed=2, shape=SMALL, spacing=SMALL_SPACING)
    b = write_msd_dataset(tmp_path / "b", num_train=2, num_test=1, seed=2, shape=SMALL, spacing=SMALL_SPACING)
    la = json.loads((a / "dataset.json").read_text())["test_labeled"][0]["label"]
    lb = json.loads((b / "dataset.json").read_text())["test_labeled"][0]["label"]
    assert np.array_equal(np.asanyarray(nib.load(a / la).dataobj), np.asanyarray(nib.load(b / lb).dataobj))


def test_write_msd_dataset_refuses_to_overwrite(tmp_path):
    write_msd_dataset(tmp_path, num_train=1, num_test=0, shape=SMALL, spacing=SMALL_SPACING)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_msd_dataset(tmp_path, num_train=1, num_test=0, shape=SMALL, spacing=SMALL_SPACING)
    write_msd_dataset(tmp_path, num_train=1, num_test=0, shape=SMALL, spacing=SMALL_SPACING, overwrite=True)


def test_load_msd_dataset_splits_train_val_deterministically(tmp_path):
    write_msd_dataset(tmp_path, num_train=5, num_test=2, shape=SMALL, spacing=SMALL_SPACING)
    ds = load_msd_dataset(tmp_path, val_fraction=0.2, seed=1)
    assert len(ds.train) == 4 and len(ds.val) == 1 and len(ds.test) == 2 and len(ds.test_labeled) == 2
    assert ds.num_classes == len(PHANTOM_CLASSES) and ds.class_names[0] == "background" and ds.in_chans == 1
    assert ds.val == load_msd_dataset(tmp_path, val_fraction=0.2, seed=1).val
    names = {d["image"] for d in ds.train + ds.val}
    assert len(names) == 5 and all(p.startswith(str(tmp_path.resolve())) for p in names)
    assert len(load_msd_dataset(tmp_path, num_val=0).train) == 5


def test_load_msd_dataset_explains_what_is_wrong(tmp_path):
    with pytest.raises(MSDLayoutError, match="does not exist"):
        load_msd_dataset(tmp_path / "nowhere")
    with pytest.raises(MSDLayoutError, match="no dataset.json"):
        load_msd_dataset(tmp_path)
    write_msd_dataset(tmp_path, num_train=2, num_test=0, shape=SMALL, spacing=SMALL_SPACING)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    (tmp_path / "labelsTr/phantom_001.nii.gz").unlink()
    with pytest.raises(MSDLayoutError, match="1 file.*phantom_001"):
        load_msd_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "labels": {"0": "background", "2": "x"}}))
    with pytest.raises(MSDLayoutError, match="without gaps"):
        load_msd_dataset(tmp_path, check_files=False)
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "numTraining": 3}))
    with pytest.raises(MSDLayoutError, match="numTraining is 3"):
        load_msd_dataset(tmp_path, check_files=False)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(MSDLayoutError, match="not valid JSON"):
        load_msd_dataset(tmp_path)


def test_phantom_command_writes_dataset_and_preview(tmp_path, capsys):
    argv = [
        "phantom",
        str(tmp_path / "ds"),
        "--num-train",
        "1",
        "--num-test",
        "1",
        "--seed",
        "3",
        "--shape",
        *map(str, SMALL),
        "--spacing",
        *map(str, SMALL_SPACING),
        "--preview",
        str(tmp_path / "p.png"),
        "--quiet",
    ]
    assert main(argv) == 0
    assert (tmp_path / "ds/dataset.json").is_file() and (tmp_path / "p.png").stat().st_size > 1000
    assert "synthetic" in capsys.readouterr().out
    assert main(argv) == 1  # exists, no --overwrite
    err = capsys.readouterr().err
    assert err.startswith("rep3d phantom: error: ") and "--overwrite" in err and "Traceback" not in err


def test_overlay_png_has_one_row_per_map_and_checks_shapes(tmp_path):
    from PIL import Image

    p = make_phantom(0, SMALL, SMALL_SPACING)
    one = save_overlay_png(
        tmp_path / "a.png", p.image, p.label, spacing=SMALL_SPACING, class_names=PHANTOM_CLASSES
    )
    two = save_overlay_png(tmp_path / "b.png", p.image, p.label, prediction=p.label, spacing=SMALL_SPACING)
    h1, h2 = Image.open(one).size[1], Image.open(two).size[1]
    assert h2 > h1 * 1.3  # a third row
    rgb = np.asarray(Image.open(one).convert("RGB"))
    assert (np.abs(rgb[..., 0].astype(int) - rgb[..., 1]) > 60).any()  # coloured overlay present
    with pytest.raises(ValueError, match="differs from image shape"):
        save_overlay_png(tmp_path / "c.png", p.image, p.label[:-1])
    with pytest.raises(ValueError, match=r"3-D array"):
        save_overlay_png(tmp_path / "d.png", p.image[..., 0], None)


def test_a_phantom_given_only_a_shape_keeps_the_field_of_view_the_bundled_model_knows():
    # make_phantom(0, shape=(48, 48, 40)) used 2 x 2 x 2.5 mm voxels: a 96 mm abdomen with half-size organs, on which
    # the bundled model scored a mean Dice of 0.10 in the README and getting-started snippets
    small = make_phantom(0, (48, 48, 40))
    assert np.allclose(np.diag(small.affine)[:3], (4.0, 4.0, 5.0))
    assert phantom_mod.spacing_for_shape((96, 96, 80)) == phantom_mod.DEFAULT_SPACING
    assert np.allclose(np.asarray((48, 48, 40)) * np.diag(small.affine)[:3], phantom_mod.FIELD_OF_VIEW_MM)
    default = make_phantom(0)
    kidney = PHANTOM_CLASSES.index("left_kidney")
    volume_mm3 = [(p.label == kidney).sum() * np.prod(np.diag(p.affine)[:3]) for p in (small, default)]
    assert 0.8 < volume_mm3[0] / volume_mm3[1] < 1.25  # the same organ size in mm
    explicit = make_phantom(0, (48, 48, 40), (2.0, 2.0, 2.5))  # an explicit spacing is taken as given
    assert np.allclose(np.diag(explicit.affine)[:3], (2.0, 2.0, 2.5))
