"""Training SAM by simulated interaction with Lightning: what ``python -m sam_engine.train`` runs.

Everything lands in ``run_dir`` (stable, not a timestamp, so DDP ranks and a requeued job share it):
``checkpoints/`` (``ckpt_path=last`` resumes), ``export/`` (``sam.pth`` + ``sam_config.json``),
``metrics.json`` (validation metrics before and after training), the loggers' files, and with
``snapshot_every_minutes`` an export every that many minutes of training under ``snapshots/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from hydra.utils import instantiate
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from sam_engine.data.shards import MANIFEST
from sam_engine.model import Sam, load_model
from sam_engine.model.build import load_timm_encoder
from sam_engine.train.distributed import (
    check_slurm_allocation,
    claim_run_dir_for_job,
    other_ranks_killed_on_failure,
    uses_slurm,
)
from sam_engine.train.module import InteractiveSamModule
from sam_engine.train.progress import progress_callbacks
from sam_engine.train.requeue import JobRequeued, RequeueOnSignal
from sam_engine.train.settings import OptimConfig, SimulationConfig, check_train_config
from sam_engine.train.snapshots import ExportSnapshots, export_trained
from sam_engine.utils.config_checks import typed_config

log = logging.getLogger(__name__)


def plain(node) -> dict:
    """A config node as plain Python values."""
    return OmegaConf.to_container(node, resolve=True)


def initial_model(cfg: DictConfig) -> Sam:
    """The model to start from: a previous stage's export, an official checkpoint, or fresh weights
    (with timm-format encoder weights when ``encoder_weights`` is set)."""
    model = load_model(cfg.init, plain(cfg.model), drop_path_rate=cfg.drop_path_rate)
    if cfg.init is None and cfg.encoder_weights is not None:
        load_timm_encoder(model, cfg.encoder_weights)
    return model


def training_sources(cfg: DictConfig) -> list[str]:
    """What the stage trains on: the seed data and the shards collected by the named stages."""
    sources = []
    if cfg.stage.use_seed_data:
        seed = cfg.data.train
        sources += list(seed) if OmegaConf.is_list(seed) else [seed]
    for stage in cfg.stage.collected:
        shards = Path(cfg.engine_dir) / stage / "shards"
        if (shards / MANIFEST).exists():
            sources.append(str(shards))
        elif cfg.stage.require_collected:
            raise FileNotFoundError(f"stage {cfg.stage.name} trains on {shards}, which has no {MANIFEST}")
        else:
            log.info("no masks collected yet under %s; training without them", shards)
    if not sources:
        raise ValueError(f"stage {cfg.stage.name}: nothing to train on (use_seed_data is false, no collected shards)")
    return sources


def build_module(cfg: DictConfig, model: Sam) -> InteractiveSamModule:
    return InteractiveSamModule(
        model,
        typed_config(SimulationConfig, cfg.simulation, "simulation"),
        typed_config(OptimConfig, cfg.optim, "optim"),
        seed=cfg.seed,
        prompt_warmup_steps=cfg.prompt_warmup_steps,
        gradient_clip_norm=cfg.gradient_clip_norm,
        grad_checkpointing=cfg.grad_checkpointing,
        eval_max_clicks=cfg.eval.max_clicks,
        noc_threshold=cfg.eval.noc_threshold,
    )


@contextlib.contextmanager
def wandb_runs_finished(loggers: list) -> Iterator[None]:
    """Finish the wandb runs of a training's loggers when it ends: the engine trains in its own process, where
    each training's run must end with the training, not with the process."""
    try:
        yield
    finally:
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.finish()


def val_metrics(results: list[dict]) -> dict:
    """The val/* entries of ``trainer.validate``'s result, as floats."""
    return {k: float(v) for k, v in (results[0] if results else {}).items() if k.startswith("val/")}


def evaluate(cfg: DictConfig) -> dict:
    """The validation metrics (``val/*``) of the model ``cfg.init`` on ``cfg.data.val``, without training."""
    datamodule = instantiate(cfg.data, train=cfg.data.train)
    module = build_module(cfg, initial_model(cfg))
    progress, bar = progress_callbacks(cfg.trainer.get("enable_progress_bar", True))
    trainer = instantiate(cfg.trainer, default_root_dir=str(cfg.run_dir), logger=False, callbacks=progress,
                          enable_progress_bar=bar)
    return val_metrics(trainer.validate(module, datamodule=datamodule, verbose=False))


def train(cfg: DictConfig) -> dict:
    """Train as ``cfg`` (the ``train`` config) says; returns what ``metrics.json`` holds."""
    check_train_config(cfg)
    run_dir = Path(cfg.run_dir)
    seed_everything(cfg.seed, workers=True)  # fresh weights too: a seeded run is reproducible
    if uses_slurm(cfg.trainer):
        check_slurm_allocation()
        claim_run_dir_for_job(run_dir, os.environ["SLURM_JOB_ID"], int(os.environ.get("SLURM_PROCID", 0)))
    datamodule = instantiate(cfg.data, train=training_sources(cfg))
    module = build_module(cfg, initial_model(cfg))
    loggers = [instantiate(node) for node in cfg.logger.values()]
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
        every_n_train_steps=cfg.checkpoint_every_n_steps,
        enable_version_counter=False,  # a new run in the same run_dir replaces last.ckpt, never last-v1.ckpt
    )
    progress, bar = progress_callbacks(cfg.trainer.get("enable_progress_bar", True))
    callbacks = [checkpoints, *progress]
    if uses_slurm(cfg.trainer):
        callbacks.append(RequeueOnSignal())
    if cfg.snapshot_every_minutes is not None:
        callbacks.append(ExportSnapshots(run_dir / "snapshots", cfg.snapshot_every_minutes))
    trainer = instantiate(cfg.trainer, default_root_dir=str(run_dir), logger=loggers or False, callbacks=callbacks,
                          enable_progress_bar=bar)

    with other_ranks_killed_on_failure(trainer), wandb_runs_finished(loggers):
        metrics = {"stage": cfg.stage.name, "model": module.model.config.name}
        requeued = any(run_dir.glob("hpc_ckpt_*.ckpt"))  # Lightning resumes a requeued SLURM job from it
        if cfg.validate_before_training and cfg.ckpt_path is None and not requeued:
            metrics["initial"] = val_metrics(trainer.validate(module, datamodule=datamodule, verbose=False))
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        except JobRequeued as stop:  # SLURM ends this job now; no export, no metrics.json until the run's end
            log.info("%s", stop)
            return {**metrics, "requeued": stop.checkpoint}
        # The state training ended with, saved also when it stopped between two periodic saves (a time limit, or
        # max_steps off the interval): last.ckpt resumes from it, and the final validation and the export read it
        # (without a path, a validation on SLURM would load the newest hpc_ckpt_*.ckpt instead).
        final_state = run_dir / "checkpoints" / "last.ckpt"
        trainer.save_checkpoint(final_state)
        metrics["final"] = val_metrics(
            trainer.validate(module, datamodule=datamodule, ckpt_path=str(final_state), verbose=False))
        metrics.update(steps=trainer.global_step, skipped_steps=module.skipped_steps)

        export_trained(trainer, module.model, run_dir / "export")
    if trainer.is_global_zero:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log.info("metrics: %s", json.dumps(metrics))
        log.info("export: %s", run_dir / "export")
    return metrics
