"""Start-up time of the ``rep3d`` command and of ``import rep3d``, against ``python -c pass`` and ``import torch``.

Each command runs ``--repeats`` times, interleaved (one of each per round, so that a busy machine slows all of them
alike); the medians are printed and, with ``--json``, written out.

    python benchmarks/startup_time.py --repeats 5 --json startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import torch": [sys.executable, "-c", "import torch"],
    "import rep3d": [sys.executable, "-c", "import rep3d"],
    "rep3d --help": [sys.executable, "-m", "rep3d", "--help"],
    "rep3d predict --help": [sys.executable, "-m", "rep3d", "predict", "--help"],
    "rep3d --version": [sys.executable, "-m", "rep3d", "--version"],
}


def time_commands(commands: dict[str, list[str]], repeats: int) -> dict[str, float]:
    """Median wall time in seconds of each command, the commands run interleaved ``repeats`` times."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for _ in range(repeats):
        for name, cmd in commands.items():
            start = time.perf_counter()
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (default: %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="also write the medians as JSON (default: print only)")
    args = parser.parse_args()
    medians = time_commands(COMMANDS, args.repeats)
    for name, seconds in medians.items():
        print(f"{name:24s} {seconds:6.2f} s")
    print(f"{'import rep3d - torch':24s} {medians['import rep3d'] - medians['import torch']:+6.2f} s")
    print(f"{'--help / python':24s} {medians['rep3d --help'] / medians['python -c pass']:6.1f} x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"repeats": args.repeats, "median_s": medians, "cpu_count": os.cpu_count()}, f, indent=2)


if __name__ == "__main__":
    main()
