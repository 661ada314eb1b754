"""``python -m sam_engine.engine`` (and its ``stage=N``): every step of a small engine run,
its outputs, dashboards and summary; resuming after a kill; refusals; the people (COCO) path."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from pycocotools import mask as mask_utils

from sam_engine.annotate.session import pool_samples
from sam_engine.data.records import make_record
from sam_engine.data.shards import ShardWriter, read_manifest
from sam_engine.engine.dashboard import RUN_ID_FILE, _wandb_records, read_offline_history
from sam_engine.engine.run import DataEngine
from sam_engine.engine.session import run_engine
from sam_engine.engine.steps import Steps, describe_row
from sam_engine.model import build_sam, export_sam

CONF = str(Path(__file__).resolve().parents[1] / "sam_engine" / "conf")

SMALL = [  # every step, in seconds: this checks the plumbing (the default run shows the learning)
    "seed_training.max_steps=3", "seed_training.prompt_warmup_steps=1", "seed_training.milestones=[3]",
    "stage1.rounds=2", "stage1.images_per_round=2", "stage1.train_steps=2",
    "stage2.rounds=1", "stage2.images_per_round=2", "stage2.train_steps=2",
    "stage2.prefill.points_per_side=4", "stage2.prefill.pred_iou_thresh=0", "stage2.prefill.stability_score_thresh=0",
    "stage2.review=false",  # keeps the untrained model's pre-fills (test_annotate_session checks the review)
    "stage3.amg.points_per_side=4", "stage3.amg.pred_iou_thresh=0", "stage3.amg.stability_score_thresh=0",
    "stage3.train_steps=2", "logger.wandb=false",
    "data.synthetic.0.num_images=6", "data.synthetic.1.num_images=2", "data.synthetic.2.num_images=4",
    "data.synthetic.3.num_images=2", "data.synthetic.4.num_images=3",
    "train_overrides=['data.num_workers=0','data.batch_size=2','data.max_masks_per_image=4','eval.max_clicks=3',"
    "'data.min_seen=1000']",
]
STEPS = ["seed", "stage1/round1", "stage1/round2", "stage2/round1", "stage3", "final"]


def config(tmp_path: Path, *overrides: str, name: str = "engine"):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose(config_name=name, overrides=[f"run_dir={tmp_path / 'run'}", *data_dirs(tmp_path), *SMALL,
                                                    *overrides])


def data_dirs(tmp_path: Path) -> list[str]:
    return [f"data.root={tmp_path / 'data'}"]


def run(tmp_path: Path, *overrides: str, name: str = "engine", stages=None):
    cfg = config(tmp_path, *overrides, name=name)
    with initialize_config_dir(config_dir=CONF, version_base=None):  # the engine composes the train config
        return run_engine(cfg) if stages is None else run_engine(cfg, stages)


def records(shards: Path) -> list[dict]:
    return [s.record for s in pool_samples(shards)]


def test_engine_runs_every_step_and_writes_what_each_collected(engine_run):
    tmp_path, rows = engine_run
    run_dir = tmp_path / "run"
    assert [r["step"] for r in rows] == STEPS
    assert [r["stage"] for r in rows] == [0, 1, 1, 2, 3, 4]
    for step in STEPS:
        assert (run_dir / step / "done.json").is_file()
    for row in rows:
        assert 0.0 <= row["val/miou_1pt"] <= 1.0 and 1.0 <= row["val/noc90"] <= 3.0
        assert 0.0 <= row["val/miou_1pt_ci95"] < 1.0  # over the 2 validation images
    # Stage 1: one shard per round, manual masks only, each with its clicks and seconds.
    stage1 = run_dir / "stage1" / "shards"
    assert sorted(read_manifest(stage1)["shards"]) == ["round01-000000.tar", "round02-000000.tar"]
    pool1 = {s.key: s.record for s in pool_samples(tmp_path / "data" / "pool1")}
    for k, row in ((1, rows[1]), (2, rows[2])):
        written = records(stage1 / f"round{k:02d}-000000.tar")
        assert len(written) == row["images"] == 2
        annotations = [a for r in written for a in r["annotations"]]
        assert len(annotations) == row["masks_collected"] == row["manual_masks"] > 0
        assert {(a["source"], a["stage"]) for a in annotations} == {("manual", 1)}
        assert all(a["clicks"] <= 10 and a["seconds"] >= 4.0 for a in annotations)
        assert row["seconds_per_mask"] == pytest.approx(np.mean([a["seconds"] for a in annotations]), rel=1e-6)
        for record in written:  # the pool's ground truth is the intent, never copied into the output wholesale
            key = record["image"]["image_id"]
            assert len(record["annotations"]) <= len(pool1[key]["annotations"])
    # Chunks of the pool in order: round 2 annotates images 3-4.
    assert [r["image"]["image_id"] for r in records(stage1 / "round02-000000.tar")] == list(pool1)[2:4]
    # Stage 2: pre-filled (auto) masks and manual ones, with the pre-fill's precision against the truth.
    stage2 = records(run_dir / "stage2" / "shards")
    sources = {a["source"] for r in stage2 for a in r["annotations"]}
    assert "auto" in sources and rows[3]["auto_masks"] > 0
    assert 0.0 <= rows[3]["pseudo_label_precision"] <= 1.0
    # Stage 3: automatic masks over the whole pool; the final model trained from stage 2's export.
    stage3 = records(run_dir / "stage3" / "shards")
    assert len(stage3) == 3 and {a["source"] for r in stage3 for a in r["annotations"]} == {"auto"}
    assert rows[4]["masks_collected"] == sum(len(r["annotations"]) for r in stage3)
    assert "stage2/round1/train/export" in stage3[0]["annotations"][0]["model"]
    assert (run_dir / "stage3" / "train" / "export" / "sam.pth").is_file()
    assert (run_dir / "stage1" / "round1" / "overlay.png").is_file()


def test_engine_summary_files_and_wandb_hold_the_per_stage_metrics(engine_run):
    tmp_path, rows = engine_run
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "engine_summary.json").read_text())
    assert [r["step"] for r in summary] == STEPS
    header = (run_dir / "engine_summary.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["step", "stage", "val/miou_1pt"] and "seconds_per_mask" in header
    assert (run_dir / "stages.png").stat().st_size > 1000
    history = read_offline_history(run_dir)
    logged = [h["val/miou_1pt"] for h in history if "val/miou_1pt" in h]
    assert logged == pytest.approx([r["val/miou_1pt"] for r in rows])
    assert [h["seconds_per_mask"] for h in history if h.get("seconds_per_mask") is not None] == pytest.approx(
        [r["seconds_per_mask"] for r in rows if r.get("seconds_per_mask") is not None])
    assert [h["engine/step"] for h in history] == STEPS
    masks = {h["engine/step"]: h[h["engine/step"]]["masks"] for h in history if h["engine/step"] in h}
    assert set(masks) == {"stage1/round1", "stage1/round2", "stage2/round1", "stage3"}  # each with its layers
    assert set(masks["stage3"]) == {"automatic"} and "manual" in masks["stage1/round1"]

    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    log = sorted(run_dir.glob(f"wandb/offline-run-*/run-{run_id}.wandb"))[0]
    artifacts = [(r.artifact.type, json.loads(r.artifact.metadata)) for r in _wandb_records(log)
                 if r.WhichOneof("record_type") == "artifact" and r.artifact.type in ("model", "dataset")]
    models = [meta for kind, meta in artifacts if kind == "model"]
    assert [m["step"] for m in models] == STEPS[:-1]  # every trained model, with where it came from
    assert models[3] == {"step": "stage2/round1", "starts_from": "stage1-round2",
                         "trained_on": ["stage1-round1", "stage1-round2", "stage2-round1"]}
    assert [meta["step"] for kind, meta in artifacts if kind == "dataset"] == STEPS[1:-1]


def test_engine_rerun_skips_finished_steps_and_refuses_another_config(engine_run, caplog):
    tmp_path, rows = engine_run
    done = {step: (tmp_path / "run" / step / "done.json").stat().st_mtime_ns for step in STEPS}
    with caplog.at_level("INFO", logger="sam_engine.engine.steps"):
        assert run(tmp_path, "logger.wandb=true") == rows
    assert [r.getMessage() for r in caplog.records if r.name == "sam_engine.engine.steps"] == [
        f"step {k}/{len(STEPS)} {step}: done before, skipped" for k, step in enumerate(STEPS, 1)]
    assert {step: (tmp_path / "run" / step / "done.json").stat().st_mtime_ns for step in STEPS} == done
    with pytest.raises(ValueError, match=r"another configuration \(stage1.train_steps: 2 -> 3\)"):
        run(tmp_path, "stage1.train_steps=3")


def test_engine_killed_mid_step_completes_with_the_same_outputs(tmp_path, engine_run):
    reference_dir = engine_run[0] / "run"
    command = [sys.executable, "-m", "sam_engine.engine", f"run_dir={tmp_path / 'run'}", *data_dirs(tmp_path), *SMALL]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    annotated = tmp_path / "run" / "stage1" / "shards" / "round02-000000.tar"
    deadline = time.monotonic() + 300
    while not annotated.exists():  # round 2 annotated, its training under way: kill it there
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "run" / "stage1" / "round2" / "done.json").exists()

    rows = run(tmp_path)
    assert [r["step"] for r in rows] == STEPS
    for stage in ("stage1", "stage2", "stage3"):
        shards = tmp_path / "run" / stage / "shards"
        ours, reference = records(shards), records(reference_dir / stage / "shards")
        keys = [r["image"]["image_id"] for r in ours]
        assert len(keys) == len(set(keys))  # no image twice, so no mask twice
        reference_shards = read_manifest(reference_dir / stage / "shards")["shards"]
        assert sorted(read_manifest(shards)["shards"]) == sorted(reference_shards)
        assert keys == [r["image"]["image_id"] for r in reference]
        assert [len(r["annotations"]) for r in ours] == [len(r["annotations"]) for r in reference]


def test_without_a_confident_automatic_mask_stage_3_trains_nothing_and_the_engine_ends_with_its_start(
        tmp_path, caplog):
    with caplog.at_level("WARNING", logger="sam_engine.engine.run"):
        rows = run(tmp_path, "stage1.rounds=0", "stage2.rounds=0", "stage3.amg.pred_iou_thresh=1.0",
                   "stage3.amg.stability_score_thresh=1.0")
    seed, stage3, final = rows
    assert [r["step"] for r in rows] == ["seed", "stage3", "final"]
    assert stage3["images"] == 3 and stage3["masks_collected"] == 0 and "val/miou_1pt" not in stage3
    assert not (tmp_path / "run" / "stage3" / "train").exists()
    assert final["val/miou_1pt"] == pytest.approx(seed["val/miou_1pt"], abs=1e-6)  # the seed model, evaluated
    assert "stage 3: no automatic mask of the 3 images of data.pool3 passed the filters " \
           "(stage3.amg.pred_iou_thresh=1.0, stability_score_thresh=1.0): the final model is seed's, not retrained" \
           in caplog.text


def test_missing_ground_truth_previous_stage_and_bad_stage_are_named(tmp_path):
    empty_pool = tmp_path / "bare"
    with ShardWriter(empty_pool, prefix="bare") as writer:
        image = next(pool_samples(_small_pool(tmp_path)))
        writer.write("a", image.data, image.ext, make_record("a", 256, 256, "a.png", []))
    with pytest.raises(ValueError, match=r"no ground-truth masks.*data\.pool1"):
        run(tmp_path, f"data.pool1={empty_pool}")
    with pytest.raises(ValueError, match=r"annotator.kind=human: expected one of simulated, people"):
        run(tmp_path / "kind", "annotator.kind=human")
    with pytest.raises(FileNotFoundError, match=r"stage1/round2/train/export/sam.pth"):
        run(tmp_path / "second", "stage=semi_automatic", stages=(2,))


def test_photo_folder_rounds_share_one_pool_and_a_stage_without_rounds_is_passed_over(tmp_path):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose(config_name="engine", overrides=[
            f"run_dir={tmp_path / 'run'}", "engine_data@data=folder", f"data.images={tmp_path / 'photos'}",
            "stage1.rounds=2", "stage1.images_per_round=3", "stage2.rounds=2", "stage2.images_per_round=4"])
    assert cfg.data.pool1 == cfg.data.pool2 == cfg.data.pool3 == str(tmp_path / "run" / "data" / "photos")
    assert cfg.data.seed is None and cfg.data.val is None and not cfg.data.synthetic
    engine = DataEngine(cfg, Steps(tmp_path / "run"))
    assert [engine.round_start(1, k) for k in (1, 2)] == [0, 3]
    assert [engine.round_start(2, k) for k in (1, 2)] == [6, 10]  # after stage 1's six photos
    with pytest.raises(ValueError, match=r"data.seed and init are both null"):
        engine.prepare_data()  # nothing is imported before that is settled
    assert not (tmp_path / "run" / "data").exists()

    cfg.stage2.rounds = 0
    before_stage3 = tmp_path / "run" / "stage1" / "round2" / "train" / "export"
    with pytest.raises(FileNotFoundError, match=re.escape(str(before_stage3 / "sam.pth"))):
        engine.export_before("stage3")
    export_sam(build_sam("tiny"), before_stage3)
    assert engine.export_before("stage3") == before_stage3


def test_the_engine_command_takes_data_folder_for_the_photo_group(tmp_path):
    job = subprocess.run([sys.executable, "-m", "sam_engine.engine", "data=folder", f"data.images={tmp_path}",
                          "--cfg", "job"], capture_output=True, text=True, timeout=120)
    assert job.returncode == 0, job.stderr
    config = yaml.safe_load(job.stdout)
    assert config["data"]["images"] == str(tmp_path) and config["data"]["seed"] is None
    assert config["data"]["photos"] == "${data.root}/photos" and config["data"]["pool3"] == "${data.photos}"


@pytest.mark.parametrize(("override", "message"), [
    ("stage1.rounds=abc", "stage1.rounds='abc': expected an integer >= 0"),
    ("stage2.images_per_round=0", "stage2.images_per_round=0: expected an integer >= 1"),
    ("annotator.accept_iou=1.5", r"annotator.accept_iou=1.5: expected a number in \[0, 1\]"),
    ("logger.wandb=maybe", "logger.wandb='maybe': expected true or false"),
    ("stage2.review=0.9", "stage2.review=0.9: expected true or false"),
    ("retrain_lr_drop=1.5", r"retrain_lr_drop=1.5: expected a number in \[0, 1\]"),
])
def test_a_wrong_value_is_refused_by_key_before_the_run_records_its_config(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, override)
    assert not (tmp_path / "run" / "engine_config.json").exists()  # the corrected rerun is not refused


def _small_pool(tmp_path: Path) -> Path:
    from sam_engine.data.synthetic.dataset import ensure_synthetic_dataset

    return ensure_synthetic_dataset(tmp_path / "pool", num_images=1, seed=3, image_size=256)


def test_engine_command_runs_one_stage_and_names_the_missing_model_before_it(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sam_engine.engine", "stage=3", f"run_dir={tmp_path / 'run'}",
                             *data_dirs(tmp_path), *SMALL], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "stage2/round1/train/export/sam.pth: the previous step's model is missing" in result.stderr
    assert not (tmp_path / "run" / "seed").exists()  # stage=3 runs stage 3's step alone


def test_people_round_pauses_for_coco_corrections_and_imports_them(tmp_path):
    stages = (0, 1)
    assert run(tmp_path, "annotator.kind=people", "stage1.rounds=1", stages=stages) is None  # paused
    to_annotate = tmp_path / "run" / "stage1" / "round1" / "to_annotate"
    coco = json.loads((to_annotate / "annotations" / "instances_default.json").read_text())
    assert (to_annotate / "cvat_coco.zip").is_file()  # what CVAT imports
    assert json.loads((to_annotate / "label_studio" / "tasks.json").read_text())[0]["predictions"][0]["result"] == []
    assert len(coco["images"]) == 2 and coco["annotations"] == []  # stage 1: nothing pre-filled
    # People draw the objects (here: the pool's ground truth) and export COCO.
    truth = {s.key: s.record for s in pool_samples(tmp_path / "data" / "pool1")}
    drawn = []
    for image in coco["images"]:
        for annotation in truth[image["sam_engine_key"]]["annotations"]:
            drawn.append({"id": len(drawn) + 1, "image_id": image["id"], "category_id": 1, "iscrowd": 1,
                          "segmentation": annotation["segmentation"], "area": annotation["area"],
                          "bbox": annotation["bbox"]})
    (tmp_path / "run" / "stage1" / "round1" / "corrected.json").write_text(json.dumps({**coco, "annotations": drawn}))
    rows = run(tmp_path, "annotator.kind=people", "stage1.rounds=1", stages=stages)
    assert [r["step"] for r in rows] == ["seed", "stage1/round1"]
    written = records(tmp_path / "run" / "stage1" / "shards")
    assert sum(len(r["annotations"]) for r in written) == len(drawn) == rows[1]["manual_masks"]
    for record in written:
        expected = [a["segmentation"] for a in truth[record["image"]["image_id"]]["annotations"]]
        got = [a["segmentation"] for a in record["annotations"]]
        assert np.array_equal(mask_utils.decode(got), mask_utils.decode(expected))
        assert {a["source"] for a in record["annotations"]} == {"manual"}


def test_web_round_serves_the_page_and_retrains_on_what_people_accepted(tmp_path):
    from web_helpers import post

    from sam_engine.annotate.web.masks import mask_to_png

    token, port, problems, accepted = "a-secret-of-sixteen-chars", free_port(), [], []
    url = f"http://127.0.0.1:{port}/"

    def person() -> None:  # a person on the page: a click on each of two objects, the mask brushed to the truth
        try:
            while not serving(url):
                time.sleep(0.2)
            truth = {s.key: s.record for s in pool_samples(tmp_path / "data" / "pool1")}
            while (image := post(url, "api/next", {"client": "p"}, token)[1]["image"]) is not None:
                held = {"client": "p", "key": image["key"]}
                for annotation in truth[image["key"]]["annotations"][:2]:
                    x, y = annotation["point_coords"][0]
                    assert post(url, "api/segment", {**held, "points": [[x, y, 1]]}, token)[0] == 200
                    mask = mask_utils.decode(annotation["segmentation"]).astype(bool)
                    status, _ = post(url, "api/accept", {**held, "mask": mask_to_png(mask), "clicks": 1, "strokes": 3,
                                                         "seconds": 5.0, "point": [x, y]}, token)
                    assert status == 200
                    accepted.append((image["key"], annotation["segmentation"]))
                assert post(url, "api/finish", held, token)[0] == 200
        except Exception as exc:  # noqa: BLE001 -- reported by the test
            problems.append(exc)

    thread = threading.Thread(target=person, daemon=True)
    thread.start()
    rows = run(tmp_path, "annotator.kind=web", "stage1.rounds=1", f"annotator.web.port={port}",
               f"annotator.web.token={token}", stages=(0, 1))
    thread.join(30)
    assert problems == []
    assert [r["step"] for r in rows] == ["seed", "stage1/round1"]
    assert rows[1]["manual_masks"] == len(accepted) == 4 and rows[1]["train_steps"] == 2  # retrained on them
    assert (rows[1]["clicks_per_mask"], rows[1]["seconds_per_mask"]) == (1.0, 5.0)
    written = records(tmp_path / "run" / "stage1" / "shards")
    assert sorted((r["image"]["image_id"], a["segmentation"]["counts"]) for r in written for a in r["annotations"]) \
        == sorted((key, rle["counts"]) for key, rle in accepted)
    assert {(a["source"], a["strokes"]) for r in written for a in r["annotations"]} == {("manual", 3)}
    assert token not in (tmp_path / "run" / "engine_config.json").read_text()


def test_with_wandb_each_training_is_a_run_named_after_its_step_in_the_engine_runs_group(tmp_path):
    from sam_engine.engine.dashboard import _wandb_records

    run(tmp_path, "logger.wandb=true", "trainer.log_every_n_steps=1", stages=(0,))
    (log,) = (tmp_path / "run" / "seed" / "train").glob("wandb/offline-run-*/run-*.wandb")
    records = list(_wandb_records(log))
    (header,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (header.run_group, header.display_name, header.project) == ("run", "seed", "sam_engine")
    logged = {item.key or "/".join(item.nested_key) for r in records if r.WhichOneof("record_type") == "history"
              for item in r.history.item}
    assert "train/loss" in logged and "val/miou_1pt" in logged
    assert any(r.WhichOneof("record_type") == "exit" for r in records)  # the training's run ended with it
    assert read_offline_history(tmp_path / "run")[0]["val/miou_1pt"] >= 0  # the engine's own run, beside it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serving(url: str) -> bool:
    """Whether the page answers at ``url``."""
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False


def test_a_finished_step_is_logged_with_its_headline_figures():
    row = {"step": "stage3", "stage": 3, "val/miou_1pt": 0.4123, "val/miou_1pt_ci95": 0.0312, "val/noc90": 14.25,
           "pseudo_label_precision": 0.5, "masks_per_image": 21.0, "annotator": "simulated"}
    assert describe_row(row) == "1-click mIoU 0.412 +- 0.031 NoC90 14.2 precision@0.9 0.500 masks/image 21.0"
    assert describe_row({"step": "seed", "stage": 0}) == "no metrics"


def test_the_demo_keeps_stage_ones_loss_weights_and_uses_sams_filters(tmp_path):
    """The CPU demo trains every step at stage 1's focal : dice 1 : 1 (a fresh tiny model switched to 20 : 1 lost
    its box mIoU); the real-model example's own train_overrides leave each stage its config's weights."""
    with initialize_config_dir(config_dir=CONF, version_base=None):
        demo = compose(config_name="engine", overrides=[f"run_dir={tmp_path / 'run'}"])
        real = compose(config_name="engine", overrides=[f"run_dir={tmp_path / 'run'}",
                                                        "train_overrides=['data.num_workers=8']"])

        def focal_weights(cfg) -> list[float]:  # of the seed's, stage 1's, stage 2's and stage 3's trainings
            engine = DataEngine(cfg, Steps(tmp_path / "run"))
            return [engine.train_config(tmp_path / "run" / "x", stage, None, 3, 0, [3]).simulation.focal_weight
                    for stage in (0, 1, 2, 3)]

        weights = {"demo": focal_weights(demo), "real": focal_weights(real)}
    assert weights == {"demo": [1.0, 1.0, 1.0, 1.0], "real": [1.0, 1.0, 20.0, 20.0]}
    for amg in (demo.stage2.prefill, demo.stage3.amg):
        assert (amg.pred_iou_thresh, amg.stability_score_thresh) == (0.88, 0.95)  # SAM's
    assert demo.stage2.review is True


def test_every_retraining_ends_at_a_tenth_of_its_learning_rate(tmp_path):
    """The retrainings fine-tune an export at ``retrain_lr``; ending one at that full rate left the model where its
    last steps moved it (the demo's stage rows went up and down by an interval), so each drops it as the seed does."""
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose(config_name="engine", overrides=[f"run_dir={tmp_path / 'run'}"])
        engine = DataEngine(cfg, Steps(tmp_path / "run"))
        train = engine.train_config(tmp_path / "run" / "x", 1, None, 30, 0, engine.retrain_milestones(30))
        cfg.retrain_lr_drop = 1.0
        never = engine.retrain_milestones(30)
    assert cfg.retrain_lr == 3e-4 and train.optim.lr == cfg.retrain_lr
    assert list(train.optim.milestones) == [24] and train.optim.gamma == 0.1  # the last 6 of 30 steps at 3e-5
    assert never == [30]


def test_full_profile_has_sams_round_counts_and_sets_of_its_own(monkeypatch):
    monkeypatch.setenv("SAM_ENGINE_DATA", "/data")
    with initialize_config_dir(config_dir=CONF, version_base=None):
        demo = compose(config_name="engine")
        full = compose(config_name="engine", overrides=["profile=full"])
    assert (demo.stage1.rounds, demo.stage2.rounds) == (3, 2)
    assert (full.stage1.rounds, full.stage2.rounds) == (6, 5)  # SAM: 6 and 5 retrainings
    assert full.seed_training.max_steps >= 5 * demo.seed_training.max_steps
    assert full.data.root == "/data/engine_full" and demo.data.root == "/data/engine"  # never the demo's sets
    assert all(entry.out_dir.startswith("/data/engine_full/") for entry in full.data.synthetic)
    assert full.stage3.amg.pred_iou_thresh == demo.stage3.amg.pred_iou_thresh  # the rest is the demo's
