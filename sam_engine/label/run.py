"""Pseudo-labelling one task's block of input shards (``python -m sam_engine.label``, and the engine's stage 3).

In a SLURM array each task takes its block of the input shards from ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``
(or ``task_index``/``num_tasks``). See :mod:`sam_engine.label.labeller` for what is written.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sam_engine.amg import SamAutomaticMaskGenerator
from sam_engine.label.inputs import check_label_config, list_input_shards, task_block, verify
from sam_engine.label.labeller import Labeller, LabelSummary, model_id, write_task_summary
from sam_engine.model import load_model
from sam_engine.utils.device import pick_device

log = logging.getLogger(__name__)


def array_task(task_index: int | None, num_tasks: int | None) -> tuple[int, int]:
    """(task_index, num_tasks): as given, else from the SLURM array's variables, else (0, 1)."""
    if task_index is None:
        task_index = int(os.environ.get("SLURM_ARRAY_TASK_ID", 0)) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", 0))
    if num_tasks is None:
        num_tasks = int(os.environ.get("SLURM_ARRAY_TASK_COUNT", 1))
    return task_index, num_tasks


def label(cfg: DictConfig) -> dict:
    """Label the input as ``cfg`` (the ``label`` config) says; returns the task's summary."""
    if cfg.verify:
        return verify(cfg)
    check_label_config(cfg)
    shards = list_input_shards(cfg.input, cfg.images_per_shard)
    model = load_model(cfg.checkpoint, cfg.get("model")).to(pick_device(cfg.device)).eval()
    task_index, num_tasks = array_task(cfg.task_index, cfg.num_tasks)
    mine = task_block(shards, task_index, num_tasks)
    log.info("task %d of %d: %d of %d input shards", task_index, num_tasks, len(mine), len(shards))

    generator = SamAutomaticMaskGenerator(model, precision=cfg.precision, cpu_workers=cfg.cpu_workers,
                                          **OmegaConf.to_container(cfg.amg))
    provenance = {"source": "auto", "stage": int(cfg.stage.number), "model": model_id(cfg.checkpoint)}
    folder = Path(cfg.input) if mine and mine[0].url is None else None
    labeller = Labeller(generator, cfg.output, provenance, cfg.max_short_side, folder_root=folder)
    summary = LabelSummary(task_index, num_tasks, [s.name for s in mine])
    labeller.run(mine, summary, progress=cfg.progress)
    path = write_task_summary(summary, Path(cfg.output))
    result = summary.to_dict()
    log.info(
        "labelled %d images (%d masks, %.1f per image) in %.0f s; %d already done, %d images skipped, "
        "%d unreadable shards; summary: %s",
        result["images"], result["masks"], result["masks_per_image"] or 0, result["seconds"],
        len(result["shards_already_done"]), len(result["skipped_images"]), len(result["unreadable_shards"]), path,
    )
    if result["quality"]:
        log.info("quality against the input's annotations: %s", json.dumps(result["quality"]))
    return result
