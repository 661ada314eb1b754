"""One invocation of the engine over a run directory: claim it, run the steps, report (dashboards)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sam_engine.annotate.web.options import ServeOptions
from sam_engine.engine.dashboard import NullDashboard, WandbDashboard, write_engine_summary
from sam_engine.engine.run import ENGINE_GROUPS, DataEngine, engine_group
from sam_engine.engine.steps import EnginePaused, Steps, record_run_config
from sam_engine.stages import ALL_STEPS
from sam_engine.train.distributed import uses_slurm
from sam_engine.utils.config_checks import check_values, typed_config

log = logging.getLogger(__name__)

UNCLAIMED_KEYS = ("logger", "annotator.web", "launcher")
"""Config keys (dotted) that do not change what the steps write: a rerun may change them."""
LAUNCHERS = ("local", "slurm")


def without(config: dict, keys: tuple[str, ...]) -> dict:
    """A copy of ``config`` without the dotted ``keys`` (``"annotator.web"``: the ``web`` entry of ``annotator``)."""
    out = dict(config)
    for key in keys:
        head, _, rest = key.partition(".")
        if rest and isinstance(out.get(head), dict):
            out[head] = without(out[head], (rest,))
        elif not rest:
            out.pop(head, None)
    return out


def check_engine_config(cfg: DictConfig) -> None:
    """The engine's own counts, rates and switches, checked before the run records its config (a bad value
    recorded would refuse the corrected rerun). Raises ValueError naming the key."""
    rounds = {f"stage{s}.{key}": least for s in (1, 2) for key, least in
              (("rounds", 0), ("images_per_round", 1), ("train_steps", 1))}
    check_values(
        cfg,
        integers={"seed": 0, "seed_training.max_steps": 1, "seed_training.prompt_warmup_steps": 0, **rounds,
                  "stage3.train_steps": 1, "annotator.max_clicks": 1, "annotator.patience": 1},
        numbers={"retrain_lr": (1e-12, 10.0), "retrain_lr_drop": (0.0, 1.0), "annotator.accept_iou": (0.0, 1.0),
                 "stage2.cover_iou": (0.0, 1.0), "annotator.move_on_seconds": (0.0, 1e9)},
        booleans=("logger.wandb", "stage2.review"),
    )
    if cfg.annotator.kind == "web":
        typed_config(ServeOptions, cfg.annotator.web, "annotator.web").check()
    check_launcher(cfg)


def check_launcher(cfg: DictConfig) -> None:
    """``launcher``: a known kind, positive counts, and the trainer it needs. Raises ValueError naming the key."""
    kind = cfg.launcher.kind
    if kind not in LAUNCHERS:
        raise ValueError(f"launcher={kind}: expected one of {', '.join(LAUNCHERS)}")
    if kind == "local" and uses_slurm(cfg.trainer):
        raise ValueError("trainer=slurm takes its ranks from a SLURM allocation: run the engine with launcher=slurm, "
                         "which submits each training as a job of its own")
    if kind == "slurm":
        if not uses_slurm(cfg.trainer):
            raise ValueError("launcher=slurm runs each training as SLURM tasks, one per device: it needs "
                             "trainer=slurm (launcher=slurm picks it unless trainer= is given)")
        counts = {"time_minutes": 1, "train.nodes": 1, "train.tasks_per_node": 1,
                  "train.gpus_per_node": 0, "train.cpus_per_task": 1, "train.signal_seconds": 1, "train.retries": 0,
                  "evaluate.gpus": 0, "evaluate.cpus_per_task": 1, "label.tasks": 1, "label.parallel": 1,
                  "label.gpus_per_task": 0, "label.cpus_per_task": 1, "label.signal_seconds": 1, "label.retries": 0}
        check_values(cfg, integers={f"launcher.{key}": least for key, least in counts.items()},
                     numbers={"launcher.poll_seconds": (0.0, 3600.0)})


def run_engine(cfg: DictConfig, stages: tuple[int, ...] = ALL_STEPS) -> list[dict] | None:
    """Run (or resume) the ``stages`` of the engine run ``cfg.run_dir``; returns the metrics rows of their
    steps, or None when the engine paused for people (the log says what they have to do).

    The summary files are rewritten after each invocation, with every step of the run finished so far.
    """
    check_engine_config(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {key: OmegaConf.to_container(cfg[key], resolve=key not in ENGINE_GROUPS)
              if OmegaConf.is_config(cfg[key]) else cfg[key]
              for key in cfg if key != "stage"}  # stage=N says which steps run, not how; the groups' references
    # (trainer.max_steps: ${stage.max_steps}) resolve in each training's config
    config = without(config, ("annotator.web.token",))  # a secret: in no file of the run, nor on wandb
    record_run_config(run_dir, without(config, UNCLAIMED_KEYS))
    if cfg.logger.wandb:
        dashboard = WandbDashboard(cfg.logger.project, group=engine_group(run_dir), run_dir=run_dir,
                                   mode=cfg.logger.get("mode"), config=config)
    else:
        dashboard = NullDashboard()
    steps = Steps(run_dir, on_done=dashboard.log_step)
    engine = DataEngine(cfg, steps, dashboard)
    rows = None
    try:
        rows = engine.run(stages)
    except EnginePaused as exc:
        log.warning("%s", exc)
    finally:
        finished = engine.finished_rows()  # the whole run's, whichever stages this invocation ran
        if finished:
            paths = write_engine_summary(finished, run_dir)
            dashboard.log_table(finished)
            log.info("summary: %s", ", ".join(str(p) for p in paths))
        dashboard.finish()
    return rows
