"""keep_freed_memory: a freed large block is reused without faulting in fresh pages."""

import subprocess
import sys

import pytest

from algorithms.host_memory import _mallopt, keep_freed_memory

FAULTS = """
import resource, sys, torch
from algorithms.host_memory import keep_freed_memory
kept = keep_freed_memory("cpu") if sys.argv[1] == "keep" else False
def fill():  # a 64 MB block, written and freed, as a gradient of a learner step is
    x = torch.empty(16 * 2**20); x.fill_(1.0); del x
for _ in range(10):  # glibc reuses a freed aligned block once its neighbours have merged with it
    fill()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    fill()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept == "True", int(faults)


def test_other_devices_are_left_alone():
    assert keep_freed_memory("meta") is False


@pytest.mark.skipif(_mallopt() is None, reason="the C library is not glibc")
def test_freed_blocks_are_reused_without_page_faults():
    kept, faults = page_faults("keep")
    assert kept
    _, faults_by_default = page_faults("system")
    # five 64 MB blocks are 80K fresh 4 KB pages (fewer with huge pages); reused, next to none
    assert faults < 500 < faults_by_default, (faults, faults_by_default)
