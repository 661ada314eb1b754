"""slurm/engine.sh: the stage chain train1 -> label2 -> train2 -> label3 -> train3 with SLURM dependencies.

DRY_RUN prints the chain without SLURM; the real chain runs on the localhost cluster with a few steps per
stage (about a minute).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
from itertools import pairwise
from pathlib import Path

import pytest
from test_train import FAST

from sam_engine.data.shards import read_manifest
from sam_engine.data.synthetic.dataset import ensure_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "slurm" / "engine.sh"
STEPS = ["train1", "label2", "train2", "label3", "train3"]
CPU = ["trainer.accelerator=cpu", "trainer.precision=32-true"]
# Stage 1 starts from the disk model (conftest) and every stage trains with a negligible learning rate: each
# export answers with masks to label only if its stage started from the previous stage's export.
LABEL = "amg.points_per_side=4"  # plus the thresholds fitted to the disk model (chain_env)
# Variables the templates read that a test of the session may have left in the cluster's environment.
TEMPLATE_VARIABLES = ("STAGE", "INPUT", "OUTPUT", "CHECKPOINT", "EXTRA", "NUM_TASKS", "ENGINE_DIR", "FROM")


def dry_run(**env: str) -> dict[str, list[str]]:
    """{step: its sbatch command's words} as DRY_RUN=1 prints them."""
    clean = {k: v for k, v in os.environ.items() if k not in TEMPLATE_VARIABLES and not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(ENGINE)], env={**clean, "DRY_RUN": "1", **env},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if not line.startswith("#")]
    return {step: shlex.split(command) for step, _, command in (line.partition(": ") for line in lines)}


def option(words: list[str], name: str) -> str | None:
    return next((w.split("=", 1)[1] for w in words if w.startswith(f"{name}=")), None)


def test_dry_run_prints_the_chain_with_each_step_after_the_previous_one():
    commands = dry_run(POOL="/data/pool", ARRAY="0-99%20", ENGINE_DIR="/shared/engine",
                       TRAIN_ARGS="--nodes=4", LABEL_ARGS="--partition=gpu", PYTHON="/opt/py",
                       TRAIN_OVERRIDES="model=vit_b data.train=/data/seed", TRAIN2_OVERRIDES="stage.max_steps=9",
                       LABEL_OVERRIDES=LABEL)
    assert list(commands) == STEPS
    for previous, step in zip([None, *STEPS[:-1]], STEPS, strict=True):
        words = commands[step]
        assert words[0] == "env" and "sbatch" in words and "--parsable" in words
        assert option(words, "--dependency") == (f"afterok:{previous}" if previous else None)
        assert ("--kill-on-invalid-dep=yes" in words) == (previous is not None)
        assert option(words, "ENGINE_DIR") == "/shared/engine" and option(words, "PYTHON") == "/opt/py"
        stage = step[-1]
        assert option(words, "STAGE") == stage
        if step.startswith("train"):
            hydra = words[words.index(str(REPO / "slurm" / "train.sbatch")) + 1 :]
            assert hydra == ["model=vit_b", "data.train=/data/seed", *(["stage.max_steps=9"] if stage == "2" else [])]
            assert "--nodes=4" in words and option(words, "--job-name") == f"sam-train-{stage}"
        else:
            assert words[-1] == str(REPO / "slurm" / "label_array.sbatch")
            assert option(words, "--array") == "0-99%20" and "--partition=gpu" in words
            assert option(words, "INPUT") == "/data/pool"
            assert option(words, "OUTPUT") == f"/shared/engine/stage{stage}/shards"  # where stage N trains
            assert option(words, "CHECKPOINT") == f"/shared/engine/stage{int(stage) - 1}/train/export"
            assert option(words, "EXTRA") == LABEL  # one word for sbatch's environment, split by the template


