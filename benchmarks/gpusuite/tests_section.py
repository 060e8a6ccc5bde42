"""Section 1, ``gpu_tests``: the GPU-marked tests of tests/test_gpu.py, with junit XML, log and counts."""


import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpusuite.common import Suite  # noqa: E402

# ---------------------------------------------------------------------------------------------------- 1. tests


def section_gpu_tests(suite: Suite, deadline: float) -> dict:
    xml_path, log_path = suite.out / "pytest_gpu.xml", suite.out / "pytest_gpu.log"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-v",
        "-rA",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml_path}",
        str(ROOT / "tests" / "test_gpu.py"),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if suite.device.type == "cpu":
        env["REP3D_TEST_DEVICE"] = "cpu"  # the dry run: the same tests on CPU where they are cheap
    timeout = max(1.0, deadline - time.perf_counter())
    with open(log_path, "w") as log:
        try:
            rc = subprocess.run(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            return {
                "status": "timeout",
                "reason": f"pytest ran past its {timeout:.0f} s budget; see pytest_gpu.log",
                "command": " ".join(cmd[1:]),
            }
    out: dict = {"command": "python " + " ".join(cmd[1:]), "returncode": rc}
    if xml_path.exists():
        suite_el = ET.parse(xml_path).getroot()
        suite_el = suite_el if suite_el.tag == "testsuite" else suite_el.find("testsuite")
        cases = []
        for case in suite_el.iter("testcase"):
            outcome = "passed"
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    cases.append(
                        {"name": case.get("name"), "outcome": outcome, "message": (el.get("message") or "")[:300]}
                    )
                    break
            else:
                cases.append({"name": case.get("name"), "outcome": outcome, "time_s": float(case.get("time", 0))})
        counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
        out.update(counts=counts, cases=cases)
    out["status"] = "ok" if rc == 0 else "failed"
    return out


