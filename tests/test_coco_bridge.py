"""The COCO bridge to annotation tools: export, exact round trip, corrections, source filter, bad input."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from shard_helpers import encode_image, random_masks

from sam_engine.annotate import __main__ as annotate_command
from sam_engine.annotate.coco_bridge import export_coco, import_coco_corrections, mask_polygons
from sam_engine.data.importers.base import REPORT_FILE
from sam_engine.data.importers.coco import import_coco
from sam_engine.data.importers.sa1b import iter_sa1b
from sam_engine.data.records import decode_masks, make_annotations, make_record
from sam_engine.data.shards import ShardWriter, list_shards

CONF = Path(__file__).resolve().parents[1] / "sam_engine" / "conf"

H, W = 24, 32


def disk(cy: float, cx: float, radius: float) -> np.ndarray:
    ys, xs = np.mgrid[:H, :W]
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2


def ring(cy: float, cx: float) -> np.ndarray:
    return disk(cy, cx, 7) & ~disk(cy, cx, 3)  # a mask with a hole: polygons would lose it


# key -> (format, record file_name, auto masks, manual masks)
SCENES = {
    "img0": ("PNG", "img0.png", [disk(8, 10, 5), ring(12, 20)], [disk(18, 6, 3)]),
    "img1": ("PNG", "img1.png", [ring(11, 15)], [disk(4, 4, 2), disk(20, 28, 3)]),
    "img2": ("JPEG", "photos/a b.jpg", [], [disk(12, 16, 9)]),
}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A shard directory of the SCENES: {"dir", "bytes": key -> image bytes, "masks": key -> N x H x W}."""
    directory = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(0)
    data, masks = {}, {}
    with ShardWriter(directory, max_samples=2) as writer:
        for i, (key, (fmt, file_name, auto, manual)) in enumerate(SCENES.items()):
            auto = np.array(auto, dtype=bool).reshape(-1, H, W)
            manual = np.concatenate([np.array(manual), random_masks(1, H, W, rng)])
            annotations = make_annotations(
                auto,
                predicted_iou=np.linspace(0.8, 0.9, len(auto)),
                stability_score=0.95,
                provenance={"source": "auto", "stage": 2, "model": "stage1/sam.pth"},
            ) + make_annotations(manual, start_id=len(auto), provenance={"source": "manual", "stage": 1, "clicks": 3})
            data[key] = encode_image(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), fmt)
            masks[key] = np.concatenate([auto, manual])
            writer.write(key, data[key], "png" if fmt == "PNG" else "jpg", make_record(i, W, H, file_name, annotations))
    return {"dir": directory, "bytes": data, "masks": masks}


@pytest.fixture(scope="module")
def exported(pool, tmp_path_factory):
    """The pool exported with every source: the path of annotations.json."""
    return export_coco(pool["dir"], tmp_path_factory.mktemp("export"))


def read_output(directory: Path) -> dict[str, tuple[bytes, dict]]:
    return {key: (image, record) for key, image, record in iter_sa1b(list_shards(directory))}


def record_masks(record: dict) -> np.ndarray:
    size = (record["image"]["height"], record["image"]["width"])
    return decode_masks([a["segmentation"] for a in record["annotations"]], size=size)