def test_dry_run_from_a_later_step_and_bad_settings():
    assert list(dry_run(POOL="p", FROM="label3")) == ["label3", "train3"]
    assert option(dry_run(POOL="p", FROM="label3")["label3"], "--dependency") is None
    clean = {k: v for k, v in os.environ.items() if k not in ("POOL", *TEMPLATE_VARIABLES)}
    for env, message in (({}, "set POOL"), ({"POOL": "p", "FROM": "train9"}, "FROM=train9 is not one of")):
        proc = subprocess.run(["bash", str(ENGINE)], env={**clean, "DRY_RUN": "1", **env},
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode != 0 and message in proc.stderr


@pytest.fixture
def chain_env(slurm_cluster, synthetic_shards, disk_export, disk_thresholds, tmp_path, monkeypatch):
    """The cluster's environment set for a tiny chain in tmp_path/engine over a pool of 4 shards x 2 images."""
    pool = ensure_synthetic_dataset(tmp_path / "pool", num_images=8, seed=7, image_size=128, shard_size=2)
    env = slurm_cluster.env
    for name in TEMPLATE_VARIABLES:
        monkeypatch.delitem(env, name, raising=False)
    data = [f"data.train={synthetic_shards['train']}", f"data.val={synthetic_shards['val']}"]
    train = [*FAST, *data, *CPU, "optim.lr=1e-9"]
    values = {
        "POOL": str(pool), "ARRAY": "0-1", "ENGINE_DIR": str(tmp_path / "engine"),
        "PYTHON": sys.executable, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
        "TRAIN_ARGS": "--ntasks-per-node=1 --cpus-per-task=1 --gpus-per-node=0 --time=15",
        "LABEL_ARGS": "--gpus-per-task=0 --cpus-per-task=1 --time=15",
        "TRAIN_OVERRIDES": " ".join(train), "TRAIN1_OVERRIDES": f"init={disk_export}",
        "LABEL_OVERRIDES": " ".join([LABEL, *(f"amg.{key}={value}" for key, value in disk_thresholds.items())]),
    }
    for name, value in values.items():
        monkeypatch.setitem(env, name, value)
    return pool


def logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("slurm-*.out")))


def test_a_tiny_chain_runs_unattended_to_stage_3(slurm_cluster, chain_env, tmp_path):
    out = slurm_cluster.run(["bash", str(ENGINE)], cwd=tmp_path).stdout
    jobs = dict(line.split() for line in out.splitlines() if re.fullmatch(r"\w+ \d+", line))
    assert list(jobs) == STEPS, out
    assert slurm_cluster.wait(jobs["train3"], timeout=420) == "COMPLETED", logs(tmp_path)
    for step in STEPS:
        assert slurm_cluster.wait(jobs[step], timeout=10) == "COMPLETED", logs(tmp_path)
    for previous, step in pairwise(STEPS):  # each started after the previous one ended
        ended = max(info["EndTime"] for info in slurm_cluster.job_infos(jobs[previous]))
        started = min(info["StartTime"] for info in slurm_cluster.job_infos(jobs[step]))
        assert started >= ended, (step, started, previous, ended)

    engine = tmp_path / "engine"
    pool_keys = sorted(k for entry in read_manifest(chain_env)["shards"].values() for k in entry["keys"])
    for stage in (2, 3):  # the pool labelled with the previous stage's export, into the shards stage N trains on
        shards = engine / f"stage{stage}" / "shards"
        assert sorted(k for entry in read_manifest(shards)["shards"].values() for k in entry["keys"]) == pool_keys
        annotations = []
        for path in shards.glob("*.tar"):
            with tarfile.open(path) as tar:
                annotations += [a for m in tar if m.name.endswith(".json")
                                for a in json.load(tar.extractfile(m))["annotations"]]
        assert annotations and {a["stage"] for a in annotations} == {stage}
        assert {a["model"].split("@")[0] for a in annotations} == {str(engine / f"stage{stage - 1}/train/export")}
    for stage in (1, 2, 3):
        run = engine / f"stage{stage}" / "train"
        assert run.resolve() == (engine / f"stage{stage}" / f"train-{jobs[f'train{stage}']}").resolve()
        assert json.loads((run / "metrics.json").read_text())["steps"] == 4


def test_the_engine_in_an_allocation_trains_each_step_on_its_tasks_with_srun(slurm_cluster, tmp_path):
    """trainer=slurm: the engine is the batch script's one process; each training runs under srun on the
    allocation's two tasks (DDP over gloo), and the engine goes on to the next step."""
    from test_engine import SMALL

    rounds = ["stage1.rounds=1", "stage2.rounds=0"]
    small = [o for o in SMALL if o.split("=")[0] not in {r.split("=")[0] for r in rounds}]
    command = [sys.executable, "-m", "sam_engine.engine", f"run_dir={tmp_path / 'run'}",
               f"data.root={tmp_path / 'data'}", *small, *rounds, "trainer=slurm", *CPU]
    slurm_cluster.env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    job = slurm_cluster.sbatch(["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=15",
                                "--wrap", shlex.join(command)], cwd=tmp_path)
    log = tmp_path / f"slurm-{job}.out"
    assert slurm_cluster.wait(job, timeout=400) == "COMPLETED", log.read_text(errors="replace")[-4000:]
    rows = json.loads((tmp_path / "run" / "engine_summary.json").read_text())
    assert [row["step"] for row in rows] == ["seed", "stage1/round1", "stage3", "final"]
    assert all("val/miou_1pt" in row for row in rows)
    ranks = re.findall(r"\] - Initializing distributed: GLOBAL_RANK: (\d), MEMBER", log.read_text(errors="replace"))
    assert sorted(ranks) == ["0", "0", "0", "1", "1", "1"]  # each of the 3 trainings on both tasks
