"""What each SLURM job of the engine runs (``launcher=slurm``): submitit pickles these by reference and calls
them on every task of the job, where they read the config the engine saved and write their outputs to files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import submitit
from omegaconf import OmegaConf

from sam_engine.utils.atomic_files import write_json_atomic


def _log_to_stderr() -> None:
    """The job's log lines (the training's progress, the labeller's summary) in its SLURM log."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")


def train_task(config: str) -> None:
    """One rank of a training job (``trainer=slurm``: the rank and world come from the task's SLURM variables);
    a training requeued by its signal returns here and goes on in the requeued job."""
    from sam_engine.train.run import train

    _log_to_stderr()
    train(OmegaConf.load(config))


def evaluate_task(config: str, out: str) -> None:
    """Evaluate as ``config`` says (a one-process ``train`` config); the ``val/*`` metrics go to ``out`` (JSON)."""
    from sam_engine.train.run import evaluate

    _log_to_stderr()
    write_json_atomic(Path(out), evaluate(OmegaConf.load(config)))


class LabelTask(submitit.helpers.Checkpointable):
    """Task ``task_index`` of ``num_tasks`` of a labelling array: its block of the input shards.

    Preempted, or near its time limit, submitit requeues it (``checkpoint`` resubmits the same call): the
    labeller skips the shards it finished and redoes the one it was in, so every image is written once.
    """

    def __call__(self, config: str, task_index: int, num_tasks: int) -> None:
        from sam_engine.label.run import label

        _log_to_stderr()
        cfg = OmegaConf.load(config)
        cfg.task_index, cfg.num_tasks = task_index, num_tasks
        label(cfg)