def write_json(path: Path, dataset: dict) -> Path:
    path.write_text(json.dumps(dataset))
    return path


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (``counts`` a list of runs, column-major, starting with background)."""
    flat = np.concatenate([[False], mask.flatten(order="F"), [not mask.flatten(order="F")[-1]]])
    changes = np.flatnonzero(flat[1:] != flat[:-1])
    return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], changes])).tolist()}


# --- export -----------------------------------------------------------------------------------


def test_export_is_a_coco_file_that_pycocotools_reads(pool, exported):
    coco = COCO(str(exported))
    dataset = coco.dataset
    assert dataset["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    names = {image["sam_engine_key"]: image["file_name"] for image in dataset["images"]}
    assert names == {"img0": "img0.png", "img1": "img1.png", "img2": "a_b.jpg"}
    assert [image["id"] for image in dataset["images"]] == [1, 2, 3]
    assert [image["sam_engine_image_id"] for image in dataset["images"]] == [0, 1, 2]
    ids = [a["id"] for a in dataset["annotations"]]
    assert ids == list(range(1, 1 + sum(len(m) for m in pool["masks"].values())))
    for image in dataset["images"]:
        key = image["sam_engine_key"]
        assert (image["width"], image["height"]) == (W, H)
        assert (exported.parent / "images" / image["file_name"]).read_bytes() == pool["bytes"][key]
        annotations = coco.imgToAnns[image["id"]]
        masks = np.array([coco.annToMask(a) for a in annotations], dtype=bool)
        assert np.array_equal(masks, pool["masks"][key])
        num_auto = len(SCENES[key][2])
        for i, (annotation, mask) in enumerate(zip(annotations, masks, strict=True)):
            ys, xs = np.nonzero(mask)
            assert annotation["area"] == mask.sum()
            assert annotation["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert annotation["iscrowd"] == 1 and annotation["category_id"] == 1
            assert isinstance(annotation["segmentation"]["counts"], str)
            assert annotation["segmentation"]["size"] == [H, W]
            assert annotation["sam_engine_id"] == i
            assert annotation["source"] == ("auto" if i < num_auto else "manual")
            assert annotation["stage"] == (2 if i < num_auto else 1)
            assert "predicted_iou" in annotation and "stability_score" in annotation and "point_coords" in annotation
    assert dataset["info"]["sam_engine_export"]["skipped"] == []
    assert sorted(p.name for p in exported.parent.rglob("*")) == sorted(["images", "annotations.json", *names.values()])


def test_export_filters_annotations_by_source(pool, tmp_path):
    dataset = json.loads(export_coco(pool["dir"], tmp_path, sources=("auto",)).read_text())
    assert len(dataset["images"]) == 3  # images without proposals too: people annotate them
    assert {a["source"] for a in dataset["annotations"]} == {"auto"}
    per_image = {
        i["sam_engine_key"]: [a for a in dataset["annotations"] if a["image_id"] == i["id"]] for i in dataset["images"]
    }
    assert {k: len(v) for k, v in per_image.items()} == {"img0": 2, "img1": 1, "img2": 0}
    assert [a["predicted_iou"] for a in per_image["img0"]] == [0.8, 0.9]
    with pytest.raises(ValueError, match="robot"):
        export_coco(pool["dir"], tmp_path / "other", sources=("robot",))


def _coco_eval_stats(ground_truth: Path, detections: list[dict]) -> np.ndarray:
    coco = COCO(str(ground_truth))
    evaluation = COCOeval(coco, coco.loadRes(detections), iouType="segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation.stats


@pytest.mark.parametrize("evaluation", [True, False])
def test_the_evaluation_export_is_ground_truth_for_cocoeval(pool, tmp_path, evaluation):
    path = export_coco(pool["dir"], tmp_path, evaluation=evaluation)
    dataset = json.loads(path.read_text())
    assert {a["iscrowd"] for a in dataset["annotations"]} == {0 if evaluation else 1}
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
                   "score": 1.0} for a in dataset["annotations"]]  # the same masks as predictions
    stats = _coco_eval_stats(path, detections)
    if evaluation:
        assert stats[0] == pytest.approx(1.0) and stats[1] == pytest.approx(1.0)  # AP, AP@0.5
    else:
        assert stats[0] == -1  # crowd regions only: COCOeval has no object to score (why evaluation=True exists)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with its holes (background not 4-connected to the border) filled."""
    background = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    cv2.floodFill(background, None, (0, 0), 2, flags=4)
    return (background != 2)[1:-1, 1:-1]


def test_polygons_give_every_pixel_back_but_holes():
    rng = np.random.default_rng(0)
    for trial in range(200):  # noise (parts touching at corners, single pixels, the border) and blobs
        height, width = rng.integers(2, 40, 2)
        mask = rng.random((height, width)) < rng.uniform(0.05, 0.7)
        if trial % 2:
            mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
        polygons = mask_polygons(mask)
        assert all(len(polygon) >= 6 and len(polygon) % 2 == 0 for polygon in polygons)
        back = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))) if polygons else 0
        assert np.array_equal(np.asarray(back, bool) | np.zeros_like(mask), fill_holes(mask)), trial
    assert mask_polygons(np.zeros((3, 4), bool)) == []


