"""benchmarks/gpu.sh, the prepared GPU check: on a machine without a GPU it says so and measures nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(subprocess.run(["sh", "-c", "nvidia-smi"], capture_output=True).returncode == 0,
                    reason="a GPU is here: the script would measure it (minutes), not what this test checks")
def test_without_a_gpu_the_check_says_so_and_writes_its_log(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(tmp_path / "out")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "no GPU on this machine: nothing measured" in result.stdout
    assert "no GPU on this machine" in (tmp_path / "out" / "gpu_check.txt").read_text()
