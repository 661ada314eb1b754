"""slurm/label_array.sbatch on a real SLURM (localhost): an array labels a shard set, a cancelled task is
finished by a rerun, and a task near its time limit requeues itself only when it has made progress."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from sam_engine.data.shards import read_manifest, tar_keys
from sam_engine.data.synthetic.dataset import ensure_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "slurm" / "label_array.sbatch"
# One CPU per task, no GPU (the localhost node has none), minutes of time limit.
ALLOCATION = ["--gpus-per-task=0", "--cpus-per-task=1", "--time=15"]
# 64 clicks on a 128 px image keep a task at ~1 s per shard (thresholds: fitted to the disk model, in `submit`).
FAST = "amg.points_per_side=8"
# 256 clicks on a 256 px image: ~1 s per image on one core, so a shard of 6 takes several seconds.
SLOW = "amg.points_per_side=16"


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    """Input shard sets: "small" 6 shards x 2 images of 128 px; "slow" 2 shards x 6 images of 256 px."""
    root = tmp_path_factory.mktemp("pools")
    return {
        "small": ensure_synthetic_dataset(root / "small", num_images=12, seed=5, image_size=128, shard_size=2),
        "slow": ensure_synthetic_dataset(root / "slow", num_images=12, seed=6, image_size=256, shard_size=6),
    }


@pytest.fixture
def submit(slurm_cluster, disk_export, disk_thresholds, tmp_path, monkeypatch):
    """submit(input, output, extra, *sbatch_args) -> the array job id; environment restored after the test."""
    env = slurm_cluster.env
    for name in ("STAGE", "NUM_TASKS", "EXTRA"):  # other tests of the session may have set them
        monkeypatch.delitem(env, name, raising=False)
    monkeypatch.setitem(env, "CHECKPOINT", str(disk_export))
    monkeypatch.setitem(env, "PYTHON", sys.executable)
    monkeypatch.setitem(env, "PYTHONPATH", str(REPO))
    monkeypatch.setitem(env, "OMP_NUM_THREADS", "1")

    def run(source: Path, output: Path, extra: str, *args: str) -> int:
        monkeypatch.setitem(env, "INPUT", str(source))
        monkeypatch.setitem(env, "OUTPUT", str(output))
        fitted = " ".join(f"amg.{key}={value}" for key, value in disk_thresholds.items())
        monkeypatch.setitem(env, "EXTRA", f"{fitted} {extra}")
        return slurm_cluster.sbatch([*ALLOCATION, *args, str(TEMPLATE)], cwd=tmp_path)

    return run


def task_log(tmp_path: Path, job: int, task: int) -> str:
    path = tmp_path / f"slurm-sam-label-{job}_{task}.out"
    return path.read_text(errors="replace") if path.exists() else ""


def logs(tmp_path: Path, job: int) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(tmp_path.glob(f"slurm-*-{job}_*.out")))


def task_states(slurm_cluster, job: int) -> dict[int, str]:
    """{array index: JobState} of a job whose tasks have all started."""
    return {int(i["ArrayTaskId"]): i["JobState"] for i in slurm_cluster.job_infos(job)}


def keys(directory: Path) -> list[str]:
    """Every key of every shard in the manifest (a list: a duplicate shows)."""
    return [key for entry in read_manifest(directory)["shards"].values() for key in entry["keys"]]


def summary(output: Path, task: int) -> dict:
    return json.loads((output / "summaries" / f"task-{task:06d}.json").read_text())


def verify(slurm_cluster, source: Path, output: Path, cwd: Path, dependency: int | None = None) -> tuple[str, dict]:
    """Run `python -m sam_engine.label verify=true` as a job (after `dependency` succeeded): (state, report)."""
    command = f"{sys.executable} -m sam_engine.label input={source} output={output} verify=true hydra.run.dir=hydra"
    after = [f"--dependency=afterok:{dependency}", "--kill-on-invalid-dep=yes"] if dependency else []
    job = slurm_cluster.sbatch([*after, "--cpus-per-task=1", "--output=verify-%j.out", "--wrap", command], cwd=cwd)
    state = slurm_cluster.wait(job, timeout=300)
    text = (cwd / f"verify-{job}.out").read_text()
    return state, json.loads(text[text.index("{") : text.rindex("}") + 1])


def test_an_array_of_three_tasks_labels_every_image_once(slurm_cluster, submit, pools, tmp_path):
    source, output = pools["small"], tmp_path / "labelled"
    job = submit(source, output, FAST, "--array=0-2%2")
    report_state, report = verify(slurm_cluster, source, output, tmp_path, dependency=job)
    assert slurm_cluster.wait(job, timeout=300) == "COMPLETED", logs(tmp_path, job)
    assert task_states(slurm_cluster, job) == {0: "COMPLETED", 1: "COMPLETED", 2: "COMPLETED"}

    inputs = sorted(read_manifest(source)["shards"])
    expected = {name.removesuffix(".tar") + "-000000.tar" for name in inputs}
    assert set(read_manifest(output)["shards"]) == expected
    assert sorted(keys(output)) == sorted(keys(source))  # every input image, exactly once
    for name in expected:
        assert tar_keys(output / name) == read_manifest(output)["shards"][name]["keys"]
    assert not list(output.glob("*.tmp-*"))

    for task in range(3):  # contiguous blocks of 2 shards, in order
        done = summary(output, task)
        block = [name.removesuffix(".tar") for name in inputs[2 * task : 2 * task + 2]]
        assert (done["task_index"], done["num_tasks"], done["input_shards"]) == (task, 3, block)
        assert done["shards_labelled"] == block and done["complete"] and done["masks"] > 0
        assert f"task {task} of 3 ended with exit code 0" in task_log(tmp_path, job, task)

    # the verification job waited for the whole array (afterok) and found it complete
    assert report_state == "COMPLETED"
    assert report["done"] == 6 and report["missing"] == [] and report["duplicate_keys"] == 0
    assert report["images"] == 12


def test_a_task_cancelled_mid_shard_publishes_nothing_and_a_rerun_completes_the_set(
    slurm_cluster, submit, pools, tmp_path
):
    source, output = pools["slow"], tmp_path / "labelled"
    job = submit(source, output, SLOW, "--array=0-1")
    deadline = time.monotonic() + 240
    while not list(output.glob("synthetic-000001-000000.tar.tmp-*")):  # task 1 has written an image
        assert time.monotonic() < deadline, logs(tmp_path, job)
        assert slurm_cluster.state(f"{job}_1") in ("PENDING", "RUNNING"), logs(tmp_path, job)
        time.sleep(0.1)
    slurm_cluster.run(["scancel", f"{job}_1"])
    slurm_cluster.wait(job, timeout=300)
    # cancelled while its shard was being written: nothing of that shard is published
    assert task_states(slurm_cluster, job) == {0: "COMPLETED", 1: "CANCELLED"}, logs(tmp_path, job)
    assert list(read_manifest(output)["shards"]) == ["synthetic-000000-000000.tar"]
    assert not (output / "synthetic-000001-000000.tar").exists()
    state, report = verify(slurm_cluster, source, output, tmp_path)
    assert state == "FAILED" and report["missing"] == ["synthetic-000001"]  # verify=true exits 1

    rerun = submit(source, output, SLOW, "--array=0-1")
    assert slurm_cluster.wait(rerun, timeout=300) == "COMPLETED", logs(tmp_path, rerun)
    assert summary(output, 0)["shards_already_done"] == ["synthetic-000000"]
    assert summary(output, 0)["shards_labelled"] == []
    assert summary(output, 1)["shards_labelled"] == ["synthetic-000001"]
    assert sorted(keys(output)) == sorted(keys(source))
    assert not list(output.glob("*.tmp-*"))  # the killed writer's temporary file was removed
    state, report = verify(slurm_cluster, source, output, tmp_path)
    assert state == "COMPLETED" and report["missing"] == [] and report["duplicate_keys"] == 0


def test_near_the_time_limit_a_task_requeues_itself_only_after_finishing_a_shard(
    slurm_cluster, submit, pools, tmp_path
):
    source, output = pools["slow"], tmp_path / "labelled"
    job = submit(source, output, SLOW, "--array=0")  # one task, both shards
    task = f"{job}_0"
    deadline = time.monotonic() + 240

    def until(condition) -> None:
        while not condition():
            assert time.monotonic() < deadline, task_log(tmp_path, job, 0)
            time.sleep(0.1)

    # USR1 (what --signal=B:USR1@300 sends) before any shard is finished: requeueing would gain nothing
    until(lambda: "2 of 2 input shards" in task_log(tmp_path, job, 0))
    slurm_cluster.run(["scancel", "--batch", "--signal=USR1", task])
    until(lambda: "not requeued" in task_log(tmp_path, job, 0))
    # after the first shard: requeued, and the requeued task labels only the second one
    until(lambda: (output / "summaries" / "task-000000.json").exists())
    slurm_cluster.run(["scancel", "--batch", "--signal=USR1", task])
    assert slurm_cluster.wait(job, timeout=300) == "COMPLETED", task_log(tmp_path, job, 0)
    log = task_log(tmp_path, job, 0)
    assert slurm_cluster.job_info(task)["Restarts"] == "1", log
    assert "restart 1: task 0 of 1" in log and "shards finished in this run are kept: requeue" in log
    assert summary(output, 0)["shards_already_done"] == ["synthetic-000000"]
    assert summary(output, 0)["shards_labelled"] == ["synthetic-000001"]
    assert sorted(keys(output)) == sorted(keys(source))

