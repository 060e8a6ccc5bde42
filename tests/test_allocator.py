"""`keep_freed_memory`: large tensors reuse freed memory instead of page-faulting fresh memory every time."""

import subprocess
import sys

import pytest

from rep3d.allocator import keep_freed_memory_supported
from rep3d.cli import keeps_freed_memory

STEADY_STATE_FAULTS = """
import resource, sys
import torch
from rep3d.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
x, w = torch.randn(1, 1, 64, 64, 160), torch.randn(16, 1, 1, 1, 1)

def step():  # three 40 MiB activations, above glibc's largest mmap threshold (32 MiB)
    a = torch.nn.functional.conv3d(x, w)
    b = a * 2
    return float((b + a)[0, 0, 0, 0, 0])

for _ in range(6):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", STEADY_STATE_FAULTS, mode], capture_output=True, text=True,
                         check=True, timeout=120)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not keep_freed_memory_supported(), reason="glibc only")
def test_kept_memory_serves_large_tensors_without_page_faults():
    default, kept = _page_faults("default"), _page_faults("keep")
    assert default > 3 * 10_000  # each 40 MiB activation faults in ~10k fresh pages
    assert kept < default / 10


def test_the_executable_keeps_freed_memory_for_the_heavy_commands_only():
    assert keeps_freed_memory(["predict", "model", "scan.nii.gz"], {})
    assert keeps_freed_memory(["--debug", "train", "--data", "d"], {})
    assert not keeps_freed_memory(["predict", "m", "s"], {"REP3D_KEEP_FREED_MEMORY": "0"})
    assert not keeps_freed_memory(["export", "m"], {})
    assert not keeps_freed_memory(["--help"], {})
