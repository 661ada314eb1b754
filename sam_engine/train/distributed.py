"""Runs on SLURM: the checks made before any work starts, and which job a run directory belongs to.

``trainer=slurm`` takes its node and device counts from the allocation (``SLURM_NNODES``,
``SLURM_NTASKS_PER_NODE``); :func:`check_slurm_allocation` refuses to start without them, or with
counts that are not positive integers. :func:`claim_run_dir_for_job` keys a run directory on the SLURM job id:
a requeued job (same id) finds and resumes its checkpoint, another job is refused before it can
overwrite the first one's checkpoints.

A rank that fails stops the ranks it started (:func:`other_ranks_killed_on_failure`), and a collective that
waits longer than ``trainer.strategy.timeout`` (10 minutes) fails, so a stuck run ends instead of holding its
allocation.

``trainer=fsdp`` (fully sharded data parallel) uses :class:`SamFSDPStrategy`, which wraps each
transformer block of the image encoder (:func:`encoder_block_classes`) as one FSDP unit;
:func:`gather_full_model` puts the sharded weights back together on rank 0 for the export.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from omegaconf import DictConfig, OmegaConf

from sam_engine.model import Sam, build_sam

log = logging.getLogger(__name__)

SLURM_ALLOCATION = ("SLURM_JOB_ID", "SLURM_NNODES", "SLURM_NTASKS_PER_NODE")
OWNER_FILE = "slurm_job.json"
"""In a run directory: the SLURM job that owns it."""


class SlurmSetupError(RuntimeError):
    """The SLURM allocation or run directory does not fit the run; raised before any work starts."""


def uses_slurm(trainer_cfg: Mapping) -> bool:
    """Whether a trainer config runs under Lightning's SLURMEnvironment (``trainer=slurm``)."""
    plugins = trainer_cfg.get("plugins") or []
    return any(str(p.get("_target_", "")).endswith("SLURMEnvironment") for p in plugins if isinstance(p, Mapping))


def starts_processes(trainer_cfg: Mapping) -> bool:
    """Whether a trainer config runs a process per device (a ``strategy``: ``trainer=ddp|fsdp|slurm``).
    Lightning starts the other ranks by running the command again (or SLURM's ``srun`` starts them all), so a
    program that does more than train, as the engine does, runs such a training as a command of its own."""
    return trainer_cfg.get("strategy") is not None


def one_process(trainer_cfg: DictConfig) -> DictConfig:
    """The trainer config on one device of the calling process: what validation alone needs (no ranks)."""
    single = OmegaConf.to_container(trainer_cfg, resolve=False)
    for key in ("plugins", "num_nodes"):
        single.pop(key, None)
    return OmegaConf.create({**single, "strategy": "auto", "devices": 1})


@contextlib.contextmanager
def other_ranks_killed_on_failure(trainer: Trainer) -> Iterator[None]:
    """On the rank that started the others as subprocesses (``trainer=ddp|fsdp`` on one node), kill them when
    this rank fails. Lightning leaves them running: a rank waiting for data, or for a collective that can no
    longer complete, would hold its devices until killed by hand (under SLURM, ``srun`` ends a failed step's
    other tasks). The failure is logged first: Lightning's watcher thread kills this process as soon as it sees
    a rank killed, possibly before the error reaches the console."""
    try:
        yield
    except BaseException as exc:
        launcher = trainer.strategy.launcher
        if isinstance(launcher, _SubprocessScriptLauncher) and launcher.procs:
            log.error("this rank failed (%s: %s): killing the %d ranks it started", type(exc).__name__, exc,
                      len(launcher.procs))
            for proc in launcher.procs:  # with their loader workers and shard pipes, which would outlive them
                for pid in [proc.pid, *_descendants(proc.pid)]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        raise


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid``, from Linux's ``/proc`` (none elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # a process that ends meanwhile
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # after "pid (name) state"
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def check_slurm_allocation(environ: Mapping[str, str] = os.environ) -> None:
    """Raise SlurmSetupError unless the allocation's job id, node count and tasks per node are set and valid."""
    missing = [name for name in SLURM_ALLOCATION if not environ.get(name)]
    if missing:
        raise SlurmSetupError(
            f"trainer=slurm: {', '.join(missing)} not set. Run it with srun inside an allocation made with "
            "--nodes and --ntasks-per-node (one task per device), as slurm/train.sbatch does"
        )
    for name in ("SLURM_NNODES", "SLURM_NTASKS_PER_NODE"):
        value = environ[name]
        if not value.isdigit() or int(value) < 1:
            raise SlurmSetupError(f"trainer=slurm: {name}={value!r} is not a positive integer (one count per node)")


def claim_run_dir_for_job(run_dir: Path, job_id: str, rank: int) -> None:
    """Record ``job_id`` as the owner of ``run_dir`` (rank 0), or check that it already is.

    Raises:
        SlurmSetupError: ``run_dir`` belongs to another job.
    """
    owner_path = run_dir / OWNER_FILE
    if owner_path.is_file():
        owner = json.loads(owner_path.read_text(encoding="utf-8")).get("job_id")
        if owner != job_id:
            raise SlurmSetupError(
                f"run_dir {run_dir} belongs to SLURM job {owner} ({owner_path}), not to this job {job_id}: "
                f"give this job its own run_dir, or delete {owner_path} to take the directory over"
            )
        return
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = owner_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"job_id": job_id}) + "\n", encoding="utf-8")
        tmp.replace(owner_path)


def encoder_block_classes() -> set[type[torch.nn.Module]]:
    """The module classes FSDP wraps (and checkpoints) one by one: the image encoder's transformer blocks.

    For ``FSDPStrategy(auto_wrap_policy=..., activation_checkpointing_policy=...)`` (``trainer=fsdp``): each
    block becomes one FSDP unit, whose weights are gathered just before it runs and freed after.
    """
    from timm.models.vision_transformer_sam import Block

    return {Block}


class SamFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, for ``InteractiveSamModule`` and for train.py's validate, fit, validate.

    Two changes. ``training_step`` is called as it is, not as the forward of the root FSDP module: it runs
    the backward pass and the optimiser step (manual optimisation), which FSDP1 does not allow inside a
    forward (Lightning issue #19685); the module sends the batch through the root module itself. And the
    module is wrapped once: Lightning wraps it in place (its encoder blocks become FSDP units) and, handed
    it again, takes it for wrapped already and leaves the rest (patch embedding, neck, prompt encoder,
    decoder) as the first call left it, flat shards (Lightning issue #19015); here every later call gets
    the root FSDP module of the first.
    """

    _root: torch.nn.Module | None = None

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self._root is None or self._root.module is not model:
            self._root = super()._setup_model(model)
        return self._root

    def training_step(self, *args, **kwargs):
        with self.precision_plugin.train_step_context():
            return self.lightning_module.training_step(*args, **kwargs)


def gather_full_model(strategy: FSDPStrategy, model: Sam) -> Sam | None:
    """A plain copy of ``model`` (a part of the module ``strategy`` holds in FSDP shards) with its full weights.

    Every rank must call it (the weights are gathered with collectives); the copy is built on the CPU of
    global rank 0, the other ranks get None.
    """
    from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

    full = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
    with FullyShardedDataParallel.state_dict_type(strategy.model, StateDictType.FULL_STATE_DICT, full):
        state = strategy.model.state_dict()
    if strategy.global_rank != 0:
        return None
    prefix = next(f"{name}." for name, sub in strategy.lightning_module.named_modules() if sub is model)
    copy = build_sam(model.config)
    copy.load_state_dict({key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)})
    return copy
