"""Exports of the model being trained: at the end of a run, and every few minutes along it.

:func:`export_trained` writes what ``sam_engine.model.export_sam`` writes (``sam.pth`` +
``sam_config.json``) from inside a Lightning run, whatever the strategy: under FSDP every rank helps
gather the shards; rank 0 writes. :class:`ExportSnapshots` calls it every ``every_minutes`` of
training wall time into ``<directory>/<minutes>min/``, so one long run yields the learning curve of
its recipe (``benchmarks/learning_curve.py`` scores the snapshots through the official predictor).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import FSDPStrategy

from sam_engine.model import Sam, export_sam
from sam_engine.train.distributed import gather_full_model

log = logging.getLogger(__name__)

SNAPSHOT_INFO = "snapshot.json"
"""In a snapshot directory: the training minutes and step it was taken at."""


def export_trained(trainer: Trainer, model: Sam, out_dir: Path) -> None:
    """Export ``model`` (held by ``trainer``'s module) to ``out_dir``; every rank must call it."""
    if isinstance(trainer.strategy, FSDPStrategy):  # the module holds shards; every rank helps gather them
        model = gather_full_model(trainer.strategy, model)
    if trainer.is_global_zero:
        export_sam(model, out_dir)


class ExportSnapshots(Callback):
    """Export the model every ``every_minutes`` of training (from the first step, validation included).

    Ranks take rank 0's clock, so all of them gather at the same step.
    """

    def __init__(self, directory: str | Path, every_minutes: float):
        if not every_minutes > 0:
            raise ValueError(f"snapshot_every_minutes must be positive, got {every_minutes!r}")
        self.directory = Path(directory)
        self.every_minutes = float(every_minutes)
        self.started = 0.0
        self.taken = 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.started = time.monotonic()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        minutes = trainer.strategy.broadcast((time.monotonic() - self.started) / 60.0, src=0)
        if minutes < (self.taken + 1) * self.every_minutes:
            return
        self.taken = int(minutes // self.every_minutes)
        mark = self.taken * self.every_minutes
        out_dir = self.directory / f"{mark:g}min"
        export_trained(trainer, pl_module.model, out_dir)
        if trainer.is_global_zero:
            info = {"minutes": round(minutes, 3), "step": trainer.global_step}
            (out_dir / SNAPSHOT_INFO).write_text(json.dumps(info) + "\n")
            log.info("snapshot at %.2f training minutes, step %d: %s", minutes, trainer.global_step, out_dir)
