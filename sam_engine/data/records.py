"""The SA-1B record: one JSON document per image, exactly as Meta released SA-1B, plus provenance.

A record is::

    {"image": {"image_id": 1, "width": W, "height": H, "file_name": "sa_1.jpg"},
     "annotations": [{"id": 0,
                      "segmentation": {"size": [H, W], "counts": "<COCO compressed RLE>"},
                      "bbox": [x, y, w, h], "area": 123,
                      "predicted_iou": 0.93, "stability_score": 0.97,
                      "crop_box": [x, y, w, h], "point_coords": [[x, y]],
                      # optional provenance (ours; SA-1B tools ignore unknown keys):
                      "source": "auto", "stage": 3, "clicks": 0, "seconds": 0.0, "model": "stage2/sam.pth"}]}

``bbox`` and ``area`` are what ``pycocotools.mask.toBbox`` / ``area`` compute from the RLE, so any
COCO tool agrees with them. Masks are encoded and decoded in bulk (one pycocotools call for all N).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from sam_engine.utils.config_checks import is_int, is_number

SOURCES = ("seed", "manual", "auto")
"""Where a mask came from: imported ground truth, a (simulated) annotator, or the model alone."""

PROVENANCE_KEYS = ("source", "stage", "clicks", "strokes", "seconds", "model")


class RecordError(ValueError):
    """A malformed record; the message names the image and the field path."""


# ---------------------------------------------------------------------------------------------------------
# Masks <-> COCO RLE
# ---------------------------------------------------------------------------------------------------------


def encode_rles(masks: np.ndarray) -> list[dict]:
    """(N, H, W) masks -> pycocotools RLE dicts (``counts`` as bytes, what pycocotools' functions take),
    one pycocotools call."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    if len(masks) == 0:
        return []
    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8))


def _as_str_counts(rles: list[dict]) -> list[dict]:
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def encode_masks(masks: np.ndarray) -> list[dict]:
    """Encode masks as COCO compressed RLE.

    Arguments:
        masks: N x H x W, bool (or 0/1 integers).
    Returns:
        N dicts ``{"size": [H, W], "counts": str}`` (``counts`` is the ASCII RLE string, JSON-ready).
    """
    return _as_str_counts(encode_rles(masks))


MASK_DECODE_BYTES = 256 * 2**20
"""Full-resolution masks are decoded this many bytes at a time, so a huge image cannot exhaust memory."""


def decode_masks(segmentations: list[Mapping], size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode COCO RLEs (``counts`` str or bytes) in one pycocotools call.

    Arguments:
        segmentations: N RLE dicts, all of the same ``size``.
        size: (H, W); required only to give an empty list a shape, checked against the RLEs otherwise.
    Returns:
        np.ndarray: N x H x W bool. It is a view of pycocotools' column-major buffer (each mask is
        stored W-major); use ``np.ascontiguousarray`` if C order matters.
    """
    sizes = {tuple(s["size"]) for s in segmentations}
    if size is not None:
        sizes.add(tuple(size))
    if len(sizes) > 1:
        raise ValueError(f"RLEs of different sizes cannot be decoded together: {sorted(sizes)}")
    if not segmentations:
        if size is None:
            raise ValueError("decode_masks needs size= to decode an empty list")
        return np.zeros((0, *size), dtype=bool)
    decoded = mask_utils.decode(list(segmentations))  # H x W x N uint8, Fortran order
    return decoded.transpose(2, 0, 1).view(bool)


_PYCOCOTOOLS_AREA_CHUNK = 255
"""pycocotools' ``area`` sizes an array by the RLE count as uint8: under numpy 2 it overflows past 255."""


def mask_areas(segmentations: list[Mapping]) -> np.ndarray:
    """Foreground pixels of each RLE, counted on the RLE itself (no decoding). Returns: N int64."""
    segmentations = list(segmentations)
    chunks = [
        mask_utils.area(segmentations[i : i + _PYCOCOTOOLS_AREA_CHUNK])
        for i in range(0, len(segmentations), _PYCOCOTOOLS_AREA_CHUNK)
    ]
    return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, dtype=np.int64)


def _median_points(masks: np.ndarray) -> np.ndarray:
    """A pixel inside each mask: its median foreground pixel in raster (row-major) order.

    The point always lies on the mask and sits near the middle of compact shapes. Vectorised over
    masks with O(N (H + W)) extra memory. Empty masks get (0, 0).

    Arguments:
        masks: N x H x W bool.
    Returns:
        np.ndarray: N x 2 int64, (x, y) pixel indices.
    """
    n = len(masks)
    row_counts = masks.sum(axis=2)  # N x H
    target = row_counts.sum(axis=1) // 2  # index of the median pixel among the foreground
    below = np.cumsum(row_counts, axis=1)
    y = np.argmax(below > target[:, None], axis=1)
    before_row = np.take_along_axis(below, y[:, None], axis=1)[:, 0] - row_counts[np.arange(n), y]
    row = masks[np.arange(n), y]  # N x W
    x = np.argmax(np.cumsum(row, axis=1) > (target - before_row)[:, None], axis=1)
    return np.stack([x, y], axis=1)


