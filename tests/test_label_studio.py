"""Label Studio as it is: its brush RLE both ways against the label-studio-sdk codec, our tasks export with
exact masks (holes kept), its JSON export imported back with upload-style names, bad brushes reported."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle  # Label Studio's own codec
from test_coco_bridge import SCENES, pool, read_output, record_masks  # noqa: F401  (pool is a fixture)

from sam_engine.annotate.brush_rle import BrushRleError, decode_brush, encode_brush
from sam_engine.annotate.label_studio import CONFIG_FILE, export_label_studio, import_label_studio


def sdk_decode(rle: list[int], height: int, width: int) -> np.ndarray:
    """The SDK's reading of a brush (``decode_from_annotation``: the alpha channel)."""
    return np.reshape(decode_rle(rle), (height, width, 4))[:, :, 3] > 0


def masks_to_test() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :70]
    ring = ((yy - 20) ** 2 + (xx - 35) ** 2 <= 15**2) & ((yy - 20) ** 2 + (xx - 35) ** 2 > 6**2)
    wide = np.zeros((300, 400), bool)
    wide[10:290, 5:395] = True  # runs longer than 65,536 values: split records
    return [ring, rng.random((17, 23)) > 0.5, np.zeros((5, 9), bool), np.ones((8, 3), bool), wide,
            np.ones((1, 1), bool)]


@pytest.mark.parametrize("index", range(6))
def test_our_brush_rle_and_the_sdks_read_each_other_exactly(index):
    mask = masks_to_test()[index]
    height, width = mask.shape
    ours = encode_brush(mask)
    assert np.array_equal(sdk_decode(ours, height, width), mask)  # the SDK reads what we write
    theirs = mask2rle(mask.astype(np.uint8) * 255)
    assert np.array_equal(decode_brush(theirs, height, width), mask)  # we read what the SDK writes


def test_literal_records_as_label_studios_editor_writes_them_decode():
    # The editor stores the label colour in RGB: values vary inside a pixel, so the stream has literal records.
    mask = masks_to_test()[0]
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask] = (230, 25, 75, 255)
    from label_studio_sdk.converter.brush import encode_rle

    stream = encode_rle(rgba.ravel())
    assert np.array_equal(decode_brush(stream, *mask.shape), mask)


@pytest.mark.parametrize(("rle", "size", "message"), [
    ("nope", (2, 2), "not a list of byte values"),
    ([1, 2, 300], (2, 2), "not a list of byte values"),
    (None, (2, 2), "not a list of byte values"),
])
def test_a_bad_brush_is_refused(rle, size, message):
    with pytest.raises(BrushRleError, match=message):
        decode_brush(rle, *size)


def test_a_brush_of_another_size_or_cut_short_is_refused():
    stream = encode_brush(np.ones((4, 4), bool))
    with pytest.raises(BrushRleError, match="holds 64 values, the image 4x5x4 needs 80"):
        decode_brush(stream, 4, 5)
    with pytest.raises(BrushRleError, match="ends inside a record"):
        decode_brush(stream[:6], 4, 4)


def test_export_is_label_studio_tasks_whose_brushes_the_sdk_reads_exactly(pool, tmp_path):  # noqa: F811
    path = export_label_studio(pool["dir"], tmp_path, image_prefix="/data/local-files/?d=")
    tasks = json.loads(path.read_text())
    assert '<BrushLabels name="label" toName="image"><Label value="object"/>' in (tmp_path / CONFIG_FILE).read_text()
    for task in tasks:
        key = task["data"]["sam_engine_key"]
        assert task["data"]["image"].startswith("/data/local-files/?d=images/")
        assert (tmp_path / task["data"]["image"].split("?d=")[1]).read_bytes() == pool["bytes"][key]
        results = task["predictions"][0]["result"]
        masks = [sdk_decode(r["value"]["rle"], r["original_height"], r["original_width"]) for r in results]
        assert np.array_equal(np.array(masks), pool["masks"][key])  # holes kept
        assert {r["value"]["brushlabels"][0] for r in results} == {"object"}


def _as_label_studio_exports_it(tasks_json: Path, out: Path) -> Path:
    """Our tasks as Label Studio's JSON export after people's work: uploaded images renamed ``<hash>-name``,
    no sam_engine_key, the prediction accepted as an annotation, one mask deleted, one bad brush."""
    tasks = json.loads(tasks_json.read_text())
    for i, task in enumerate(tasks):
        name = task["data"]["image"].rsplit("/", 1)[1]
        task["data"] = {"image": f"/data/upload/7/{i:08x}-{name}"}
        task["id"] = i + 1
        results = task.pop("predictions")[0]["result"]
        task["annotations"] = [{"id": 9, "was_cancelled": True, "result": []},
                               {"id": 10 + i, "was_cancelled": False, "result": results}]
    tasks[0]["annotations"][-1]["result"].pop(0)  # people deleted the first mask of the first image
    tasks[1]["annotations"][-1]["result"][0]["value"]["rle"] = [0, 0, 0]  # a damaged brush
    tasks[0]["annotations"][-1]["result"][1]["original_height"] = 10**6  # a brush of another size: refused
    tasks[2]["annotations"][-1]["result"][0]["original_height"] = 10**6  # a hostile image size: never allocated
    tasks[2]["annotations"][-1]["result"][0]["original_width"] = 10**6
    return out.write_text(json.dumps(tasks)) and out


def test_label_studios_export_imports_back_matched_by_upload_names(pool, tmp_path):  # noqa: F811
    exported = _as_label_studio_exports_it(export_label_studio(pool["dir"], tmp_path / "to"), tmp_path / "ls.json")
    report = import_label_studio(exported, pool["dir"], tmp_path / "out", stage=2)
    assert report["imported"] == len(SCENES) - 1 and report["skipped_by_kind"] == {"size_mismatch": 1}, report
    assert report["skipped_annotations_by_kind"] == {"bad_brush": 4}  # task 2: both its brushes
    reasons = [s["reason"] for s in report["skipped_annotation_list"]]
    assert re.search(r"ls\.json: task 0 result 1: the brush is 1000000x32, the image 24x32", reasons[0]), reasons
    assert re.search(r"ls\.json: task 1 result 0: the RLE", reasons[1]), reasons
    assert re.search(r"ls\.json: task 2 result 0: an image of 1000000x1000000 is over", reasons[2]), reasons
    written = {key: record for key, (_, record) in read_output(tmp_path / "out").items()}
    expected = {key: masks for key, masks in pool["masks"].items()}
    expected["img0"] = expected["img0"][[1, 3]]  # the first deleted, the third refused
    expected["img1"] = expected["img1"][1:]
    assert sorted(written) == ["img0", "img1"]  # img2's task says 10^6 x 10^6: not the pool's image
    for key, record in written.items():
        assert np.array_equal(record_masks(record), expected[key])
        assert {(a["source"], a["stage"], a["category_id"], a["category_name"]) for a in record["annotations"]} \
            <= {("manual", 2, 1, "object")}


def test_an_unreadable_export_is_an_error_naming_it(pool, tmp_path):  # noqa: F811
    bad = tmp_path / "export.json"
    bad.write_text('{"tasks": ')
    with pytest.raises(ValueError, match="export.json: cannot read Label Studio's export"):
        import_label_studio(bad, pool["dir"], tmp_path / "out", stage=2)
    bad.write_text('{"tasks": []}')
    with pytest.raises(ValueError, match="export.json: expected Label Studio's JSON export, a list of tasks"):
        import_label_studio(bad, pool["dir"], tmp_path / "out", stage=2)
