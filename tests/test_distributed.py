"""DDP on CPU (gloo, two processes) and the checks made before a SLURM run starts."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import FAST, train_in_process

from sam_engine.train.distributed import SlurmSetupError, check_slurm_allocation, claim_run_dir_for_job

DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
COMPARED = [  # the recipe of the DDP and FSDP runs that the FSDP tests compare at 1e-5
    "gradient_clip_norm=0.01",  # clips every step: a run that does not clip ends 4e-3 away from one that does
    # Adam turns a gradient at rounding level into a step of +-lr, so the two strategies agree at 1e-5 only on
    # a trajectory without such gradients; at the default lr (3e-4) steps 5-6 differ by ~lr in the decoder.
    "optim.lr=1e-3",
]
SCRIPTS = Path(__file__).parent / "scripts"


def step_result(devices: int, shard_dir: str, out: Path) -> dict:
    """scripts/ddp_step.py's result: one process runs here, more as a command (Lightning starts the others)."""
    if devices == 1:
        spec = importlib.util.spec_from_file_location("ddp_step", SCRIPTS / "ddp_step.py")
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        script.main(1, shard_dir, str(out))
    else:
        result = subprocess.run(
            [sys.executable, str(SCRIPTS / "ddp_step.py"), str(devices), shard_dir, str(out)],
            capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_a_step_does_not_depend_on_the_number_of_processes(tmp_path, synthetic_shards):
    one = step_result(1, synthetic_shards["val"], tmp_path / "one.json")  # 1 process x 4 images
    two = step_result(2, synthetic_shards["val"], tmp_path / "two.json")  # 2 processes x 2 images
    assert one["loss"] > 0
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    scale = max(abs(g) for g in one["gradient"])
    assert scale > 0
    assert max(abs(a - b) for a, b in zip(one["gradient"], two["gradient"], strict=True)) < 1e-4 * scale


def test_two_process_ddp_writes_one_checkpoint_one_export_and_metrics(ddp_run):
    run_dir, output = ddp_run
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["sam.pth", "sam.pth.sha256", "sam_config.json"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 4 and 0.0 <= metrics["final"]["val/miou_1pt"] <= 1.0
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output
    assert len(list(run_dir.parents[1].rglob("metrics.csv"))) == 1  # rank 0 logs


def test_slurm_trainer_outside_an_allocation_is_refused_before_work(tmp_path, shards, monkeypatch):
    for name in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    with pytest.raises(SlurmSetupError, match="SLURM_JOB_ID, SLURM_NNODES, SLURM_NTASKS_PER_NODE not set"):
        train_in_process(*FAST, *shards, "trainer=slurm", f"engine_dir={tmp_path}")
    assert not (tmp_path / "stage1").exists()  # nothing written


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"SLURM_JOB_ID": "7", "SLURM_NNODES": "2"}, "SLURM_NTASKS_PER_NODE not set"),
        ({"SLURM_JOB_ID": "7", "SLURM_NNODES": "0", "SLURM_NTASKS_PER_NODE": "4"}, "SLURM_NNODES='0'"),
        ({"SLURM_JOB_ID": "7", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "2(x2)"}, "SLURM_NTASKS_PER_NODE"),
    ],
)
def test_bad_allocations_are_named(environ, message):
    with pytest.raises(SlurmSetupError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_slurm_allocation(environ)
    check_slurm_allocation({"SLURM_JOB_ID": "7", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "4"})


def test_a_run_dir_belongs_to_one_job(tmp_path):
    run_dir = tmp_path / "run"
    claim_run_dir_for_job(run_dir, "101", rank=1)  # not rank 0: claims nothing
    assert not run_dir.exists()
    claim_run_dir_for_job(run_dir, "101", rank=0)
    claim_run_dir_for_job(run_dir, "101", rank=0)  # the same job, requeued: fine
    claim_run_dir_for_job(run_dir, "101", rank=3)
    with pytest.raises(SlurmSetupError, match=r"belongs to SLURM job 101 .*not to this job 202"):
        claim_run_dir_for_job(run_dir, "202", rank=0)


def test_a_rank_stuck_outside_a_collective_fails_the_run_with_a_timeout_instead_of_hanging(tmp_path, synthetic_shards):
    """Rank 1 never reaches the first gradient all-reduce (its shard reader is stuck, as a DataLoader worker
    forked while a lock was held was): rank 0's collective times out with an error after
    ``trainer.strategy.timeout`` (10 minutes by default, 20 s here), kills rank 1 and exits non-zero."""
    reader = tmp_path / "reader.sh"  # a shard stream that never starts on rank 1
    shard = Path(synthetic_shards["train"]) / "synthetic-000000.tar"
    reader.write_text(f'[ "$LOCAL_RANK" = 1 ] && sleep 120\ncat {shard}\n')
    started = time.monotonic()
    result = subprocess.run(  # the output's pipes stay open while any process below the command lives
        [sys.executable, "-m", "sam_engine.train", *FAST, *DDP_CPU, f"data.train='pipe:bash {reader}'",
         "data.val=null", "validate_before_training=false", "trainer.strategy.timeout.minutes=0",
         "+trainer.strategy.timeout.seconds=20", f"engine_dir={tmp_path}"],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode != 0 and time.monotonic() - started < 100
    # The cause is logged before rank 1 is killed: Lightning's watcher, seeing it killed, kills this rank too.
    assert re.search(r"this rank failed \(\w+: .*?Timed out waiting 20000ms.*?\): killing the 1 ranks it started",
                     result.stdout + result.stderr, re.S), result.stdout[-3000:] + result.stderr[-3000:]
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", f"engine_dir={tmp_path}"], capture_output=True, text=True).stdout
    assert left == "", f"rank 1 still runs: {left}"
    assert not (tmp_path / "stage1" / "train" / "export").exists()
