"""Training progress for a terminal (TQDM's bar) or a log file (a line every so many steps).

A bar redrawn with carriage returns is one endless line in a SLURM job's log; there, and wherever stderr is
not a terminal, training reports ``step 120/600 (20%), 1.2 steps/s, loss 0.84, ETA 6 min 40 s`` instead.
"""

from __future__ import annotations

import logging
import sys
import time

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import TQDMProgressBar

from sam_engine.utils.progress import LINES_PER_RUN, describe_progress

log = logging.getLogger(__name__)


class ProgressLines(Callback):
    """Logs a line every ``every_n_steps`` optimiser steps, and at the last one.

    Arguments:
        every_n_steps: steps between lines; None: about 20 lines per run (``max_steps // 20``, at least 1).
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        self.every_n_steps = every_n_steps
        self._start: tuple[float, int] | None = None  # (time, step) when this process started training

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = (time.monotonic(), trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, total = trainer.global_step, trainer.max_steps
        every = self.every_n_steps or max(1, total // LINES_PER_RUN)
        if not trainer.is_global_zero or step == 0 or (step % every and step != total):
            return
        log.info("%s", describe_progress(step, total, *self._start, trainer.callback_metrics.get("train/loss")))


def progress_callbacks(enabled: bool) -> tuple[list[Callback], bool]:
    """The progress callbacks of a training, and the trainer's ``enable_progress_bar``: TQDM's bar on a
    terminal (not Rich, Lightning's choice wherever rich is installed, which writes nothing to a file until a
    bar ends), lines elsewhere; nothing when ``enabled`` is false."""
    if not enabled:
        return [], False
    if sys.stderr.isatty():
        return [TQDMProgressBar()], True
    return [ProgressLines()], False
