"""Save and requeue a SLURM training job on its requeue signal, at a step every rank reaches together.

Lightning's own handler (``SLURMEnvironment(auto_requeue=True)``) saves the checkpoint inside the signal
handler. With several ranks the signal lands at different points of the step: one rank may be inside
the gradient all-reduce while another enters the checkpoint's barrier, and the job hangs until its time
limit. Here the handler only records the signal. After each training step the ranks agree whether any
of them got it; if one did, every rank saves ``hpc_ckpt_N.ckpt`` (which Lightning resumes from when the
requeued job starts), rank 0 runs ``scontrol requeue`` and training stops with :class:`JobRequeued`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess

from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)


class JobRequeued(Exception):
    """Training stopped after saving ``checkpoint`` and requeueing the SLURM job that ran it."""

    def __init__(self, checkpoint: str, job_id: str):
        super().__init__(f"SLURM job {job_id} saved {checkpoint} and was requeued; the requeued job resumes from it")
        self.checkpoint = checkpoint
        self.job_id = job_id


def slurm_job_id(environ=os.environ) -> str:
    """The id ``scontrol requeue`` takes: ``ARRAYJOB_TASK`` for an array task, else the job id."""
    if environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ["SLURM_JOB_ID"]


class RequeueOnSignal(Callback):
    """On ``signum`` (SIGUSR1: ``sbatch --signal=USR1@120``) save, requeue and stop after the current step."""

    def __init__(self, signum: int = signal.SIGUSR1):
        self.signum = signum
        self.signalled = False
        self._previous_handler = None

    def _record(self, signum, frame) -> None:
        self.signalled = True

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._previous_handler = signal.signal(self.signum, self._record)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_handler()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_handler()

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(self.signum, self._previous_handler)
            self._previous_handler = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        # Rank 0 numbers the checkpoint; every rank must save under the same name (FSDP shards write too).
        path = trainer.strategy.broadcast(trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir), src=0)
        trainer.save_checkpoint(path)
        job_id = slurm_job_id()
        if trainer.is_global_zero:
            log.info("requeue signal at step %d: saved %s; requeueing job %s", trainer.global_step, path, job_id)
            result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
            if result.returncode != 0:
                log.error("scontrol requeue %s failed (%d): %s", job_id, result.returncode, result.stderr.strip())
        raise JobRequeued(path, job_id)
