"""sam_engine.utils.malloc: freed blocks are reused, not faulted in afresh, once glibc is told to keep them."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
import numpy as np
from sam_engine.utils.malloc import reuse_freed_memory

if sys.argv[1] == "reuse":
    assert reuse_freed_memory()

def work():
    for size in (1, 3, 6, 12, 24, 2, 8):  # MiB, a few alive at once, as a pipeline's tensors
        a = np.ones(size * 2**18, np.float32)
        b = a + 1
        c = b * a
        del a, b, c

work()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    work()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def page_faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    assert page_faults("default") > 10_000  # arrays of 1 to 24 MiB: glibc unmaps or trims most of them on free
    assert page_faults("reuse") < 500
