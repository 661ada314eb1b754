"""Runs on SLURM: the checks made before any work starts, and which job a run directory belongs to.

``trainer=slurm`` takes its node and device counts from the allocation (``SLURM_NNODES``,
``SLURM_NTASKS_PER_NODE``); :func:`check_slurm_allocation` refuses to start without them, or with
counts that are not positive integers. :func:`claim_run_dir` keys a run directory on the SLURM job id:
a requeued job (same id) finds and resumes its checkpoint, another job is refused before it can
overwrite the first one's checkpoints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

SLURM_ALLOCATION = ("SLURM_JOB_ID", "SLURM_NNODES", "SLURM_NTASKS_PER_NODE")
OWNER_FILE = "slurm_job.json"
"""In a run directory: the SLURM job that owns it."""


class SlurmSetupError(RuntimeError):
    """The SLURM allocation or run directory does not fit the run; raised before any work starts."""


def uses_slurm(trainer_cfg: Mapping) -> bool:
    """Whether a trainer config runs under Lightning's SLURMEnvironment (``trainer=slurm``)."""
    plugins = trainer_cfg.get("plugins") or []
    return any(str(p.get("_target_", "")).endswith("SLURMEnvironment") for p in plugins if isinstance(p, Mapping))


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


def claim_run_dir(run_dir: Path, job_id: str, rank: int) -> None:
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
