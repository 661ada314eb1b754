"""``launcher=slurm``: each training, evaluation and stage-3 labelling of the engine as SLURM jobs (submitit).

A training is one job of ``launcher.train.nodes`` x ``tasks_per_node`` ranks (``trainer=slurm``; USR1 before
its time limit saves, requeues and resumes it, :mod:`sam_engine.train.requeue`); an evaluation is a job of one
task; stage 3's labelling is an array whose tasks split pool3's shards (requeued by submitit when preempted or
near their limit, :class:`sam_engine.engine.jobs.LabelTask`), whose union is checked before the step is done.

Every submission is recorded at once in ``<step>/jobs/<part>.json`` (job ids, logs). An engine started again
(after a crash, a reboot, or ``kill``) reads the record and waits for the jobs still pending or running
instead of submitting them again; a job submitted just before the engine died, too late to be recorded, is
found by its ``--comment`` (the record's path) in ``squeue``. A job that failed stops the engine with its id,
state and log; the next run submits it again (a training resumes from its last checkpoint, a labelling task
skips its finished shards).

Job states come from ``scontrol`` (jobs SLURM still holds) and then ``sacct`` (clusters with accounting),
not from submitit's watcher, which needs ``sacct``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import submitit
from omegaconf import DictConfig, OmegaConf

from sam_engine.engine import jobs
from sam_engine.engine.launcher import labelling_problem, save_train_config
from sam_engine.label.inputs import list_input_shards
from sam_engine.train.distributed import OWNER_FILE
from sam_engine.utils.atomic_files import write_json_atomic

log = logging.getLogger(__name__)

ENDED = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                   "PREEMPTED", "TIMEOUT", "UNKNOWN"})
"""Job states after which a job runs no more (UNKNOWN: neither scontrol nor sacct knows it any longer)."""
SETTLE_SECONDS = 3
"""A job being requeued shows an ended state for a moment: an end is believed when it holds this long."""
COMMENT = "sam_engine:"


def job_state(job_id: str) -> str:
    """SLURM's state of a job (``123`` or an array task ``123_4``): from ``scontrol`` while the controller holds
    it, else from ``sacct``; ``UNKNOWN`` when neither knows it."""
    shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=False)
    state = re.search(r"\bJobState=(\S+)", shown.stdout) if shown.returncode == 0 else None
    if state:
        return state.group(1)
    with contextlib.suppress(OSError):
        accounted = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id],
                                   capture_output=True, text=True, check=False)
        words = accounted.stdout.split() if accounted.returncode == 0 else []
        if words:
            return words[0]  # "CANCELLED by 1000": its first word
    return "UNKNOWN"


def live_jobs(comment: str) -> dict[str, str]:
    """{job id: comment} of this user's pending or running jobs whose comment starts with ``comment``."""
    listed = subprocess.run(["squeue", "-h", "-r", "-u", str(os.getuid()), "-o", "%i|%k"],
                            capture_output=True, text=True, check=False)
    jobs_ = (line.split("|", 1) for line in listed.stdout.splitlines() if "|" in line)
    return {job_id: text for job_id, text in jobs_ if text.startswith(comment)}