@pytest.mark.parametrize("evaluation", [True, False])
def test_the_polygon_export_is_ground_truth_for_cocoeval(pool, tmp_path, evaluation):
    path = export_coco(pool["dir"], tmp_path, evaluation=evaluation, segmentation="polygons")
    dataset = json.loads(path.read_text())
    assert {a["iscrowd"] for a in dataset["annotations"]} == {0}  # polygons are objects, whatever the purpose
    assert all(isinstance(a["segmentation"], list) for a in dataset["annotations"])
    coco = COCO(str(path))
    for image in dataset["images"]:
        annotations = sorted(coco.loadAnns(coco.getAnnIds(imgIds=image["id"])), key=lambda a: a["sam_engine_id"])
        masks = np.array([coco.annToMask(a) for a in annotations], bool)
        assert np.array_equal(masks, [fill_holes(m) for m in pool["masks"][image["sam_engine_key"]]])  # a ring: a disk
        assert [a["area"] for a in annotations] == masks.sum((1, 2)).tolist()
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": coco.annToRLE(a),
                   "score": 1.0} for a in dataset["annotations"]]  # results are RLE (pycocotools' loadRes)
    stats = _coco_eval_stats(path, detections)
    assert stats[0] == pytest.approx(1.0) and stats[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="segmentation must be one of"):
        export_coco(pool["dir"], tmp_path / "other", segmentation="polygon")


@pytest.mark.parametrize("evaluation", [True, False])
def test_the_coco_importer_takes_every_mask_of_our_exports_as_an_object(pool, tmp_path, evaluation):
    path = export_coco(pool["dir"], tmp_path / "export", evaluation=evaluation)
    report = import_coco(path, path.parent / "images", tmp_path / "shards")  # crowd=exclude, the default
    assert report.skipped == [] and report.skipped_annotations == []
    imported = {record["image"]["file_name"]: record for _, record in read_output(tmp_path / "shards").values()}
    for image in json.loads(path.read_text())["images"]:
        record = imported[image["file_name"]]
        assert np.array_equal(record_masks(record), pool["masks"][image["sam_engine_key"]])
        assert {a["iscrowd"] for a in record["annotations"]} == {0}


@pytest.mark.parametrize(
    "command, override, message",
    [("export", "out_dir=5", "out_dir=5: expected text"),
     ("export", "sources=[auto,3]", "sources=['auto', 3]: expected null, a provenance"),
     ("export", "image_prefix=1.5", "image_prefix=1.5: expected text"),
     ("export", "layout=ls", "layout='ls': expected one of coco, cvat, label_studio"),
     ("export", "layout=label_studio segmentation=polygons", "layout=label_studio writes brush masks"),
     ("import", "prefix=123", "prefix=123: expected text"),
     ("import", "stage.number=abc", "stage.number='abc': expected an integer >= 1"),
     ("import", "out_dir={tmp}", "out_dir={tmp} is the folder of pool={tmp}")],
)
def test_the_annotate_commands_refuse_wrong_types_naming_the_key(tmp_path, command, override, message):
    """Also (last case) corrections written into the pool's own directory, beside the images they correct."""
    paths = {"export": ["shards=s", "out_dir=o"], "import": ["input=i.json", f"pool={tmp_path}", "out_dir=o"]}[command]
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(f"annotate_{command}", overrides=[*paths, *override.format(tmp=tmp_path).split()])
    with pytest.raises(ValueError, match=re.escape(message.format(tmp=tmp_path))):
        annotate_command.COMMANDS[command][0](cfg)


