"""Where the engine's heavy work runs: trainings, evaluations and stage 3's labelling (``conf/launcher/``).

``launcher=local`` (:class:`LocalLauncher`) runs them in the engine's process, as ``make demo`` does;
``launcher=slurm`` (:class:`sam_engine.engine.slurm.SlurmLauncher`) submits each as a SLURM job and waits for
it. Both take the same composed configs and leave the same files: a training's ``metrics.json`` and
``export/``, an evaluation's metrics, the labelling's shards under ``label_cfg.output``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from omegaconf import DictConfig, OmegaConf

from sam_engine.label.inputs import list_input_shards, verify_output
from sam_engine.label.run import label
from sam_engine.train.distributed import starts_processes
from sam_engine.train.run import evaluate, train


class Launcher(Protocol):
    def train(self, cfg: DictConfig) -> dict:
        """Run the training ``cfg`` (a ``train`` config); returns what its ``metrics.json`` holds."""

    def evaluate(self, cfg: DictConfig) -> dict:
        """The validation metrics (``val/*``) of ``cfg.init`` on ``cfg.data.val`` (a one-process ``train`` config)."""

    def label(self, cfg: DictConfig) -> None:
        """Label every input shard of ``cfg`` (a ``label`` config) into ``cfg.output``, each image once.

        Raises:
            RuntimeError: some input shards have no output shard, or some images were written twice.
        """


def labelling_problem(cfg: DictConfig) -> str | None:
    """What the labelling of the ``label`` config ``cfg`` lacks (input shards without output, images written
    twice), or None when every input shard has its output, once."""
    report = verify_output(list_input_shards(cfg.input, cfg.images_per_shard), cfg.output)
    if report["missing"] or report["duplicate_keys"]:
        return (f"labelling {cfg.input} -> {cfg.output} is incomplete: {len(report['missing'])} input shards "
                f"without output ({', '.join(report['missing'][:5])}), {report['duplicate_keys']} images written twice")
    return None


class LocalLauncher:
    """Everything in this process; a training with a process per device runs as a command of its own."""

    def train(self, cfg: DictConfig) -> dict:
        return train_command(cfg) if starts_processes(cfg.trainer) else train(cfg)

    def evaluate(self, cfg: DictConfig) -> dict:
        return evaluate(cfg)

    def label(self, cfg: DictConfig) -> None:
        label(cfg)
        problem = labelling_problem(cfg)
        if problem is not None:
            raise RuntimeError(problem)


def train_command(cfg: DictConfig) -> dict:
    """Run one training as ``python -m sam_engine.train`` on ``cfg`` saved as ``<run_dir>/train_config.yaml``
    (Lightning starts the other ranks by running that command again, not the engine); returns what the
    training's ``metrics.json`` holds.

    Raises:
        RuntimeError: the training failed, naming its exit status and config (its log is the engine's).
    """
    run_dir = Path(cfg.run_dir)
    config = save_train_config(cfg, command=True)
    command = [sys.executable, "-m", "sam_engine.train", "--config-dir", str(config.parent.resolve()),
               "--config-name", config.stem]
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"training {run_dir} failed (exit status {done.returncode}); its config: {config}")
    return json.loads((run_dir / "metrics.json").read_text())


def save_train_config(cfg: DictConfig, command: bool) -> Path:
    """``cfg`` as ``<run_dir>/train_config.yaml`` for a job to read back; for ``python -m sam_engine.train``
    (``command``), with the ``hydra`` settings that keep its outputs in ``run_dir``."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "train_config.yaml"
    hydra = {"hydra": {"run": {"dir": str(run_dir / "hydra")}, "output_subdir": None, "job": {"chdir": False}}}
    config.write_text(OmegaConf.to_yaml(cfg) + (OmegaConf.to_yaml(hydra) if command else ""))
    return config


def make_launcher(cfg: DictConfig) -> Launcher:
    """The engine's launcher, as ``cfg.launcher`` (the engine config's) says."""
    if cfg.launcher.kind == "slurm":
        from sam_engine.engine.slurm import SlurmLauncher  # submitit: only for runs on a cluster

        return SlurmLauncher(cfg.launcher)
    return LocalLauncher()