@contextlib.contextmanager
def outside_the_engines_allocation() -> Iterator[None]:
    """Submit without the ``SLURM_*`` variables of a job the engine itself runs in (its task counts would leak
    into the submitted jobs); ``SLURM_CONF`` stays: it says which cluster."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("SLURM_") and k != "SLURM_CONF"}
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(saved)


@dataclass(frozen=True)
class Job:
    """A submitted job (or array task) and its log."""

    job_id: str
    log: str


class SlurmLauncher:
    """Trainings, evaluations and labelling as SLURM jobs; see the module's docstring.

    Arguments:
        cfg: the engine's ``launcher`` config (``conf/launcher/slurm.yaml``).
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.folder = Path(cfg.folder)

    # --- the engine's work ---------------------------------------------------------------------------------

    def train(self, cfg: DictConfig) -> dict:
        run_dir = Path(cfg.run_dir)
        config = save_train_config(cfg, command=False)
        metrics = run_dir / "metrics.json"
        record = run_dir.parent / "jobs" / "train.json"

        def submit(tasks: list[int]) -> list[Job]:
            (run_dir / OWNER_FILE).unlink(missing_ok=True)  # no job of this training lives: the new one owns it
            train = self.cfg.train
            executor = self.executor("train", record, nodes=train.nodes, ntasks_per_node=train.tasks_per_node,
                                     gpus_per_node=train.gpus_per_node or None, cpus_per_task=train.cpus_per_task,
                                     signal=f"USR1@{train.signal_seconds}")
            return self.submitted([executor.submit(jobs.train_task, str(config))])

        self.run("training " + str(run_dir), record, 1, submit,
                 lambda: None if metrics.is_file() else f"{metrics} was not written", self.cfg.train.retries)
        return json.loads(metrics.read_text())

    def evaluate(self, cfg: DictConfig) -> dict:
        run_dir = Path(cfg.run_dir)
        config = save_train_config(cfg, command=False)
        out = run_dir / "evaluation.json"
        record = run_dir / "jobs" / "evaluate.json"

        def submit(tasks: list[int]) -> list[Job]:
            options = self.cfg.evaluate
            executor = self.executor("evaluate", record, ntasks_per_node=1, gpus_per_node=options.gpus or None,
                                     cpus_per_task=options.cpus_per_task)
            return self.submitted([executor.submit(jobs.evaluate_task, str(config), str(out))])

        self.run("evaluation " + str(run_dir), record, 1, submit,
                 lambda: None if out.is_file() else f"{out} was not written", 0)
        return json.loads(out.read_text())

    def label(self, cfg: DictConfig) -> None:
        output = Path(cfg.output)
        step_dir = output.parent
        config = step_dir / "label_config.yaml"
        step_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, config)
        options = self.cfg.label
        count = max(1, min(options.tasks, len(list_input_shards(cfg.input, cfg.images_per_shard))))
        record = step_dir / "jobs" / "label.json"

        def submit(tasks: list[int]) -> list[Job]:
            executor = self.executor("label", record, ntasks_per_node=1, gpus_per_task=options.gpus_per_task or None,
                                     cpus_per_task=options.cpus_per_task, array_parallelism=options.parallel,
                                     signal_delay_s=options.signal_seconds, tasks=tasks)
            return self.submitted(executor.map_array(jobs.LabelTask(), [str(config)] * len(tasks), tasks,
                                                     [count] * len(tasks)))

        self.run(f"labelling {cfg.input} -> {output}", record, count, submit, lambda: labelling_problem(cfg),
                 options.retries)

    # --- submitting and waiting ----------------------------------------------------------------------------

    def executor(self, kind: str, record: Path, signal: str | None = None, tasks: list[int] | None = None,
                 **parameters) -> submitit.SlurmExecutor:
        """A submitit executor for one kind of job: the launcher's common options, then ``parameters``; its
        ``--comment`` names the ``record`` its jobs go in and their ``tasks`` (:meth:`Record.adopt_unrecorded`)."""
        executor = submitit.SlurmExecutor(folder=self.folder)
        additional = {"requeue": True, **OmegaConf.to_container(self.cfg.additional)}
        if signal is not None:  # instead of submitit's USR2: the training's own handler (train/requeue.py)
            additional["signal"] = signal
        executor.update_parameters(
            job_name=f"sam-{kind}", time=self.cfg.time_minutes, partition=self.cfg.partition,
            account=self.cfg.account, qos=self.cfg.qos, setup=list(self.cfg.setup),
            comment=f"{COMMENT}{record.resolve()}:{','.join(str(t) for t in tasks or [0])}",
            additional_parameters=additional, **parameters,
        )
        return executor

    def submitted(self, submitted: list[submitit.Job]) -> list[Job]:
        return [Job(job.job_id, str(job.paths.stdout)) for job in submitted]

    def run(self, name: str, record_path: Path, count: int, submit: Callable[[list[int]], list[Job]],
            unfinished: Callable[[], str | None], retries: int) -> None:
        """Run tasks ``0 .. count - 1`` of a part of a step as jobs until ``unfinished()`` finds nothing missing
        (it returns None, else what is missing).

        Jobs recorded in ``record_path`` (or found in ``squeue`` by their comment) that still run are waited for.
        A task without a job, or whose job ended without completing, is submitted as soon as that is seen,
        while the other tasks run on: at most ``retries + 1`` times by this run of the engine.

        Raises:
            RuntimeError: a task's job ended without completing after its retries, naming the job, state and log.
        """
        record = Record(record_path, self.folder)
        record.adopt_unrecorded()
        ended: dict[str, str] = {}  # job id -> the state it ended in
        submissions = dict.fromkeys(range(count), 0)
        announce = True
        while True:
            states = self.states(record, ended)
            redo = [task for task in range(count) if submissions[task] <= retries
                    and (task not in states or states[task] in ENDED - {"COMPLETED"})]
            if redo:
                self.submit_tasks(name, record, redo, submit)
                for task in redo:
                    submissions[task] += 1
                announce = True
                continue
            live = [job for task, job in record.tasks.items() if states[task] not in ENDED]
            if not live:
                break
            if announce:
                log.info("%s: waiting for SLURM jobs %s (logs: %s)", name, " ".join(j.job_id for j in live),
                         " ".join(j.log for j in live))
                announce = False
            time.sleep(self.cfg.poll_seconds)
        missing = unfinished()
        if missing is None:
            return
        failed = [f"job {job.job_id} ended {states[task]} (log: {job.log})"
                  for task, job in record.tasks.items() if states[task] != "COMPLETED"]
        raise RuntimeError(f"{name}: " + ("; ".join(failed) or f"its jobs completed, yet {missing}")
                           + f"; jobs recorded in {record_path}. Run the engine again to submit it again")

    def submit_tasks(self, name: str, record: Record, tasks: list[int],
                     submit: Callable[[list[int]], list[Job]]) -> None:
        """Submit ``tasks`` (from outside the engine's own allocation) and record their jobs at once."""
        again = [task for task in tasks if task in record.tasks]
        if again:
            log.warning("%s: submitting tasks %s again", name, again)
        with outside_the_engines_allocation():
            new = submit(tasks)
        record.add(dict(zip(tasks, new, strict=True)))
        log.info("%s: submitted SLURM jobs %s (logs: %s)", name, " ".join(j.job_id for j in new),
                 " ".join(j.log for j in new))

    @staticmethod
    def states(record: Record, ended: dict[str, str]) -> dict[int, str]:
        """The state of each task's latest job. A job being requeued shows an ended state for a moment: an end
        is believed once it holds ``SETTLE_SECONDS`` (one wait for every job that looks ended), then kept in
        ``ended`` (job id -> state) and logged."""
        states = {task: ended.get(job.job_id) or job_state(job.job_id) for task, job in record.tasks.items()}
        looks_ended = [task for task, job in record.tasks.items() if states[task] in ENDED and job.job_id not in ended]
        if looks_ended:
            time.sleep(SETTLE_SECONDS)
        for task in looks_ended:
            job = record.tasks[task]
            states[task] = job_state(job.job_id)
            if states[task] in ENDED:
                ended[job.job_id] = states[task]
                log.info("SLURM job %s ended %s", job.job_id, states[task])
        return states