# ---------------------------------------------------------------------------------------------------------
# Building records
# ---------------------------------------------------------------------------------------------------------


def _per_mask(values, n: int, width: int, default, name: str) -> np.ndarray:
    """``values`` (or ``default``) as an n x width float array; a single row is repeated."""
    array = np.asarray(default if values is None else values, dtype=np.float64).reshape(-1, width)
    if len(array) == 1:
        array = np.repeat(array, n, axis=0)
    if len(array) != n:
        raise ValueError(f"{name} has {len(array)} rows for {n} masks")
    return array


def _provenance_rows(provenance: Mapping | None, n: int) -> list[dict]:
    """One provenance dict per mask; a list/array value of length n is spread over the masks."""
    provenance = dict(provenance or {})
    unknown = set(provenance) - set(PROVENANCE_KEYS)
    if unknown:
        raise ValueError(f"unknown provenance keys {sorted(unknown)}; expected a subset of {PROVENANCE_KEYS}")
    if "source" in provenance and provenance["source"] not in SOURCES:
        raise ValueError(f"provenance source {provenance['source']!r} is not one of {SOURCES}")
    columns = {}
    for key, value in provenance.items():
        if isinstance(value, (list, tuple, np.ndarray)):
            if len(value) != n:
                raise ValueError(f"provenance {key} has {len(value)} values for {n} masks")
            columns[key] = np.asarray(value).tolist()
        else:
            columns[key] = [value.item() if isinstance(value, np.generic) else value] * n
    return [{key: column[i] for key, column in columns.items()} for i in range(n)]


def rle_counts(counts: str) -> np.ndarray:
    """Run lengths of a COCO compressed RLE string, decoded as pycocotools' ``rleFrString`` does.

    Each number is 1-6 characters of 5 bits (``char - 48``; bit 0x20: more follows, bit 0x10 of
    the last: negative); from the fourth on, a number is a difference to the run two before.

    Returns:
        (M,) int64 run lengths, alternately background and foreground, column-major.
    Raises:
        ValueError: characters outside the RLE alphabet, or a number cut short or too long.
    """
    if not counts.isascii():
        raise ValueError("RLE counts hold non-ASCII characters")
    chars = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if len(chars) == 0:
        return np.zeros(0, dtype=np.int64)
    if chars.min() < 0 or chars.max() > 63:
        raise ValueError("RLE counts hold characters outside '0'..'o'")
    ends = np.flatnonzero((chars & 0x20) == 0)
    if len(ends) == 0 or ends[-1] != len(chars) - 1:
        raise ValueError("RLE counts end in the middle of a number")
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 6:
        raise ValueError("RLE counts hold a number longer than 6 characters")
    position = np.arange(len(chars)) - np.repeat(starts, lengths)
    values = np.add.reduceat((chars & 0x1F) << (5 * position), starts)
    negative = (chars[ends] & 0x10) != 0
    values = np.where(negative, values - (1 << (5 * lengths)), values)
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def rle_problem(segmentation: dict, height: int, width: int) -> tuple[str, str] | None:
    """What is wrong with a COCO RLE (compressed ``str`` or uncompressed ``list`` counts) for a ``height`` x
    ``width`` image, as ``(kind, message)`` with kind ``rle_size`` or ``bad_rle``; None if nothing.

    pycocotools trusts the runs: an RLE whose runs cover more pixels than its size writes past its
    buffer when decoded. Check untrusted RLEs with this before ``decode_masks``.
    """
    size = segmentation.get("size")
    if list(size or []) != [height, width]:
        return "rle_size", f"RLE size {size} differs from the image's [{height}, {width}]"
    counts = segmentation.get("counts")
    try:
        if isinstance(counts, str):
            runs = rle_counts(counts)
        elif isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            runs = np.asarray(counts, dtype=np.int64)
        else:
            raise ValueError(f"counts must be a string or a list of ints, got {type(counts).__name__}")
    except ValueError as exc:
        return "bad_rle", str(exc)
    if len(runs) and (runs.min() < 0 or runs.max() >= 2**32):
        return "bad_rle", "RLE has a negative or oversized run"
    if runs.sum() != height * width:
        return "bad_rle", f"RLE runs cover {runs.sum()} pixels, not {height}x{width}"
    return None


