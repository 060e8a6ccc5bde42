"""Project wiring: what the README promises is what CI runs and what the package ships."""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
import sys
from pathlib import Path

import tomllib

import rep3d

ROOT = Path(__file__).resolve().parents[1]


def _readme_bash_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def _ci_command() -> str:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [ln.strip() for ln in lines if "pytest" in ln and not ln.lstrip().startswith("#")]
    assert len(commands) == 1, f".ci/run should run exactly one test command, found {commands}"
    return commands[0]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = _readme_bash_lines()
    test_lines = [ln for ln in readme if "pytest" in ln and "pip install" in ln]
    assert test_lines, "README has no install-and-test command"
    assert _ci_command() == test_lines[0]


def test_readme_main_job_command_installs_and_runs_the_demo():
    main_job = [ln for ln in _readme_bash_lines() if "pip install" in ln and "pytest" not in ln][0]
    assert main_job.endswith("rep3d demo")
    assert "torch==2.14.1" in main_job and "-e ." in main_job


def test_ci_script_is_executable_and_fails_fast():
    ci = ROOT / ".ci" / "run"
    assert ci.stat().st_mode & 0o111, ".ci/run must be executable"
    assert "set -euo pipefail" in ci.read_text()


def test_readme_links_to_files_that_exist():
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(((?!https?://|#)[^)\s]+)\)", text):
        assert (ROOT / target.split("#")[0]).exists(), f"README links to missing {target}"


def test_readme_has_no_unfilled_placeholders():
    for doc in (ROOT / "README.md", ROOT / "benchmarks" / "README.md"):
        text = doc.read_text()
        leftovers = re.findall(r"^(?:[A-Z]+_)*[A-Z]{4,}(?:_[A-Z]+)*$", text, flags=re.M)
        assert not leftovers, f"{doc.name} still has placeholders {leftovers}"
        headings = re.split(r"^## ", text, flags=re.M)[1:]
        empty = [h.splitlines()[0] for h in headings if not "".join(h.splitlines()[1:]).strip()]
        assert not empty, f"{doc.name} has empty sections {empty}"


def test_bundled_weights_are_in_the_source_package():
    # that they also reach the wheel (package_data) is checked by tests/test_wheel.py on a built wheel
    bundled = Path(rep3d.__file__).parent / "weights"
    assert sorted(p.name for p in bundled.glob("*.safetensors")) == ["rep3d_tiny_phantom.safetensors"]
    assert (bundled / "rep3d_tiny_phantom.json").is_file() and (bundled / "rep3d_tiny_phantom.md").is_file()


def _third_party_imports() -> set[str]:
    """Top-level modules imported anywhere in rep3d/ that are neither rep3d nor the standard library."""
    names = set()
    for path in (ROOT / "rep3d").glob("**/*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n != "rep3d" and n not in sys.stdlib_module_names}


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_every_third_party_import_is_a_declared_requirement():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    declared = {_requirement_name(r) for r in config["options"]["install_requires"].split()}
    extras = {_requirement_name(r) for _, reqs in config["options.extras_require"].items() for r in reqs.split()}
    by_module = importlib.metadata.packages_distributions()
    undeclared = {}
    for module in sorted(_third_party_imports()):
        dists = {d.lower().replace("_", "-") for d in by_module.get(module, [module])}
        if not dists & (declared | extras):
            undeclared[module] = sorted(dists)
    assert not undeclared, f"imported by rep3d but not declared in setup.cfg: {undeclared}"


def test_the_declared_requirement_check_sees_a_missing_one():
    assert "PIL" in _third_party_imports()  # rep3d.data.figures draws with pillow
    assert "pillow" in importlib.metadata.packages_distributions()["PIL"]


def test_every_declared_pytest_marker_is_used():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    markers = [m.split(":")[0].strip() for m in config["markers"]]
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("*.py"))
    unused = [m for m in markers if f"pytest.mark.{m}" not in tests]
    assert not unused, f"markers declared in pyproject.toml and never used: {unused}"


def test_importing_the_command_line_prints_no_future_warning():
    """Every `rep3d` command imports rep3d.cli first: a third-party deprecation printed there (timm < 1.0.23 under
    torch 2.14 warns about torch.jit.interface) would precede every one-line error and every result."""
    import subprocess

    proc = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", "import rep3d.cli"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == ""