class Record:
    """The jobs of one part of a step (``<step>/jobs/<part>.json``): the latest job of each task, and every job
    ever submitted for it. ``folder``: submitit's, where the jobs' logs are."""

    def __init__(self, path: Path, folder: Path) -> None:
        self.path = path
        self.folder = folder
        saved = json.loads(path.read_text()) if path.is_file() else {"tasks": {}, "submitted": []}
        self.tasks = {int(task): Job(**job) for task, job in saved["tasks"].items()}
        self.submitted = saved["submitted"]

    def add(self, new: dict[int, Job]) -> None:
        self.tasks.update(new)
        self.submitted += [job.job_id for job in new.values()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, {"tasks": {str(t): vars(j) for t, j in sorted(self.tasks.items())},
                                      "submitted": self.submitted})

    def adopt_unrecorded(self) -> None:
        """Record the live jobs submitted for this part that the record lacks (the engine died between ``sbatch``
        and writing the record): their comment names the record and the tasks (an array's in its order)."""
        found = {}
        for job_id, comment in live_jobs(f"{COMMENT}{self.path.resolve()}:").items():
            if job_id in self.submitted:
                continue
            tasks = [int(t) for t in comment.rsplit(":", 1)[1].split(",")]
            position = int(job_id.split("_")[1]) if "_" in job_id else 0
            found[tasks[position]] = Job(job_id, str(submitit.core.utils.JobPaths(self.folder, job_id).stdout))
        if found:
            log.warning("%s: found SLURM jobs %s submitted but not recorded; waiting for them", self.path,
                        " ".join(j.job_id for j in found.values()))
            self.add(found)
