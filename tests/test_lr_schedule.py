"""The learning-rate schedule, written once (rep3d.train.runtime.warmup_cosine) for rep3d train and nnU-Net."""

from __future__ import annotations

import pytest

from rep3d.train import build_config
from rep3d.train.runtime import lr_lambda, warmup_cosine


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    total, warmup, floor = 1000, 100, 0.01
    factors = [warmup_cosine(s, total, warmup, floor) for s in range(total)]
    assert factors[0] == pytest.approx(1 / warmup) and factors[warmup - 1] == pytest.approx(1.0)
    assert factors[warmup] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[warmup - 1:], factors[warmup:]))
    assert factors[warmup + (total - warmup) // 2] == pytest.approx(floor + (1 - floor) / 2)
    assert warmup_cosine(total, total, warmup, floor) == pytest.approx(floor)


def test_a_run_shorter_than_its_warmup_stays_in_warmup_instead_of_ending_at_the_peak_rate():
    # The nnU-Net trainer used to clamp the warm-up to the run's length: a 100-step run with 500 warm-up steps then
    # ramped up 5x faster and took its last step at the full rate, with no decay; rep3d train did not clamp.
    total, warmup, floor = 100, 500, 0.01
    factors = [warmup_cosine(s, total, warmup, floor) for s in range(total)]
    assert factors == pytest.approx([(s + 1) / warmup for s in range(total)])
    assert factors[-1] == pytest.approx(total / warmup)
    assert warmup_cosine(0, 1, warmup, floor) == pytest.approx(1 / warmup)


def test_the_rate_at_a_step_of_the_warmup_does_not_depend_on_the_run_length():
    assert warmup_cosine(9, 20, 50, 0.01) == warmup_cosine(9, 10_000, 50, 0.01)


def test_rep3d_train_reads_its_schedule_from_the_config():
    cfg = build_config("paper")
    factor = lr_lambda(cfg)
    for step in (0, cfg.warmup_steps - 1, cfg.warmup_steps, cfg.iterations // 2, cfg.iterations):
        assert factor(step) == warmup_cosine(step, cfg.iterations, cfg.warmup_steps, cfg.min_lr_ratio)
