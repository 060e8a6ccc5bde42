"""benchmarks/RESULTS.md and the results quoted in the README and the docs are what benchmarks/report.py renders from
the JSON in benchmarks/results/, and comparison sentences follow the paired statistics."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


report = _load("report")
stats = _load("significance")


def test_results_md_and_quoted_numbers_match_the_results_json():
    expected = report.render_all(report.Context())
    stale = [str(path.relative_to(ROOT)) for path, text in expected.items() if path.read_text() != text]
    assert not stale, f"{stale} differ from what the results JSON gives: run `python benchmarks/report.py`"


def test_a_changed_result_changes_the_rendered_page(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(BENCH / "results", results)
    runs = json.loads((results / "ablation_phantom_600.json").read_text())
    for run in runs:
        if run["variant"] == "lrbm_additive":
            run["test_mean_dice"] += 0.05  # a clear lead in every seed
    (results / "ablation_phantom_600.json").write_text(json.dumps(runs))
    before = report.render_results_md(report.Context())
    after = report.render_results_md(report.Context(results))
    assert before != after
    assert "`lrbm_additive` is ahead of `vanilla` (600 steps" in after


@pytest.mark.parametrize(("df", "q"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)])
def test_t_quantile_matches_tables(df, q):
    assert stats.t_quantile(0.975, df) == pytest.approx(q, abs=1e-4)


def test_paired_t_test_matches_a_hand_computed_case():
    # diffs 0.001, 0.006, 0.002: mean 0.003, sd 0.0026458, t = 1.9640 on 2 df, two-sided p = 0.18850
    result = stats.paired({0: 0.948, 1: 0.949, 2: 0.948}, {0: 0.947, 1: 0.943, 2: 0.946})
    assert result.n == 3
    assert result.diff.mean == pytest.approx(0.003)
    assert result.diff.half == pytest.approx(4.3027 * 0.0026458 / 3 ** 0.5, rel=1e-3)
    assert result.p == pytest.approx(0.18850, abs=1e-4)
    assert not result.separates


def test_comparison_says_ahead_only_when_the_interval_excludes_zero():
    tie = stats.paired({0: 0.80, 1: 0.90, 2: 0.70}, {0: 0.85, 1: 0.80, 2: 0.75})
    lead = stats.paired({0: 0.90, 1: 0.91, 2: 0.92}, {0: 0.80, 1: 0.80, 2: 0.81})
    assert "no difference at this budget" in stats.comparison("a", "b", tie, "100 steps")
    assert "ahead" not in stats.comparison("a", "b", tie, "100 steps")
    assert stats.comparison("a", "b", lead, "100 steps").startswith("`a` is ahead of `b`")
    assert stats.comparison("b", "a", stats.paired({0: 0.8, 1: 0.8, 2: 0.81}, {0: 0.9, 1: 0.91, 2: 0.92}),
                            "100 steps").startswith("`a` is ahead of `b`")


def test_splice_refuses_a_file_without_its_markers():
    with pytest.raises(SystemExit, match="report:model-advice"):
        report.splice("no markers here", "model-advice", "text", "README.md")


def test_the_compile_table_reports_the_median_ratio_and_a_recompile_per_size(tmp_path):
    rounds = [{"eager_s": 1.0, "compiled_s": c, "ratio": c} for c in (0.9, 1.1, 1.0, 1.05, 0.95)]
    (tmp_path / "compile_step.json").write_text(json.dumps({
        "model": "rep3d_tiny", "roi": 32, "batch": 1, "dynamic": "true", "threads": 1, "torch": "2.x",
        "load_average_start": 1.0, "load_average_end": 2.0,
        "rounds": rounds, "median_eager_s": 1.0, "median_compiled_s": 1.0, "median_ratio": 1.0,
        "first_compiled_step_s": 300.0, "unique_graphs": {"32": 3, "48": 5},
        "other_sizes": [{"roi": 48, "first_step_s": 250.0, "second_step_s": 2.0, "eager_step_s": 2.1,
                         "unique_graphs_after": 5}]}))
    text = report.render_compile_step(report.Context(tmp_path))
    assert "| rep3d_tiny 32³ (batch 1) | 1.000 | 1.000 | 1.00× | 0.90–1.10 | 300 | 3 |" in text
    assert "runs at 1.00× eager's speed" in text and "1.0 at the start → 2.0 at the end" in text
    assert "every new volume size compiles again" in text
    assert "Not measured yet" in report.render_compile_step(report.Context(tmp_path / "empty"))


def test_the_context_study_cost_counts_the_runs_left_and_their_core_hours():
    def run(variant, lr, seed, stage, iterations=100, sec=0.5, val=(0.5, 0.6, 0.7)):
        return {"variant": variant, "lr": lr, "seed": seed, "stage": stage, "seconds_per_step": sec,
                "config": {"iterations": iterations, "val_every": 10},
                "val_mean_dice": [[10 * (i + 1), d] for i, d in enumerate(val)]}

    plan = {"variants": ["a", "b"], "seeds": [0, 1, 2],
            "per_variant": {"a": {"chosen_lr": 0.01, "swept_lrs": [1e-3, 3e-3, 1e-2, 3e-2], "n_seeds": 2},
                            "b": {"chosen_lr": None, "swept_lrs": [3e-3], "n_seeds": 0}}}
    # a: its 4-point sweep and seed 1 done -> 1 left (seed 2); b: one sweep point (the check) -> 3 + 2 seeds left
    runs = [run("a", lr, 0, "sweep") for lr in (1e-3, 3e-3, 1e-2, 3e-2)] + [run("a", 0.01, 1, "seeds"),
                                                                            run("b", 3e-3, 0, "check", sec=1.5)]
    text = report.context_cost({"plan": plan, "runs": runs}, None)
    # plan: 2 variants x (4 + 2) = 12 runs; 6 left x 100 steps x median 0.5 s = 300 s
    assert "= 12 runs" in text and "6 are not run" in text and "median 0.50 s per step" in text
    assert f"{6 * 100 * 0.5 / 3600:.1f} core-hours at the current 100 steps" in text
    long = {"runs": [run("a", 0.01, s, "check", iterations=1000, val=(0.5, 0.70, 0.72, 0.71)) for s in (0, 1)]}
    text = report.context_cost({"plan": plan, "runs": runs}, long)
    # 12 runs x 1000 steps x median(0.5 x 6, 1.5, 0.5 x 2) = 0.5 s; the curves' last-20-step change is 0.01
    assert "changed by at most 0.010 over their last 20 steps" in text
    assert f"all 12 runs take {12 * 1000 * 0.5 / 3600:.1f} core-hours" in text


def _scan_row(model: str, pipeline: str, wall: float, flags: list[str]) -> dict:
    return {"model": model, "pipeline": pipeline, "precision": "fp32", "weights": "random (seed 0)",
            "allocator": "keep" if pipeline == "rep3d" else "default", "wall_s": wall, "windows": 10,
            "phases_s": {"infer": wall - 1.0}, "peak_rss_mib": 1000.0, "baseline_rss_mib": 500.0,
            "machine": {"torch": "2.14.1", "threads": 2, "cpu": "Some CPU", "cpu_flags": flags}}


def test_the_whole_scan_table_compares_only_rows_from_the_same_machine():
    render = _load("performance_doc").render_full_scan
    meta = {"scan": {"shape": [8, 8, 8], "spacing_mm": [1.0, 1.0, 1.0], "dtype": "int16 HU"}, "overlap": 0.5,
            "blend": "gaussian", "sw_batch_size": 1, "torch": "2.14.1", "threads": 2}
    same = render({"meta": meta, "rows": [_scan_row("m", "rep3d", 50.0, ["avx2"]),
                                          _scan_row("m", "monai", 100.0, ["avx2"])]})
    assert "took 0.50× MONAI's wall time" in same and "CPU |" not in same and "(CPU flags: avx2)" in same
    mixed = render({"meta": meta, "rows": [_scan_row("m", "rep3d", 50.0, ["avx2"]),
                                           _scan_row("m", "monai", 100.0, ["avx2", "avx512f"])]})
    assert "MONAI's wall time" not in mixed and "ran on different machines" in mixed
    assert "| CPU |" in mixed and "| A |" in mixed and "| B |" in mixed
