"""``launcher=slurm``: the engine's trainings (DDP over 2 CPU tasks), evaluations and stage-3 labelling (an array
of 3 tasks) as SLURM jobs on the localhost cluster; the driver killed and restarted; a labelling task cancelled.

The job bookkeeping (records, adoption, retries, the failure's message) is also checked without SLURM, on
fake job states; and the hand-submitted sbatch templates against the launcher's defaults.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from test_engine import CONF, SMALL

from sam_engine.data.shards import read_manifest
from sam_engine.engine import slurm as slurm_launcher
from sam_engine.engine.session import check_engine_config
from sam_engine.engine.slurm import Job, Record, SlurmLauncher

REPO = Path(__file__).resolve().parents[1]
ROUNDS = ["stage1.rounds=1", "stage2.rounds=0", "data.synthetic.4.num_images=9", "+data.synthetic.4.shard_size=3",
          "stage3.amg.points_per_side=32"]  # pool3: 3 shards of 3 images, 2 s each: a task is cancelled mid-shard
ON_SLURM = [
    "launcher=slurm", "trainer.accelerator=cpu", "trainer.precision=32-true", "launcher.poll_seconds=1",
    "launcher.time_minutes=15", "launcher.train.tasks_per_node=2", "launcher.train.gpus_per_node=0",
    "launcher.train.cpus_per_task=1", "launcher.evaluate.gpus=0", "launcher.evaluate.cpus_per_task=1",
    "launcher.label.tasks=3", "launcher.label.gpus_per_task=0", "launcher.label.cpus_per_task=1",
]


def small(*more: str) -> list[str]:
    replaced = {o.split("=")[0] for o in ROUNDS}
    return [o for o in SMALL if o.split("=")[0] not in replaced] + ROUNDS + list(more)


def wait_for(condition, what: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the engine ended (exit {proc.returncode}) before {what}:\n{log.read_text()[-6000:]}")
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.5)
    return found


def record(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def test_the_engine_runs_its_steps_as_slurm_jobs_survives_a_restart_and_a_cancelled_labelling_task(
        slurm_cluster, tmp_path, engine_run):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "sam_engine.engine", f"run_dir={run_dir}", f"data.root={tmp_path / 'data'}",
               *small(*ON_SLURM)]
    env = {**slurm_cluster.env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def engine(log: Path) -> subprocess.Popen:
        with log.open("w") as out:
            return subprocess.Popen(command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)

    first = engine(tmp_path / "first.log")  # killed once it has submitted the seed training
    seed_record = run_dir / "seed" / "jobs" / "train.json"
    seed_job = wait_for(lambda: record(seed_record).get("submitted"), "seed training job", 120, first,
                        tmp_path / "first.log")[0]
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert slurm_cluster.state(seed_job) in ("PENDING", "RUNNING")

    # the restarted engine waits for that job and goes on; its labelling task 1 is cancelled once at work
    second = engine(tmp_path / "second.log")
    label_record = run_dir / "stage3" / "jobs" / "label.json"

    def labelling(task: int) -> Callable[[], str | None]:
        def at_work() -> str | None:
            job = record(label_record).get("tasks", {}).get(str(task))
            err = Path(job["log"]).with_suffix(".err") if job else None
            return job["job_id"] if err and err.is_file() and f"task {task} of 3" in err.read_text() else None
        return at_work

    def published() -> dict:
        shards = run_dir / "stage3" / "shards"
        return read_manifest(shards)["shards"] if (shards / "manifest.json").is_file() else {}

    cancelled = wait_for(labelling(1), "labelling task 1 at work", 400, second, tmp_path / "second.log")
    time.sleep(1)  # into its shard's first image
    before = published()
    slurm_cluster.run(["scancel", cancelled])
    assert "synthetic-000001-000000.tar" not in before, before  # task 1's shard: unfinished
    preempted = wait_for(labelling(2), "labelling task 2 at work", 200, second, tmp_path / "second.log")
    time.sleep(1)
    slurm_cluster.run(["scancel", "--signal=USR2", preempted])  # as SLURM warns a job it preempts: requeued
    second.wait(timeout=300)
    out = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, out[-6000:]

    assert f"waiting for SLURM jobs {seed_job}" in out  # picked up, not submitted again
    assert record(seed_record)["submitted"] == [seed_job]
    for path in run_dir.glob("*/jobs/*.json"):
        if path != label_record:
            assert len(record(path)["submitted"]) == 1, path
    labels = record(label_record)
    resubmitted = [job for job in labels["submitted"] if job not in (cancelled,)]
    assert slurm_cluster.state(cancelled) == "CANCELLED"
    assert cancelled in labels["submitted"] and len(labels["submitted"]) == 4 and len(resubmitted) == 3
    assert labels["tasks"]["1"]["job_id"] != cancelled
    assert labels["tasks"]["2"]["job_id"] == preempted and slurm_cluster.job_info(preempted)["Restarts"] == "1"
    assert all(slurm_cluster.state(job["job_id"]) == "COMPLETED" for job in labels["tasks"].values())

    pool = read_manifest(tmp_path / "data" / "pool3")["shards"]
    labelled = read_manifest(run_dir / "stage3" / "shards")["shards"]
    keys = sorted(k for entry in labelled.values() for k in entry["keys"])
    assert keys == sorted(k for entry in pool.values() for k in entry["keys"])  # every image, once

    seed_logs = " ".join(p.read_text(errors="replace") for p in (run_dir / "slurm").glob(f"{seed_job}_*_log.*"))
    assert sorted(re.findall(r"Initializing distributed: GLOBAL_RANK: (\d)", seed_logs)) == ["0", "1"]  # DDP
    assert json.loads((run_dir / "seed" / "train" / "metrics.json").read_text())["steps"] == 3

    # each step's summary row has the columns of the same step run in-process (the local engine run of test_engine)
    rows = json.loads((run_dir / "engine_summary.json").read_text())
    local = {row["step"]: row for row in json.loads((engine_run[0] / "run" / "engine_summary.json").read_text())}
    assert [row["step"] for row in rows] == ["seed", "stage1/round1", "stage3", "final"]
    for on_slurm in rows:
        assert set(on_slurm) == set(local[on_slurm["step"]]), on_slurm["step"]
    assert rows[2]["images"] == 9


# --- without SLURM: the bookkeeping on fake job states -----------------------------------------------------------


class FakeCluster:
    """Job states the launcher reads, and the jobs it submits (job ids 100, 101, ...)."""

    def __init__(self, monkeypatch, ends: str = "COMPLETED"):
        self.states: dict[str, list[str]] = {}  # job id -> states still to report (the last one stays)
        self.submissions: list[list[int]] = []
        self.ends = ends
        self.live: dict[str, str] = {}
        monkeypatch.setattr(slurm_launcher, "job_state", self.state)
        monkeypatch.setattr(slurm_launcher, "live_jobs", lambda comment: self.live)
        monkeypatch.setattr(slurm_launcher, "SETTLE_SECONDS", 0)

    def state(self, job_id: str) -> str:
        states = self.states.get(job_id, ["UNKNOWN"])
        return states.pop(0) if len(states) > 1 else states[0]

    def submit(self, tasks: list[int]) -> list[Job]:
        self.submissions.append(tasks)
        jobs = [Job(str(100 + len(self.states) + i), f"/logs/{100 + len(self.states) + i}.out")
                for i in range(len(tasks))]
        for job in jobs:
            self.states[job.job_id] = ["RUNNING", self.ends]
        return jobs


def launcher(tmp_path: Path) -> SlurmLauncher:
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose(config_name="engine", overrides=[f"run_dir={tmp_path}", "launcher=slurm",
                                                       "launcher.poll_seconds=0"])
    check_engine_config(cfg)
    return SlurmLauncher(cfg.launcher)


def test_a_failed_job_stops_the_step_naming_its_id_state_and_log_and_a_rerun_submits_it_again(
        tmp_path, monkeypatch):
    fake = FakeCluster(monkeypatch, ends="FAILED")
    records = tmp_path / "jobs" / "train.json"
    with pytest.raises(RuntimeError, match=r"job 100 ended FAILED \(log: /logs/100.out\)"):
        launcher(tmp_path).run("training", records, 1, fake.submit, lambda: "no metrics", retries=0)
    assert fake.submissions == [[0]]
    fake.ends = "COMPLETED"
    done = []

    def submit(tasks):
        done.append(tasks)
        return fake.submit(tasks)

    for _ in range(2):  # the rerun submits the failed training again; the one after finds it finished
        launcher(tmp_path).run("training", records, 1, submit, lambda: None if done else "no metrics", retries=0)
        assert fake.submissions == [[0], [0]] and record(records)["submitted"] == ["100", "101"]


def test_a_restarted_engine_waits_for_recorded_and_unrecorded_live_jobs_and_retries_failed_tasks(
        tmp_path, monkeypatch):
    fake = FakeCluster(monkeypatch)
    records = tmp_path / "jobs" / "label.json"
    Record(records, tmp_path).add({0: Job("7_0", "/logs/7_0.out")})
    fake.states.update({"7_0": ["RUNNING", "COMPLETED"], "7_1": ["RUNNING", "CANCELLED"],
                        "8": ["PENDING", "COMPLETED"]})
    # 7_1 was submitted (array 7 for tasks 0 and 1) when the engine died; 8 (task 2) likewise
    fake.live = {"7_1": f"sam_engine:{records.resolve()}:0,1", "8": f"sam_engine:{records.resolve()}:2"}
    labelled = {"done": False}

    def submit(tasks):
        labelled["done"] = True
        return fake.submit(tasks)

    launcher(tmp_path).run("labelling", records, 3, submit, lambda: None if labelled["done"] else "shards missing",
                           retries=1)
    assert fake.submissions == [[1]]  # only the cancelled task, as soon as it ended
    saved = record(records)
    assert saved["submitted"] == ["7_0", "7_1", "8", "103"] and saved["tasks"]["2"]["job_id"] == "8"
    assert saved["tasks"]["1"]["job_id"] == "103"


def test_a_failed_task_is_submitted_again_while_the_other_tasks_run_on(tmp_path, monkeypatch):
    fake = FakeCluster(monkeypatch)
    records = tmp_path / "jobs" / "label.json"

    def submit(tasks):
        if fake.submissions:  # the retry of task 1 comes while task 0's job 100 still runs
            assert len(fake.states["100"]) > 1, fake.states["100"]
        jobs = fake.submit(tasks)
        if len(fake.submissions) == 1:
            fake.states.update({"100": ["RUNNING"] * 5 + ["COMPLETED"], "101": ["RUNNING", "FAILED"]})
        return jobs

    launcher(tmp_path).run("labelling", records, 2, submit, lambda: None, retries=1)
    assert fake.submissions == [[0, 1], [1]]
    assert record(records)["tasks"]["1"]["job_id"] == "102" and record(records)["tasks"]["0"]["job_id"] == "100"


def test_launcher_values_and_trainer_are_checked_by_key(tmp_path):
    def check(*overrides):
        with initialize_config_dir(config_dir=CONF, version_base=None):
            check_engine_config(compose(config_name="engine", overrides=[f"run_dir={tmp_path}", *overrides]))

    with pytest.raises(ValueError, match="launcher.label.tasks=0"):
        check("launcher=slurm", "launcher.label.tasks=0")
    with pytest.raises(ValueError, match="needs trainer=slurm"):
        check("launcher=slurm", "trainer=cpu")
    with pytest.raises(ValueError, match="run the engine with launcher=slurm"):
        check("trainer=slurm")
    with pytest.raises(ValueError, match="launcher=cloud"):
        check("launcher.kind=cloud")


def sbatch_options(template: Path) -> dict[str, str]:
    lines = (line.split()[1] for line in template.read_text().splitlines() if line.startswith("#SBATCH"))
    return {name.lstrip("-"): value for name, _, value in (option.partition("=") for option in lines)}


def test_the_hand_submitted_templates_ask_for_what_the_launcher_asks_for(tmp_path):
    """slurm/train.sbatch and slurm/label_array.sbatch, for people who submit by hand, against the sbatch options
    the launcher's defaults give submitit (conf/launcher/slurm.yaml)."""
    slurm = launcher(tmp_path)
    options = slurm.cfg.train
    train = slurm.executor("train", tmp_path / "train.json", nodes=options.nodes,
                           ntasks_per_node=options.tasks_per_node, gpus_per_node=options.gpus_per_node,
                           cpus_per_task=options.cpus_per_task, signal=f"USR1@{options.signal_seconds}").parameters
    template = sbatch_options(REPO / "slurm" / "train.sbatch")
    assert template["signal"] == train["additional_parameters"]["signal"] == "USR1@120"
    assert "requeue" in template and train["additional_parameters"]["requeue"] is True
    assert int(template["time"].split(":")[0]) * 60 == train["time"]
    for option, key in (("nodes", "nodes"), ("ntasks-per-node", "ntasks_per_node"), ("gpus-per-node", "gpus_per_node"),
                        ("cpus-per-task", "cpus_per_task")):
        assert int(template[option]) == train[key], option
    label = slurm.executor("label", tmp_path / "label.json", gpus_per_task=slurm.cfg.label.gpus_per_task,
                           cpus_per_task=slurm.cfg.label.cpus_per_task,
                           signal_delay_s=slurm.cfg.label.signal_seconds).parameters
    template = sbatch_options(REPO / "slurm" / "label_array.sbatch")
    assert template["signal"].endswith(f"@{label['signal_delay_s']}") and "requeue" in template
    assert int(template["gpus-per-task"]) == label["gpus_per_task"]
    assert int(template["cpus-per-task"]) == label["cpus_per_task"]


def test_submitting_leaves_out_the_engines_own_allocation(monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/slurm.conf")
    with slurm_launcher.outside_the_engines_allocation():
        assert "SLURM_NTASKS_PER_NODE" not in os.environ and os.environ["SLURM_CONF"] == "/etc/slurm/slurm.conf"
    assert os.environ["SLURM_NTASKS_PER_NODE"] == "2"
