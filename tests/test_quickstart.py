"""docs/quickstart.md, command by command, on two real photographs (matplotlib's sample data): the console
scripts as a user types them, with the tiny model in an official-format checkpoint for Meta's ViT-B and the
CPU for the GPU; people's work in CVAT simulated with datumaro (CVAT's library) and in Label Studio with its
SDK's codec. Every file the tools read is checked with the tools' libraries."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from model_helpers import amg_thresholds, photograph
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam_engine.data.records import decode_masks
from sam_engine.data.samples import good_samples
from sam_engine.model import load_export
from sam_engine.model.official import official_twin

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
TEST_ONLY = {  # what the test adds to a documented command: small and fast, not what it means
    "sam-label": ["amg.points_per_side=8", "progress=false"],
    "sam-engine": ["stage1.images_per_round=2", "stage1.train_steps=2", "stage3.train_steps=2",
                   "stage3.amg.points_per_side=8", "logger.wandb=false"],
    "sam-train": ["data.batch_size=1", "data.num_workers=0", "data.steps_per_epoch=2", "data.max_masks_per_image=4",
                  "data.min_seen=1000", "stage.max_steps=2", "stage.warmup_steps=1", "stage.prompt_warmup_steps=1",
                  "stage.milestones=[2]", "eval.max_clicks=2", "checkpoint_every_n_steps=2"],
}


def documented_commands(block: int) -> list[list[str]]:
    """The command lines of the quickstart's bash block number ``block``, split into words."""
    text = (ROOT / "docs" / "quickstart.md").read_text()
    lines = re.findall(r"```bash\n(.*?)```", text, re.S)[block].splitlines()
    return [line.split() for line in lines if line.startswith("sam-")]


def records(shards: Path) -> dict[str, dict]:
    return {s.key: s.record for s in good_samples(shards, lambda skipped: None)}


def masks_of(record: dict) -> np.ndarray:
    size = (record["image"]["height"], record["image"]["width"])
    return decode_masks([a["segmentation"] for a in record["annotations"]], size=size)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, disk_export):
    """A folder of photographs, and the disk model as Meta's classes would save it (official key layout)."""
    root = tmp_path_factory.mktemp("quickstart")
    (root / "photos").mkdir()
    for name in PHOTOS:
        shutil.copy(Path(matplotlib.get_data_path()) / "sample_data" / name, root / "photos" / name)
    model = load_export(disk_export)
    torch.save(official_twin(model).state_dict(), root / "official_tiny.pth")
    thresholds = amg_thresholds(model, photograph())
    return root, [f"amg.{k}={v}" for k, v in thresholds.items()]


def run(words: list[str], root: Path, extra: list[str]) -> subprocess.CompletedProcess:
    """A documented command as the test runs it: the tiny model's checkpoint for Meta's, the CPU for the GPU,
    and the test's own settings (``TEST_ONLY``, ``extra``) in place of the documented values of their keys."""
    substitutions = {"sam_vit_b_01ec64.pth": str(root / "official_tiny.pth"), "model=vit_b": "model=tiny",
                     "trainer=gpu": "trainer=cpu"}
    words = [re.sub("|".join(map(re.escape, substitutions)), lambda m: substitutions[m.group(0)], w) for w in words]
    added = [*TEST_ONLY.get(words[0], []), *extra]
    replaced = {override.split("=")[0] for override in added}
    script = Path(sys.executable).parent / words[0]
    return subprocess.run([str(script), *(w for w in words[1:] if w.split("=")[0] not in replaced), *added],
                          capture_output=True, text=True, timeout=600, cwd=root)


