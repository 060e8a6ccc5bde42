"""The context task's data obey its rule (a blob's label is the type of its own, nearest marker; both classes look
alike locally) and its study queue picks learning rates on validation Dice and runs the most informative runs first."""

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("benchmarks_context_task", BENCH / "context_task.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ct = _load()


@pytest.mark.parametrize("seed", range(5))
def test_each_blob_is_labelled_by_its_own_marker_which_is_nearer_than_the_other(seed):
    size, distance = 48, (20.0, 28.0)
    blobs, markers = ct.layout(np.random.default_rng([9, seed]), size, distance)
    for i in range(2):
        own = np.linalg.norm(blobs[i] - markers[i])
        other = np.linalg.norm(blobs[i] - markers[1 - i])
        assert distance[0] <= own <= distance[1] and other >= own + ct.GAP
    image, label = ct.make_case(np.random.default_rng([9, seed]), size, distance)
    for i in range(2):
        centre = tuple(np.rint(blobs[i]).astype(int))
        marker = tuple(np.rint(markers[i]).astype(int))
        bright = image[tuple(slice(c - ct.MARKER_HALF, c + ct.MARKER_HALF + 1) for c in marker)].mean() > 150
        assert label[centre] == (1 if bright else 2)
    # the two classes share intensity and noise: their means agree within the noise of a blob's voxel count
    blob_means = [image[label == c].mean() for c in (1, 2) if (label == c).any()]
    assert all(abs(m - ct.HU["blob"]) < 5 * ct.NOISE_HU / np.sqrt(200) for m in blob_means)
    assert set(np.unique(label)) <= {0, 1, 2}


def test_the_learning_rate_is_chosen_on_validation_dice_and_its_seeds_follow_its_sweep():
    args = argparse.Namespace(variants=list(ct.VARIANTS), lrs=[3e-4, 1e-3, 3e-3], seeds=[0, 1, 2],
                              stages=["check", "sweep", "seeds"], check_seeds=[0])
    runs = [{"variant": "vanilla", "seed": 0, "lr": 3e-4, "best_val": {"dice": 0.5}, "test_mean_dice": 0.1},
            {"variant": "vanilla", "seed": 0, "lr": 1e-3, "best_val": {"dice": 0.7}, "test_mean_dice": 0.1},
            {"variant": "vanilla", "seed": 0, "lr": 3e-3, "best_val": {"dice": 0.6}, "test_mean_dice": 0.9}]
    assert ct.chosen_lr(runs, "vanilla", args.lrs) == 1e-3  # validation decides, never the test Dice
    assert ct.chosen_lr(runs, "lrbm_additive", args.lrs) is None  # its sweep has not run
    order = ct.queue(args, runs)
    assert order[:2] == [("small_k3", 3e-3, 0, "check"), ("vanilla", 3e-3, 0, "check")]
    vanilla = [q for q in order if q[0] == "vanilla"]
    # seed 0 at the chosen rate is the sweep's own run, not trained twice
    assert [q[3] for q in vanilla] == ["check", "sweep", "sweep", "seeds", "seeds"]
    assert order.index(("vanilla", 1e-3, 2, "seeds")) < order.index(("lrbm_additive", 1e-3, 0, "sweep"))


def test_a_sweep_whose_best_rate_is_at_an_end_goes_on_past_that_end():
    def run(lr, dice, diverged=None):
        return {"variant": "vanilla", "seed": 0, "lr": lr, "best_val": {"dice": dice}, "diverged": diverged}

    lrs = [1e-3, 3e-3]
    runs = [run(1e-3, 0.5), run(3e-3, 0.6)]  # best at the top end: not chosen yet, 1e-2 is queued
    assert ct.swept_lrs(runs, "vanilla", lrs) == [1e-3, 3e-3, 1e-2]
    assert ct.chosen_lr(runs, "vanilla", lrs) is None
    assert ("vanilla", 1e-2, 0, "sweep") in ct.queue(
        argparse.Namespace(variants=["vanilla"], lrs=lrs, seeds=[0, 1], stages=["sweep", "seeds"], check_seeds=[0]),
        runs)
    runs.append(run(1e-2, 0.55))  # now inside the range: 3e-3 wins
    assert ct.chosen_lr(runs, "vanilla", lrs) == 3e-3
    # a top end that keeps winning stops after EXTEND steps; a diverged extension ends the sweep below it
    climbing = [run(lr, d) for lr, d in [(1e-3, .1), (3e-3, .2), (1e-2, .3), (3e-2, .4)]]
    assert ct.swept_lrs(climbing, "vanilla", lrs) == [1e-3, 3e-3, 1e-2, 3e-2]
    assert ct.chosen_lr(climbing, "vanilla", lrs) == 3e-2
    assert ct.chosen_lr([run(1e-3, .1), run(3e-3, .2), run(1e-2, 0.0, diverged="nan")], "vanilla", lrs) == 3e-3
    # the bottom end grows downwards the same way
    assert ct.swept_lrs([run(1e-3, .9), run(3e-3, .2)], "vanilla", lrs) == [3e-4, 1e-3, 3e-3]


def test_the_check_runs_its_pair_for_every_check_seed_and_nothing_else_when_asked():
    args = argparse.Namespace(variants=list(ct.VARIANTS), lrs=[3e-4, 1e-3], seeds=[0, 1], stages=["check"],
                              check_seeds=[0, 1, 2])
    assert ct.queue(args, []) == [(v, lr, seed, "check") for seed in (0, 1, 2) for v, lr in ct.CHECK]
