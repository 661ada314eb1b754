"""slurm/train.sbatch on a real SLURM (localhost): two ranks through srun, and preemption with requeue."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import FAST

from sam_engine.model import load_export

TEMPLATE = Path(__file__).resolve().parents[1] / "slurm" / "train.sbatch"
CPU = ["trainer.accelerator=cpu", "trainer.precision=32-true"]
# Two tasks of one CPU each on the one node; the template's GPU request dropped.
ALLOCATION = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0", "--time=15"]


@pytest.fixture
def submit(slurm_cluster, synthetic_shards, tmp_path):
    """Submit the template for stage 1 into tmp_path/engine with the given overrides; return the job id."""
    slurm_cluster.env.update(
        STAGE="1", ENGINE_DIR=str(tmp_path / "engine"), PYTHON=sys.executable,
        PYTHONPATH=str(TEMPLATE.parents[1]), OMP_NUM_THREADS="1",
    )
    data = [f"data.train={synthetic_shards['train']}", f"data.val={synthetic_shards['val']}"]

    def run(*overrides: str) -> int:
        return slurm_cluster.sbatch([*ALLOCATION, str(TEMPLATE), *FAST, *data, *CPU, *overrides], cwd=tmp_path)

    return run


def job_log(tmp_path: Path, job: int) -> str:
    logs = list(tmp_path.glob(f"slurm-*-{job}.out"))
    return logs[0].read_text(errors="replace") if logs else ""  # (read while written: may end mid-character)


def test_two_ranks_through_srun_train_and_point_the_stage_at_the_run(slurm_cluster, submit, tmp_path):
    job = submit()
    state = slurm_cluster.wait(job, timeout=300)
    assert state == "COMPLETED", job_log(tmp_path, job)
    stage_dir = tmp_path / "engine" / "stage1"
    run_dir = stage_dir / f"train-{job}"
    assert (stage_dir / "train").resolve() == run_dir.resolve()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "export" / "sam.pth").is_file()
    assert json.loads((run_dir / "slurm_job.json").read_text()) == {"job_id": str(job)}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 4
    log = job_log(tmp_path, job)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and f"done: {stage_dir}/train -> train-{job}" in log


def rank_pid(job: int, rank: int) -> int:
    """The process of one rank of a job on this (the only) node, found by its SLURM environment."""
    wanted = {f"SLURM_JOB_ID={job}".encode(), f"SLURM_PROCID={rank}".encode()}
    for proc in Path("/proc").iterdir():
        try:
            environ = set((proc / "environ").read_bytes().split(b"\0"))
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if wanted <= environ and b"sam_engine.train" in cmdline:
            return int(proc.name)
    raise LookupError(f"no rank {rank} of job {job} running")


def test_usr1_saves_requeues_and_the_job_resumes_to_the_end(slurm_cluster, submit, tmp_path):
    """USR1 to rank 1 alone, mid-training: the ranks agree at a step's end, save, requeue, and resume."""
    job = submit("stage.max_steps=20", "data.steps_per_epoch=10", "checkpoint_every_n_steps=100")
    run_dir = tmp_path / "engine" / "stage1" / f"train-{job}"
    deadline = time.monotonic() + 240
    while "step 1/20 (5%)" not in job_log(tmp_path, job):  # training (and its signal handler) has started
        assert time.monotonic() < deadline, job_log(tmp_path, job)
        assert slurm_cluster.state(job) in ("PENDING", "RUNNING"), job_log(tmp_path, job)
        time.sleep(0.5)
    time.sleep(3)
    # Rank 0 never sees the signal: it must still learn of it, save with rank 1 and requeue. (Lightning's
    # handler saved inside the signal handler: a rank in a collective and one in a barrier hung the job.)
    os.kill(rank_pid(job, 1), signal.SIGUSR1)
    state = slurm_cluster.wait(job, timeout=400)
    log = job_log(tmp_path, job)
    assert state == "COMPLETED", log
    assert slurm_cluster.job_info(job)["Restarts"] == "1", log
    hpc = sorted(p.name for p in run_dir.glob("hpc_ckpt_*.ckpt"))
    assert hpc == ["hpc_ckpt_1.ckpt"], log
    assert "restart 1: stage 1" in log and "Restored all states from the checkpoint" in log
    # The export holds the weights training ended with (step 20), not the requeue checkpoint's (step 10).
    exported = load_export(run_dir / "export").state_dict()["mask_decoder.iou_token.weight"]
    for name, same in (("checkpoints/last.ckpt", True), ("hpc_ckpt_1.ckpt", False)):
        saved = torch.load(run_dir / name, map_location="cpu", weights_only=False)["state_dict"]
        assert torch.equal(saved["model.mask_decoder.iou_token.weight"], exported) == same, name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 20 and "initial" not in metrics  # the requeued run did not re-validate
    assert os.path.islink(tmp_path / "engine" / "stage1" / "train")
