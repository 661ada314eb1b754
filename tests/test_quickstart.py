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
    "sam-train": ["data.batch_size=1", "data.num_workers=0", "data.steps_per_epoch=2", "data.max_masks_per_image=4",
                  "data.min_seen=1000", "stage.max_steps=2", "stage.warmup_steps=1", "stage.prompt_warmup_steps=1",
                  "stage.milestones=[2]", "eval.max_clicks=2", "checkpoint_every_n_steps=2"],
}


def documented_commands() -> list[list[str]]:
    """The quickstart's command lines (its bash block), split into words."""
    text = (ROOT / "docs" / "quickstart.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.split() for line in block.splitlines() if line.startswith("sam-")]


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
    substitutions = {"sam_vit_b_01ec64.pth": str(root / "official_tiny.pth"), "model=vit_b": "model=tiny",
                     "trainer=gpu": "trainer=cpu"}
    words = [re.sub("|".join(map(re.escape, substitutions)), lambda m: substitutions[m.group(0)], w) for w in words]
    script = Path(sys.executable).parent / words[0]
    return subprocess.run([str(script), *words[1:], *TEST_ONLY.get(words[0], []), *extra],
                          capture_output=True, text=True, timeout=600, cwd=root)


def test_the_quickstart_runs_on_real_photographs(workspace):
    import datumaro as dm
    from label_studio_sdk.converter.brush import decode_rle

    root, thresholds = workspace
    commands = documented_commands()
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