def test_the_quickstart_runs_on_real_photographs(workspace):
    import datumaro as dm
    from label_studio_sdk.converter.brush import decode_rle

    root, thresholds = workspace
    commands = documented_commands(0)
    assert [c[0] for c in commands] == ["sam-import", "sam-label", "sam-annotate", "sam-annotate", "sam-annotate",
                                        "sam-train", "sam-annotate"]
    work = root / "work"

    for words in commands[:4]:  # import, label, export for CVAT and for Label Studio
        done = run(words, root, thresholds if words[0] == "sam-label" else [])
        assert done.returncode == 0, (words, done.stderr[-3000:])
    auto = records(work / "auto")
    assert len(auto) == len(PHOTOS) and auto["grace_hopper"]["annotations"]  # the 128-px pack may have none

    # Label Studio reads every brush of our tasks as exactly the automatic mask.
    for task in json.loads((work / "for_label_studio" / "tasks.json").read_text()):
        record = auto[task["data"]["sam_engine_key"]]
        brushes = [np.reshape(decode_rle(r["value"]["rle"]), (r["original_height"], r["original_width"], 4))[..., 3]
                   for r in task["predictions"][0]["result"]]
        expected = masks_of(record)
        assert np.array_equal(np.array(brushes).reshape(expected.shape) > 0, expected)

    # CVAT: datumaro reads the zip's content mask for mask; people delete every other mask; CVAT exports.
    with zipfile.ZipFile(work / "for_cvat" / "cvat_coco.zip") as archive:
        archive.extractall(root / "cvat_upload")
    dataset = dm.Dataset.import_from(str(root / "cvat_upload"), "coco_instances")
    kept = {}
    for item in dataset:
        masks = sorted((a for a in item.annotations if a.type.name == "mask"), key=lambda a: a.id)
        key = next(k for k, r in auto.items() if Path(r["image"]["file_name"]).stem == item.id)
        expected = masks_of(auto[key])
        assert np.array_equal(np.array([m.image.astype(bool) for m in masks]).reshape(expected.shape), expected)
        deleted = {a.group for a in masks[1::2]}  # each mask with its box (datumaro groups them)
        kept[key] = masks_of(auto[key])[0::2]
        for annotation in [a for a in item.annotations if a.group in deleted]:
            item.annotations.remove(annotation)
    dataset.export(str(root / "cvat_export"), "coco_instances", save_media=False)
    with zipfile.ZipFile(work / "corrected.zip", "w") as archive:
        archive.write(root / "cvat_export" / "annotations" / "instances_default.json",
                      "annotations/instances_default.json")

    for words in commands[4:]:  # import the corrections, retrain, ground truth for evaluation
        done = run(words, root, [])
        assert done.returncode == 0, (words, done.stderr[-3000:])
    corrected = records(work / "corrected")
    assert corrected.keys() == kept.keys()
    for key, record in corrected.items():
        assert np.array_equal(masks_of(record), kept[key])
        assert {(a["source"], a["stage"]) for a in record["annotations"]} <= {("manual", 1)}
    metrics = json.loads((work / "engine" / "stage1" / "train" / "metrics.json").read_text())
    assert metrics["steps"] == 2
    load_export(work / "engine" / "stage1" / "train" / "export")  # the next checkpoint= for sam-label

    coco = COCO(str(work / "ground_truth" / "annotations.json"))
    detections = [{**a, "score": 1.0} for a in coco.dataset["annotations"]]
    evaluation = COCOeval(coco, coco.loadRes(detections), iouType="segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_the_engine_runs_the_loop_on_real_photographs(workspace):
    """The quickstart's engine block: the run pauses for people, CVAT's export of their masks (with a hole)
    resumes it, stage 3 labels every photo, and its masks go back to CVAT."""
    import datumaro as dm

    root, thresholds = workspace
    first, again, export = documented_commands(1)
    assert first == again and first[0] == "sam-engine" and export[:2] == ["sam-annotate", "export"]
    stage3_thresholds = [f"stage3.{override}" for override in thresholds]
    run_dir = root / "work" / "run"
    paused = run(first, root, stage3_thresholds)
    assert paused.returncode == 3, paused.stderr[-3000:]
    photos = records(run_dir / "data" / "photos")
    assert sorted(Path(r["image"]["file_name"]).name for r in photos.values()) == sorted(PHOTOS)

    # People in CVAT: the round's zip opens in datumaro (no pre-filled mask in stage 1); one mask per photo.
    round_dir = run_dir / "stage1" / "round1"
    with zipfile.ZipFile(round_dir / "to_annotate" / "cvat_coco.zip") as archive:
        archive.extractall(root / "engine_upload")
    dataset = dm.Dataset.import_from(str(root / "engine_upload"), "coco_instances")
    drawn = {}
    for item in dataset:
        assert not item.annotations
        key = next(k for k, r in photos.items() if Path(r["image"]["file_name"]).stem == item.id)
        height, width = photos[key]["image"]["height"], photos[key]["image"]["width"]
        mask = np.zeros((height, width), bool)
        mask[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = True
        mask[height // 2 - 4: height // 2 + 4, width // 2 - 4: width // 2 + 4] = False  # a hole
        item.annotations.append(dm.Mask(image=mask.astype(np.uint8), label=0, id=1, attributes={"is_crowd": True}))
        drawn[key] = mask[None]
    assert drawn.keys() == photos.keys()
    dataset.export(str(root / "engine_cvat_export"), "coco_instances", save_media=False)
    with zipfile.ZipFile(round_dir / "corrected.zip", "w") as archive:
        archive.write(root / "engine_cvat_export" / "annotations" / "instances_default.json",
                      "annotations/instances_default.json")

    resumed = run(again, root, stage3_thresholds)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    corrected = records(run_dir / "stage1" / "shards")
    assert corrected.keys() == drawn.keys()
    for key, record in corrected.items():
        assert np.array_equal(masks_of(record), drawn[key])  # the hole came through
    rows = {row["step"]: row for row in json.loads((run_dir / "engine_summary.json").read_text())}
    assert list(rows) == ["seed", "stage1/round1", "stage3", "final"]
    assert rows["stage1/round1"]["manual_masks"] == len(PHOTOS) and rows["stage1/round1"]["seconds_per_mask"] is None
    assert rows["stage3"]["images"] == len(PHOTOS) and rows["stage3"]["auto_masks"] > 0
    assert not any(key.startswith("val/") for row in rows.values() for key in row)  # no validation set
    automatic = records(run_dir / "stage3" / "shards")
    assert sum(len(r["annotations"]) for r in automatic.values()) == rows["stage3"]["auto_masks"]
    load_export(run_dir / "stage3" / "train" / "export")

    done = run(export, root, [])
    assert done.returncode == 0, done.stderr[-3000:]
    with zipfile.ZipFile(root / "work" / "final" / "cvat_coco.zip") as archive:
        archive.extractall(root / "final_upload")
    final = dm.Dataset.import_from(str(root / "final_upload"), "coco_instances")
    assert sum(a.type.name == "mask" for item in final for a in item.annotations) == rows["stage3"]["auto_masks"]
