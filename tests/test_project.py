"""Project wiring: what the README promises is what CI runs and what the package ships."""

from __future__ import annotations

import re
from pathlib import Path

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


def test_bundled_weights_ship_as_package_data():
    setup = (ROOT / "setup.cfg").read_text()
    assert "weights/*.safetensors" in setup or "*.safetensors" in setup
    bundled = Path(rep3d.__file__).parent / "weights"
    assert sorted(p.name for p in bundled.glob("*.safetensors")) == ["rep3d_tiny_phantom.safetensors"]