def make_annotations(
    masks: np.ndarray,
    *,
    start_id: int = 0,
    predicted_iou=None,
    stability_score=None,
    point_coords=None,
    crop_box=None,
    provenance: Mapping | None = None,
) -> list[dict]:
    """Build SA-1B annotation dicts for N masks of one image (see :func:`annotations_from_rles`).

    Arguments:
        masks: N x H x W bool.
        point_coords: N x 2 (x, y); by default one pixel on each mask (its median foreground pixel in
            raster order), what a human (seed or manual) mask means.
        Others: as :func:`annotations_from_rles`.
    Returns:
        N annotation dicts holding only JSON types.
    """
    masks = np.asarray(masks, dtype=bool)
    if point_coords is None and len(masks):
        point_coords = _median_points(masks)
    return annotations_from_rles(
        encode_rles(masks),
        start_id=start_id,
        predicted_iou=predicted_iou,
        stability_score=stability_score,
        point_coords=point_coords,
        crop_box=crop_box,
        provenance=provenance,
    )


def annotations_from_rles(
    rles: list[dict],
    *,
    start_id: int = 0,
    predicted_iou=None,
    stability_score=None,
    point_coords=None,
    crop_box=None,
    provenance: Mapping | None = None,
) -> list[dict]:
    """Build SA-1B annotation dicts for N masks of one image, given as pycocotools RLEs.

    ``segmentation`` is the RLE with ``counts`` as an ASCII string; ``bbox`` and ``area`` come from
    pycocotools (one bulk call each). The other SA-1B fields default to what a human (seed or manual)
    mask means: ``predicted_iou`` = 1.0, ``stability_score`` = 1.0, ``crop_box`` = the whole image.

    Arguments:
        rles: N pycocotools RLE dicts (``counts`` bytes or str) of one image size.
        start_id: id of the first annotation; the others follow consecutively.
        predicted_iou, stability_score: N floats (or one, for all).
        point_coords: N x 2 (x, y) pixel coordinates (required), stored as ``[[x, y]]`` as in SA-1B.
        crop_box: 4 or N x 4, XYWH.
        provenance: subset of ``source`` (seed|manual|auto), ``stage`` (int), ``clicks`` (int),
            ``strokes`` (int, brush and eraser strokes), ``seconds`` (float), ``model`` (str); a scalar applies
            to every mask, a length-N list gives one value per mask.
    Returns:
        N annotation dicts holding only JSON types.
    """
    n = len(rles)
    if n == 0:
        return []
    rles = [{"size": r["size"], "counts": r["counts"] if isinstance(r["counts"], bytes) else r["counts"].encode()}
            for r in rles]
    height, width = rles[0]["size"]
    areas = mask_areas(rles).tolist()
    boxes = mask_utils.toBbox(rles).tolist()
    ious = _per_mask(predicted_iou, n, 1, 1.0, "predicted_iou")[:, 0].tolist()
    stabilities = _per_mask(stability_score, n, 1, 1.0, "stability_score")[:, 0].tolist()
    if point_coords is None:
        raise ValueError("point_coords is required: the prompt point of each mask")
    points = _per_mask(point_coords, n, 2, None, "point_coords").tolist()
    crops = _per_mask(crop_box, n, 4, [0, 0, width, height], "crop_box").tolist()
    extras = _provenance_rows(provenance, n)
    return [
        {
            "id": start_id + i,
            "segmentation": rle,
            "bbox": boxes[i],
            "area": int(areas[i]),
            "predicted_iou": ious[i],
            "stability_score": stabilities[i],
            "crop_box": crops[i],
            "point_coords": [points[i]],
            **extras[i],
        }
        for i, rle in enumerate(_as_str_counts(rles))
    ]


def renumbered(annotations: Iterable[dict]) -> list[dict]:
    """Copies of ``annotations`` with ids 0..n-1 in their order: a record's ids after some were left out."""
    return [{**annotation, "id": i} for i, annotation in enumerate(annotations)]


def make_record(
    image_id: str | int, width: int, height: int, file_name: str, annotations: list[dict]
) -> dict:
    """The SA-1B record of one image."""
    return {
        "image": {"image_id": image_id, "width": width, "height": height, "file_name": file_name},
        "annotations": annotations,
    }


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return type(value).__name__


def _is_numbers(value: Any, length: int) -> bool:
    return isinstance(value, list) and len(value) == length and all(is_number(v) for v in value)


class _Checker:
    """Raises RecordError messages of the form ``<where>: image '<id>' <field>: <problem>``."""

    def __init__(self, where: str):
        self.where = where
        self.image = "?"

    def fail(self, field: str, problem: str):
        prefix = f"{self.where}: " if self.where else ""
        raise RecordError(f"{prefix}image {self.image!r} {field}: {problem}")

    def require(self, mapping: Mapping, key: str, field: str, check, expected: str):
        if key not in mapping:
            self.fail(f"{field}{key}", "missing")
        value = mapping[key]
        if not check(value):
            self.fail(f"{field}{key}", f"expected {expected}, got {value!r:.80}")
        return value


