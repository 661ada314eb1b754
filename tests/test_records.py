"""SA-1B records: RLE round trip, annotations as pycocotools computes them, the validator's messages."""

import copy
import json
import re

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from shard_helpers import random_masks

from sam_engine.data.records import (
    RecordError,
    decode_masks,
    encode_masks,
    make_annotations,
    make_record,
    mask_areas,
    validate_record,
)


@pytest.fixture
def masks():
    """Rectangles plus the awkward cases: an empty mask, a full mask and a non-convex ring."""
    rng = np.random.default_rng(0)
    rectangles = random_masks(5, 30, 41, rng)
    ring = np.zeros((30, 41), bool)
    ring[5:25, 5:35] = True
    ring[10:20, 10:30] = False
    return np.concatenate([rectangles, np.zeros((1, 30, 41), bool), np.ones((1, 30, 41), bool), ring[None]])


def test_masks_round_trip_exactly_through_json(masks):
    segmentations = json.loads(json.dumps(encode_masks(masks)))
    assert all(isinstance(s["counts"], str) and s["size"] == [30, 41] for s in segmentations)
    decoded = decode_masks(segmentations)
    assert decoded.shape == masks.shape and decoded.dtype == bool
    np.testing.assert_array_equal(decoded, masks)


def test_decode_masks_rejects_mixed_sizes_and_shapes_empty_lists(masks):
    mixed = encode_masks(masks[:1]) + encode_masks(masks[:1, :10])
    with pytest.raises(ValueError, match="different sizes"):
        decode_masks(mixed)
    assert decode_masks([], size=(4, 5)).shape == (0, 4, 5)


def test_bbox_and_area_are_pycocotools_own(masks):
    annotations = make_annotations(masks)
    one_by_one = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    assert [a["area"] for a in annotations] == [int(mask_utils.area(r)) for r in one_by_one]
    assert [a["area"] for a in annotations] == masks.sum(axis=(1, 2)).tolist()
    assert [a["bbox"] for a in annotations] == [mask_utils.toBbox(r).tolist() for r in one_by_one]
    assert annotations[1]["bbox"] == [float(v) for v in mask_utils.toBbox(one_by_one[1])]


def test_defaults_describe_a_human_mask(masks):
    annotations = make_annotations(masks, start_id=10)
    assert [a["id"] for a in annotations] == list(range(10, 10 + len(masks)))
    assert all(a["predicted_iou"] == 1.0 and a["stability_score"] == 1.0 for a in annotations)
    assert all(a["crop_box"] == [0, 0, 41, 30] for a in annotations)
    for mask, annotation in zip(masks, annotations, strict=True):
        [[x, y]] = annotation["point_coords"]
        if mask.any():  # the default point lies on the mask, the ring included
            assert mask[int(y), int(x)], annotation["point_coords"]


def test_given_scores_points_boxes_and_provenance_are_stored(masks):
    n = len(masks)
    annotations = make_annotations(
        masks,
        predicted_iou=np.linspace(0.5, 0.9, n),
        stability_score=np.full(n, 0.25),
        point_coords=np.arange(2 * n).reshape(n, 2),
        crop_box=np.tile([1, 2, 3, 4], (n, 1)),
        provenance={
            "source": "manual",
            "stage": 1,
            "clicks": list(range(n)),
            "seconds": 2.5,
            "model": "m.pth",
        },
    )
    assert [a["predicted_iou"] for a in annotations] == np.linspace(0.5, 0.9, n).tolist()
    assert annotations[2]["stability_score"] == 0.25
    assert annotations[2]["point_coords"] == [[4.0, 5.0]]
    assert annotations[2]["crop_box"] == [1.0, 2.0, 3.0, 4.0]
    assert [a["clicks"] for a in annotations] == list(range(n))
    assert {(a["source"], a["stage"], a["seconds"], a["model"]) for a in annotations} == {
        ("manual", 1, 2.5, "m.pth")
    }
    validate_record(make_record("x", 41, 30, "x.jpg", annotations))
    json.dumps(annotations)  # JSON types only


@pytest.mark.parametrize(
    "provenance, message",
    [
        ({"source": "guess"}, "source 'guess'"),
        ({"colour": 1}, "unknown provenance"),
        ({"clicks": [1]}, "1 values"),
    ],
)
def test_bad_provenance_is_refused(masks, provenance, message):
    with pytest.raises(ValueError, match=message):
        make_annotations(masks, provenance=provenance)