def test_the_export_command_writes_ground_truth_and_refuses_a_bad_flag(pool, tmp_path):
    paths = [f"shards={pool['dir']}", f"out_dir={tmp_path / 'gt'}"]
    command = [sys.executable, "-m", "sam_engine.annotate", "export", *paths]
    done = subprocess.run([*command, "evaluation=true", "sources=manual"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    dataset = json.loads((tmp_path / "gt" / "annotations.json").read_text())
    assert {(a["iscrowd"], a["source"]) for a in dataset["annotations"]} == {(0, "manual")}
    refused = subprocess.run([*command, "evaluation=yes"], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "evaluation='yes': expected true or false" in refused.stderr

    def export(*overrides: str) -> None:  # the command's own function, in this process
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            annotate_command.export(compose("annotate_export", overrides=[*paths, *overrides]))

    export("segmentation=polygons")
    dataset = json.loads((tmp_path / "gt" / "annotations.json").read_text())
    assert dataset["info"]["sam_engine_export"]["segmentation"] == "polygons"
    assert {type(a["segmentation"]) for a in dataset["annotations"]} == {list}
    export("layout=label_studio")
    assert len(json.loads((tmp_path / "gt" / "tasks.json").read_text())) == len(SCENES)


def _with_categories(exported: Path, out: Path) -> tuple[Path, list]:
    """The export as another tool's file with two named categories: iscrowd 0, no sam_engine info; the
    annotations' ids cycle through none, 3 (cat), 7 (dog); the last one's id is not an integer."""
    dataset = json.loads(exported.read_text())
    del dataset["info"]
    dataset["categories"] = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    expected = []
    for i, annotation in enumerate(dataset["annotations"]):
        annotation["iscrowd"] = 0
        annotation.pop("category_id")
        category = [None, 3, 7][i % 3] if i < len(dataset["annotations"]) - 1 else "x"
        if category is not None:
            annotation["category_id"] = category
        expected.append(category)
    return write_json(out, dataset), expected


def _categories_by_file_name(shards: Path) -> dict[str, list]:
    return {record["image"]["file_name"]: [(a.get("category_id"), a.get("category_name"))
                                           for a in record["annotations"]]
            for _, record in read_output(shards).values()}


def test_category_ids_travel_through_import_shards_export_and_corrections(pool, exported, tmp_path):
    names = {None: None, 3: "cat", 7: "dog"}
    path, categories = _with_categories(exported, tmp_path / "tool.json")
    report = import_coco(path, exported.parent / "images", tmp_path / "shards")
    assert [s.kind for s in report.skipped_annotations] == ["bad_category"]  # "x", named with its file
    reason = report.skipped_annotations[0].reason
    assert re.search(r"images/a_b.jpg: annotation \d+: category_id is not an integer: 'x'", reason), reason
    imported = _categories_by_file_name(tmp_path / "shards")
    assert [c for cs in imported.values() for c in cs] == [(c, names[c]) for c in categories[:-1]]

    again = export_coco(tmp_path / "shards", tmp_path / "again", evaluation=True)
    dataset = json.loads(again.read_text())
    assert [(c["id"], c["name"]) for c in dataset["categories"]] == [(1, "object"), (3, "cat"), (7, "dog")]
    assert [a["category_id"] for a in dataset["annotations"]] == [c or 1 for c in categories[:-1]]
    assert "category_name" not in dataset["annotations"][1]  # COCO names categories in one place
    import_coco(again, again.parent / "images", tmp_path / "shards_again")
    assert _categories_by_file_name(tmp_path / "shards_again") == {
        name: [(c or 1, names[c] or "object") for c, _ in cs] for name, cs in imported.items()
    }

    report = import_coco_corrections(path, pool["dir"], tmp_path / "corrected", stage=2)
    assert report["skipped_annotations_by_kind"] == {"bad_category": 1}
    corrected = [(a.get("category_id"), a.get("category_name"))
                 for _, record in read_output(tmp_path / "corrected").values() for a in record["annotations"]]
    assert sorted(corrected, key=str) == sorted([(c, names[c]) for c in categories[:-1]], key=str)


def _datumaro_masks(dataset) -> dict[str, np.ndarray]:
    """Item id (file stem) -> N x H x W bool, the masks datumaro read, in the order of their COCO ids."""
    return {item.id: np.array([a.image.astype(bool) for a in sorted(item.annotations, key=lambda a: a.id)
                               if a.type.name == "mask"]) for item in dataset}


def test_cvat_reads_our_cvat_export_and_we_import_what_it_writes(pool, tmp_path):
    import datumaro as dm  # CVAT's own dataset library (a dev dependency)
    path = export_coco(pool["dir"], tmp_path / "for_cvat", layout="cvat")
    assert path == tmp_path / "for_cvat" / "annotations" / "instances_default.json"
    with zipfile.ZipFile(tmp_path / "for_cvat" / "cvat_coco.zip") as archive:
        assert sorted(archive.namelist()) == sorted(["annotations/instances_default.json", "images/img0.png",
                                                     "images/img1.png", "images/a_b.jpg"])
        archive.extractall(tmp_path / "unzipped")  # as CVAT's server does with an uploaded zip
    images = json.loads(path.read_text())["images"]
    keys = {image["file_name"].rsplit(".", 1)[0]: image["sam_engine_key"] for image in images}
    for source in (tmp_path / "for_cvat", tmp_path / "unzipped"):
        read = _datumaro_masks(dm.Dataset.import_from(str(source), "coco_instances"))
        assert {stem: masks.shape[0] for stem, masks in read.items()} == {
            stem: len(pool["masks"][key]) for stem, key in keys.items()}
        for stem, masks in read.items():
            assert np.array_equal(masks, pool["masks"][keys[stem]])  # holes and all

    # CVAT's export of the task (datumaro writes it: no sam_engine fields), zipped as CVAT hands it out.
    dataset = dm.Dataset.import_from(str(tmp_path / "for_cvat"), "coco_instances")
    dataset.export(str(tmp_path / "from_cvat"), "coco_instances", save_media=False)
    written = tmp_path / "from_cvat" / "annotations" / "instances_default.json"
    assert "sam_engine_key" not in written.read_text()
    with zipfile.ZipFile(tmp_path / "from_cvat.zip", "w") as archive:
        archive.write(written, "annotations/instances_default.json")
    for corrections, out in ((tmp_path / "from_cvat", "dir"), (tmp_path / "from_cvat.zip", "zip")):
        report = import_coco_corrections(corrections, pool["dir"], tmp_path / out, stage=2)
        assert report["skipped"] == 0 and report["skipped_annotations"] == 0, report
        for key, (_, record) in read_output(tmp_path / out).items():
            assert np.array_equal(record_masks(record), pool["masks"][key])


@pytest.mark.parametrize(("members", "message"), [
    ({}, "expected one annotations/instances_\\*.json in the zip"),
    ({"annotations/instances_a.json": "{}", "annotations/instances_b.json": "{}"}, "found 2"),
    ({"annotations/instances_default.json": "not json"}, "not JSON"),
])
def test_a_bad_cvat_zip_is_an_error_naming_it(pool, tmp_path, members, message):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("images/x.png", b"")
        for name, text in members.items():
            archive.writestr(name, text)
    with pytest.raises(ValueError, match=f"{re.escape(str(bad))}.*{message}"):
        import_coco_corrections(bad, pool["dir"], tmp_path / "out", stage=2)
    assert not (tmp_path / "out").exists()


# --- import -----------------------------------------------------------------------------------


def test_unchanged_file_imports_exactly_the_exported_masks(pool, exported, tmp_path):
    report = import_coco_corrections(exported, pool["dir"], tmp_path / "out", stage=2)
    total = sum(len(m) for m in pool["masks"].values())
    assert (report["imported"], report["annotations"]) == (3, total)
    assert report["skipped"] == report["skipped_annotations"] == 0
    assert json.loads((tmp_path / "out" / REPORT_FILE).read_text()) == report
    coco = COCO(str(exported))
    samples = read_output(tmp_path / "out")
    assert sorted(samples) == ["img0", "img1", "img2"]
    for image in coco.dataset["images"]:
        key = image["sam_engine_key"]
        image_bytes, record = samples[key]
        assert image_bytes == pool["bytes"][key]
        assert record["image"] == {
            "image_id": image["sam_engine_image_id"],
            "width": W,
            "height": H,
            "file_name": SCENES[key][1],
        }
        exported_masks = np.array([coco.annToMask(a) for a in coco.imgToAnns[image["id"]]], dtype=bool)
        assert np.array_equal(record_masks(record), exported_masks)
        assert [a["id"] for a in record["annotations"]] == list(range(len(exported_masks)))
        assert {(a["source"], a["stage"]) for a in record["annotations"]} == {("manual", 2)}
        assert [a["predicted_iou"] for a in record["annotations"]] == [
            a["predicted_iou"] for a in coco.imgToAnns[image["id"]]
        ]
    again = import_coco_corrections(exported, pool["dir"], tmp_path / "out", stage=2)
    assert (again["imported"], again["already_present"]) == (0, 3)


def test_corrections_redrawn_deleted_and_added_masks_are_imported(pool, exported, tmp_path):
    dataset = json.loads(exported.read_text())
    for image in dataset["images"]:  # CVAT keeps neither our image fields nor our annotation fields
        del image["sam_engine_key"], image["sam_engine_image_id"]
    dataset["annotations"] = [
        {k: a[k] for k in ("id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd")}
        for a in dataset["annotations"]
    ]
    img0 = [a for a in dataset["annotations"] if a["image_id"] == 1]
    img0[0].update(segmentation=[[3.0, 3.0, 20.0, 4.0, 12.0, 18.0]], iscrowd=0)  # re-drawn as a polygon
    dataset["annotations"].remove(img0[1])  # deleted
    added = disk(6, 24, 4)
    dataset["annotations"].append(
        {"id": 1000, "image_id": 2, "category_id": 1, "segmentation": uncompressed_rle(added), "iscrowd": 1}
    )
    path = write_json(tmp_path / "corrected.json", dataset)
    report = import_coco_corrections(path, pool["dir"], tmp_path / "out", stage=2, prefix="round1")

    assert (report["imported"], report["skipped"], report["skipped_annotations"]) == (3, 0, 0)
    samples = read_output(tmp_path / "out")
    assert all(
        name.startswith("round1-") for name in json.loads((tmp_path / "out/manifest.json").read_text())["shards"]
    )
    polygon = COCO(str(path)).annToMask(img0[0]).astype(bool)
    assert polygon.sum() > 50 and not np.array_equal(polygon, pool["masks"]["img0"][0])
    expected = {
        "img0": np.concatenate([polygon[None], pool["masks"]["img0"][2:]]),
        "img1": np.concatenate([pool["masks"]["img1"], added[None]]),
        "img2": pool["masks"]["img2"],
    }
    for key, masks in expected.items():
        record = samples[key][1]
        assert np.array_equal(record_masks(record), masks), key
        assert {(a["source"], a["stage"], a["predicted_iou"]) for a in record["annotations"]} == {("manual", 2, 1.0)}


def test_bad_images_and_annotations_are_skipped_and_reported(pool, exported, tmp_path):
    dataset = json.loads(exported.read_text())
    dataset["images"][1]["width"] = W + 1  # img1: not the pool's size
    dataset["images"].append({"id": 4, "file_name": "elsewhere.png", "width": W, "height": H})
    dataset["images"].append({"id": 5, "file_name": "no_size.png"})
    good = copy.deepcopy(dataset["annotations"][0])
    dataset["annotations"] += [
        {**good, "id": 901, "segmentation": {"size": [10, 10], "counts": "0`1"}},  # RLE of another size
        {**good, "id": 902, "segmentation": "nonsense"},
        {**good, "id": 903, "image_id": 77},  # unknown image id
        {**good, "id": 904, "image_id": 4},  # an image not in the pool
        {**good, "id": 905, "predicted_iou": "high"},
        "not an annotation",
    ]
    path = write_json(tmp_path / "bad.json", dataset)
    report = import_coco_corrections(path, pool["dir"], tmp_path / "out", stage=2)

    assert sorted(read_output(tmp_path / "out")) == ["img0", "img2"]
    assert report["imported"] == 2
    assert report["skipped_by_kind"] == {"bad_image_entry": 1, "size_mismatch": 1, "not_in_pool": 1}
    reasons = {s["kind"]: s["reason"] for s in report["skipped_files"]}
    assert "elsewhere.png" in reasons["not_in_pool"] and "bad.json: images[3]" in reasons["not_in_pool"]
    assert "33x24" in reasons["size_mismatch"] and "img1" in reasons["size_mismatch"]
    assert "images[4]" in reasons["bad_image_entry"]
    assert report["skipped_annotations_by_kind"] == {
        "rle_size": 1,
        "bad_segmentation": 1,
        "unknown_image": 1,
        "bad_annotation": 2,
    }
    dropped = {s["kind"]: s["reason"] for s in report["skipped_annotation_list"]}
    assert "annotation 901" in dropped["rle_size"] and "[10, 10]" in dropped["rle_size"]
    assert "77" in dropped["unknown_image"]
    img0 = read_output(tmp_path / "out")["img0"][1]
    assert np.array_equal(record_masks(img0), pool["masks"]["img0"])
    assert json.loads((tmp_path / "out" / REPORT_FILE).read_text()) == report


def test_malformed_json_is_an_error_naming_the_file(pool, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(ValueError, match=re.escape(str(path))):
        import_coco_corrections(path, pool["dir"], tmp_path / "out", stage=2)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="stage"):
        import_coco_corrections(path, pool["dir"], tmp_path / "out", stage=-1)


def test_two_pool_samples_of_one_file_name_keep_the_first_and_report_the_other(pool, exported, tmp_path):
    dataset = json.loads(exported.read_text())
    for image in dataset["images"]:
        del image["sam_engine_key"]  # matched by file name
    with ShardWriter(tmp_path / "copies") as writer:
        writer.write("copy0", pool["bytes"]["img0"], "png", make_record(9, W, H, "img0.png", []))
    path = write_json(tmp_path / "corrected.json", dataset)
    report = import_coco_corrections(path, [pool["dir"], tmp_path / "copies"], tmp_path / "out", stage=2)

    assert sorted(read_output(tmp_path / "out")) == ["img0", "img1", "img2"]
    assert report["skipped_by_kind"] == {"ambiguous_match": 1}
    assert "copy0" in report["skipped_files"][0]["source"] and "'img0'" in report["skipped_files"][0]["reason"]
