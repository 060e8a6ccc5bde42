"""Start-up cost: `rep3d --help` and `import rep3d` must stay fast (a new user's first two commands).

Timed in subprocesses, interleaved and as medians, against `python -c pass` and `import torch` measured in the same
run, so that a loaded CI machine slows both sides alike; the margins are generous, the failures they catch are not
(before the lazy imports: `rep3d --help` 360x `python -c pass`, `import rep3d` torch + 5.5 s).
"""

import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "timm", "monai", "onnx", "huggingface_hub", "nibabel")


def _median_seconds(commands: dict[str, list[str]], repeats: int = 5) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, cmd in commands.items():
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _modules_after(code: str) -> set[str]:
    # the module list goes to stderr: a help text on stdout may name torch
    err = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules), file=sys.stderr)"],
                         check=True, capture_output=True, text=True).stderr
    return {name.split(".")[0] for name in err.split()}


def test_import_rep3d_loads_no_heavy_subsystem():
    assert not _modules_after("import rep3d") & set(HEAVY)


def test_help_and_version_load_no_heavy_subsystem():
    for argv in (["--help"], ["--version"], ["predict", "--help"], ["train", "--help"], ["export", "--help"]):
        loaded = _modules_after(f"import sys\nfrom rep3d.cli import main\ntry:\n    main({argv!r})\n"
                                "except SystemExit:\n    pass")
        assert not loaded & set(HEAVY), (argv, loaded & set(HEAVY))


def test_resume_of_a_folder_without_a_run_is_refused_before_monai_loads(tmp_path):
    argv = ["train", "--out", str(tmp_path / "no_run"), "--resume"]
    code = (f"from rep3d.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit as e:\n"
            "    assert e.code not in (0, None), e.code")
    loaded = _modules_after(code)
    assert "monai" not in loaded and "timm" not in loaded, loaded & set(HEAVY)


def test_rep3d_help_and_import_rep3d_are_fast_next_to_python_and_torch():
    py = sys.executable
    median = _median_seconds({
        "python": [py, "-c", "pass"],
        "torch": [py, "-c", "import torch"],
        "rep3d": [py, "-c", "import rep3d"],
        "help": [py, "-m", "rep3d", "--help"],
        "predict_help": [py, "-m", "rep3d", "predict", "--help"],
    })
    # the target is < 1 s; 10x a bare interpreter (~0.03 s here) or 1 s, whichever is more, holds on a busy machine
    limit = max(10 * median["python"], 1.0)
    assert median["help"] < limit and median["predict_help"] < limit, median
    assert median["rep3d"] < median["torch"] + 0.5, median


def test_timm_sees_rep3d_models_after_import_rep3d():
    # an availability probe (find_spec, as many libraries do) before the import must not use the hook up
    code = ("import importlib.util, rep3d\nassert importlib.util.find_spec('timm')\nimport timm\n"
            "assert 'rep3d_tiny' in timm.list_models('rep3d*')\n"
            "m = timm.create_model('rep3d_tiny', num_classes=3, kernel_size=5)\nprint(type(m).__name__)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "Rep3D"
    assert "torch.jit.interface" not in out.stderr  # the timm import warning rep3d hides


def test_version_is_the_package_version(capsys):
    import rep3d
    from rep3d.cli import main

    try:
        main(["--version"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert capsys.readouterr().out.strip() == f"rep3d {rep3d.__version__}"


def test_timm_first_imported_by_a_rep3d_module_still_registers_the_models():
    # rep3d.hub imports timm at its top: the registration must wait until rep3d.hub has finished importing (it met
    # rep3d.hub half-initialized and warned instead, and every such command printed that warning)
    code = "from rep3d.hub import save_pretrained\nimport timm\nprint('rep3d_tiny' in timm.list_models('rep3d*'))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "True" and "could not be registered" not in out.stderr, out.stderr