def _check_image(checker: _Checker, image: Any) -> tuple[int, int]:
    if not isinstance(image, dict):
        checker.fail("image", f"expected an object, got {_type_name(image)}")
    checker.image = image.get("image_id", "?")
    checker.require(image, "image_id", "image.", lambda v: is_int(v) or isinstance(v, str), "an int or str")
    width = checker.require(image, "width", "image.", lambda v: is_int(v) and v > 0, "a positive int")
    height = checker.require(image, "height", "image.", lambda v: is_int(v) and v > 0, "a positive int")
    checker.require(image, "file_name", "image.", lambda v: isinstance(v, str), "a str")
    return height, width


def _check_segmentation(checker: _Checker, segmentation: Any, field: str, size: list[int]) -> None:
    if not isinstance(segmentation, dict):
        checker.fail(field, f"expected an RLE object, got {_type_name(segmentation)}")
    rle_size = checker.require(
        segmentation, "size", field + ".", lambda v: isinstance(v, list) and len(v) == 2, "[h, w]"
    )
    if rle_size != size:
        checker.fail(f"{field}.size", f"{rle_size} differs from the image's {size}")
    checker.require(segmentation, "counts", field + ".", lambda v: isinstance(v, str) and v, "an RLE string")


_ANNOTATION_FIELDS = (
    ("bbox", lambda v: _is_numbers(v, 4) and v[2] >= 0 and v[3] >= 0, "[x, y, w, h] with w, h >= 0"),
    ("area", lambda v: is_int(v) and v >= 0, "an int >= 0"),
    ("predicted_iou", is_number, "a number"),
    ("stability_score", is_number, "a number"),
    ("crop_box", lambda v: _is_numbers(v, 4), "[x, y, w, h]"),
    ("point_coords", lambda v: isinstance(v, list) and all(_is_numbers(p, 2) for p in v), "[[x, y], ...]"),
)

_PROVENANCE_FIELDS = {
    "source": (lambda v: v in SOURCES, f"one of {SOURCES}"),
    "stage": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
    "clicks": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
    "strokes": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
    "seconds": (lambda v: is_number(v) and v >= 0, "a number >= 0"),
    "model": (lambda v: isinstance(v, str), "a str"),
}


def _check_annotation(checker: _Checker, annotation: Any, field: str, size: list[int]) -> Any:
    if not isinstance(annotation, dict):
        checker.fail(field, f"expected an object, got {_type_name(annotation)}")
    prefix = field + "."
    ann_id = checker.require(
        annotation, "id", prefix, lambda v: is_int(v) or isinstance(v, str), "an int/str"
    )
    if "segmentation" not in annotation:
        checker.fail(prefix + "segmentation", "missing")
    _check_segmentation(checker, annotation["segmentation"], prefix + "segmentation", size)
    for key, check, expected in _ANNOTATION_FIELDS:
        checker.require(annotation, key, prefix, check, expected)
    for key in PROVENANCE_KEYS:
        if key in annotation:
            check, expected = _PROVENANCE_FIELDS[key]
            checker.require(annotation, key, prefix, check, expected)
    return ann_id


def validate_record(record: Any, where: str = "") -> dict:
    """Check a record against the SA-1B schema (plus our optional provenance fields).

    Checks types, required keys, that every RLE has the image's size, bbox/crop_box have 4 numbers,
    areas are ints >= 0, annotation ids are unique and provenance values are well-formed. It does not
    decode masks, so it is cheap enough for every sample a loader reads.

    Arguments:
        record: the parsed JSON.
        where: where the record came from (e.g. ``shard-000003.tar:sa_1``), prefixed to messages.
    Returns:
        The record, unchanged.
    Raises:
        RecordError: naming the image and the field, e.g. ``image 'sa_1' annotations[3].segmentation.size:
            [10, 12] differs from the image's [12, 10]``.
    """
    checker = _Checker(where)
    if not isinstance(record, dict):
        checker.fail("record", f"expected an object, got {_type_name(record)}")
    if "image" not in record:
        checker.fail("image", "missing")
    height, width = _check_image(checker, record["image"])
    annotations = checker.require(record, "annotations", "", lambda v: isinstance(v, list), "a list")
    seen_ids = set()
    for i, annotation in enumerate(annotations):
        ann_id = _check_annotation(checker, annotation, f"annotations[{i}]", [height, width])
        if ann_id in seen_ids:
            checker.fail(f"annotations[{i}].id", f"duplicate id {ann_id!r}")
        seen_ids.add(ann_id)
    return record