def test_no_masks_make_no_annotations():
    assert make_annotations(np.zeros((0, 5, 6), bool)) == []


@pytest.fixture
def record(masks):
    return make_record(
        "sa_1", 41, 30, "sa_1.jpg", make_annotations(masks, provenance={"source": "auto", "stage": 3})
    )


def test_a_valid_record_passes_and_is_returned(record):
    assert validate_record(record) is record


def test_rle_size_message_names_image_and_field(record):
    record["annotations"][3]["segmentation"]["size"] = [10, 12]
    record["image"].update(width=10, height=12)
    for annotation in record["annotations"][:3] + record["annotations"][4:]:
        annotation["segmentation"]["size"] = [12, 10]
    with pytest.raises(RecordError) as error:
        validate_record(record)
    expected = "image 'sa_1' annotations[3].segmentation.size: [10, 12] differs from the image's [12, 10]"
    assert str(error.value) == expected


def _set(path):
    """A mutation setting ``record[path...] = value``."""

    def mutate(record, value):
        target = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


@pytest.mark.parametrize(
    "path, value, field, problem",
    [
        (("image", "width"), 0, "image.width", "a positive int"),
        (("image", "height"), "30", "image.height", "a positive int"),
        (("image", "file_name"), None, "image.file_name", "a str"),
        (("annotations",), {}, "annotations", "a list"),
        (("annotations", 2), [], "annotations[2]", "an object"),
        (("annotations", 1, "bbox"), [1, 2, 3], "annotations[1].bbox", "[x, y, w, h]"),
        (("annotations", 1, "bbox"), [1, 2, -3, 4], "annotations[1].bbox", "[x, y, w, h]"),
        (("annotations", 4, "area"), -1, "annotations[4].area", "an int >= 0"),
        (("annotations", 0, "predicted_iou"), float("nan"), "annotations[0].predicted_iou", "a number"),
        (
            ("annotations", 0, "stability_score"),
            np.float32(0.5),
            "annotations[0].stability_score",
            "a number",
        ),
        (("annotations", 0, "point_coords"), [[1, 2, 3]], "annotations[0].point_coords", "[[x, y]"),
        (("annotations", 0, "crop_box"), None, "annotations[0].crop_box", "[x, y, w, h]"),
        (("annotations", 5, "segmentation"), "rle", "annotations[5].segmentation", "an RLE object"),
        (
            ("annotations", 5, "segmentation", "counts"),
            b"abc",
            "annotations[5].segmentation.counts",
            "RLE string",
        ),
        (("annotations", 6, "id"), 0, "annotations[6].id", "duplicate id 0"),
        (("annotations", 6, "source"), "human", "annotations[6].source", "one of"),
        (("annotations", 6, "clicks"), -2, "annotations[6].clicks", "an int >= 0"),
    ],
)
def test_malformed_records_name_image_and_field(record, path, value, field, problem):
    _set(path)(record, value)
    with pytest.raises(RecordError) as error:
        validate_record(record, where="shard-000001.tar:sa_1")
    message = str(error.value)
    assert message.startswith(f"shard-000001.tar:sa_1: image 'sa_1' {field}: "), message
    assert problem in message


@pytest.mark.parametrize("key", ["image_id", "segmentation", "area", "predicted_iou", "point_coords"])
def test_missing_keys_are_named(record, key):
    broken = copy.deepcopy(record)
    target = broken["image"] if key == "image_id" else broken["annotations"][2]
    del target[key]
    field = "image.image_id" if key == "image_id" else f"annotations[2].{key}"
    with pytest.raises(RecordError, match=re.escape(f"{field}: missing")):
        validate_record(broken)


def test_non_object_record_is_refused():
    with pytest.raises(RecordError, match="record: expected an object, got list"):
        validate_record([])


def test_annotations_of_more_than_255_masks():
    """pycocotools' area() overflows a uint8 past 255 RLEs under numpy 2; we count them in chunks."""
    masks = np.zeros((300, 8, 9), dtype=bool)
    for i in range(300):
        masks[i, : 1 + i % 8, : 1 + i % 9] = True
    annotations = make_annotations(masks)
    assert [a["area"] for a in annotations] == [(1 + i % 8) * (1 + i % 9) for i in range(300)]
    assert mask_areas([a["segmentation"] for a in annotations]).tolist() == [a["area"] for a in annotations]
