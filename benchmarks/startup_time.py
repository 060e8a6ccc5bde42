"""Start-up time of the ``rep3d`` command and of ``import rep3d``, against ``python -c pass`` and ``import torch``.

Each command runs ``--repeats`` times, interleaved (one of each per round, so that a busy machine slows all of them
alike); the medians are printed and, with ``--json``, written out.

    python benchmarks/startup_time.py --repeats 5 --json startup.json
    python benchmarks/startup_time.py --baseline /tmp/rep3d_old   # also an older source tree, interleaved

The rep3d commands run with ``PYTHONPATH`` set to this checkout (and to ``--baseline``'s), so the timings are of
that source tree whatever is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import torch": [sys.executable, "-c", "import torch"],
    "import rep3d": [sys.executable, "-c", "import rep3d"],
    "rep3d --help": [sys.executable, "-m", "rep3d", "--help"],
    "rep3d predict --help": [sys.executable, "-m", "rep3d", "predict", "--help"],
    "rep3d --version": [sys.executable, "-m", "rep3d", "--version"],
}


def time_commands(commands: dict[str, tuple[list[str], Path]], repeats: int) -> dict[str, float]:
    """Median wall time in seconds of each ``(command, source tree)``, the commands run interleaved ``repeats``
    times."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, (cmd, tree) in commands.items():
            env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(tree)}
            start = time.perf_counter()
            # cwd too: `python -c` and `-m` put the working directory first on sys.path
            subprocess.run(cmd, env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (default: %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="also write the medians as JSON (default: print only)")
    parser.add_argument("--baseline", metavar="DIR", type=Path,
                        help="another rep3d source tree to time alongside, e.g. an older commit (default: none)")
    args = parser.parse_args()
    commands = {name: (cmd, ROOT) for name, cmd in COMMANDS.items()}
    if args.baseline:
        commands.update({f"{name} (baseline)": (cmd, args.baseline) for name, cmd in COMMANDS.items()
                         if "rep3d" in name})
    medians = time_commands(commands, args.repeats)
    for name, seconds in medians.items():
        print(f"{name:35s} {seconds:6.2f} s")
    print(f"{'import rep3d - torch':35s} {medians['import rep3d'] - medians['import torch']:+6.2f} s")
    print(f"{'--help / python':35s} {medians['rep3d --help'] / medians['python -c pass']:6.1f} x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"repeats": args.repeats, "median_s": medians, "cpu_count": os.cpu_count(),
                       "baseline": str(args.baseline) if args.baseline else None}, f, indent=2)


if __name__ == "__main__":
    main()
