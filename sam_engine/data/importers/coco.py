"""COCO instances (JSON + image folder) -> SA-1B shards.

    python -m sam_engine.data.importers coco annotations=instances_val2017.json images=val2017/ out_dir=shards/coco

Masks are exactly what ``pycocotools.coco.COCO.annToMask`` gives: polygons through ``frPyObjects``
and ``merge``, uncompressed RLE through ``frPyObjects``, compressed RLE as is. Crowd regions
(``iscrowd: 1``, a group of objects under one mask) are left out by default, as SAM's data has no
such masks; ``crowd="include"`` keeps them with ``iscrowd: 1``. A file sam_engine exported
(``info.sam_engine_export``, :mod:`sam_engine.annotate.coco_bridge`) sets ``iscrowd`` only to name its
masks' encoding: every annotation of it is imported as an object (``iscrowd: 0``). Each annotation carries COCO's
``id``, ``category_id`` (with ``category_name`` when the file's ``categories`` name it) and ``iscrowd``;
the record's ``image_id`` and ``file_name`` are COCO's; the
sample key is the file name's path without extension (``000000397133``).

Skipped, each with its reason in ``<out_dir>/import_report.json``: images whose file is missing,
empty, undecodable, too large or of another size than the JSON says, malformed image entries, and
annotations (dropped from their image) with a malformed polygon (fewer than 3 points, an odd or
non-finite coordinate list: pycocotools would read a 4-number polygon as a box), an RLE of another
size or whose runs do not cover the image, a non-integer ``category_id``, an empty mask, an unknown
image id or, by default, a crowd flag.
"""

from __future__ import annotations

import json
import logging
import math
import re
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from pycocotools import mask as mask_utils

from sam_engine.data.importers.base import (
    DEFAULT_MAX_PIXELS,
    ImportReport,
    ImportSink,
    SkipSample,
    check_rle,
    key_from_path,
    prepare_image,
    read_file,
)
from sam_engine.data.records import make_annotations, make_record
from sam_engine.utils.json_input import parse_json
from sam_engine.utils.paths import check_output_is_not_input
from sam_engine.utils.progress import progress_of

log = logging.getLogger(__name__)

CROWD_CHOICES = ("exclude", "include")
MAX_COCO_JSON_BYTES = 4 << 30
"""Larger annotation files are refused before parsing (COCO's train2017 instances: 450 MB)."""
_CVAT_MEMBER = re.compile(r"annotations/instances_[^/]*\.json")


def category_names(dataset: dict) -> dict[int, str]:
    """``{id: name}`` of a COCO file's well-formed ``categories`` entries (others are ignored)."""
    names = {}
    for entry in dataset.get("categories") or []:
        if isinstance(entry, dict) and _is_category_id(entry.get("id")) and isinstance(entry.get("name"), str):
            names[entry["id"]] = entry["name"]
    return names


def category_fields(annotation: dict, names: dict[int, str], where: str) -> dict:
    """The SA-1B fields carrying a COCO annotation's category: ``category_id``, and ``category_name`` when
    the file names it; ``{}`` without a ``category_id``.

    Raises:
        SkipSample: ``bad_category``, the id is present but not an integer.
    """
    if "category_id" not in annotation:
        return {}
    category = annotation["category_id"]
    if not _is_category_id(category):
        raise SkipSample("bad_category", f"{where}: category_id is not an integer: {category!r:.40}")
    return {"category_id": category, **({"category_name": names[category]} if category in names else {})}


def _is_category_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _coco_bytes(path: Path) -> bytes:
    """The bytes of a COCO file, of the one ``annotations/instances_*.json`` of a directory, or of that
    member of a zip (CVAT's "COCO 1.0" export), read up to :data:`MAX_COCO_JSON_BYTES`."""
    if path.is_dir():
        found = sorted((path / "annotations").glob("instances_*.json"))
        if len(found) != 1:
            raise ValueError(f"{path}: expected one annotations/instances_*.json (CVAT's COCO 1.0 layout), "
                             f"found {len(found)}")
        path = found[0]
    if not zipfile.is_zipfile(path):
        if path.stat().st_size > MAX_COCO_JSON_BYTES:
            raise ValueError(f"{path}: larger than {MAX_COCO_JSON_BYTES} bytes")
        return path.read_bytes()
    try:
        with zipfile.ZipFile(path) as archive:
            found = [info for info in archive.infolist() if _CVAT_MEMBER.fullmatch(info.filename)]
            if len(found) != 1:
                raise ValueError(f"{path}: expected one annotations/instances_*.json in the zip (CVAT's COCO 1.0 "
                                 f"export), found {len(found)}")
            with archive.open(found[0]) as member:
                data = member.read(MAX_COCO_JSON_BYTES + 1)  # the declared size may lie: read at most this
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ValueError(f"{path}: a damaged zip: {exc}") from exc
    if len(data) > MAX_COCO_JSON_BYTES:
        raise ValueError(f"{path}: {found[0].filename} unpacks to more than {MAX_COCO_JSON_BYTES} bytes")
    return data


def load_coco_json(path: str | Path) -> dict:
    """Parse a COCO instances file: a JSON file, or a directory or zip in CVAT's "COCO 1.0" layout
    (``annotations/instances_default.json``).

    Returns:
        The JSON, with an ``images`` list and an ``annotations`` list (empty when absent).
    Raises:
        ValueError: unreadable, too large, not UTF-8, not JSON, or without an ``images`` list; naming ``path``.
    """
    try:
        text = _coco_bytes(Path(path)).decode("utf-8")
        dataset = parse_json(text)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read COCO annotations: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(dataset, dict) or not isinstance(dataset.get("images"), list):
        raise ValueError(f"{path}: expected an object with an 'images' list")
    annotations = dataset.setdefault("annotations", [])
    if not isinstance(annotations, list):
        raise ValueError(f"{path}: 'annotations' is not a list")
    return dataset


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_IMAGE_FIELDS = (
    ("id", lambda v: isinstance(v, (int, str)) and not isinstance(v, bool)),
    ("file_name", lambda v: isinstance(v, str) and v != ""),
    ("height", _is_positive_int),
    ("width", _is_positive_int),
)


class CocoImage(NamedTuple):
    """The fields of a COCO image entry that an import uses."""

    id: int | str
    file_name: str
    height: int
    width: int


def image_entry(entry: object, where: str) -> CocoImage:
    """The checked fields of a COCO image entry, or SkipSample ``bad_image_entry``."""
    if not isinstance(entry, dict):
        raise SkipSample("bad_image_entry", f"{where}: expected an object, got {type(entry).__name__}")
    for name, check in _IMAGE_FIELDS:
        if not check(entry.get(name)):
            raise SkipSample(
                "bad_image_entry", f"{where}: field {name!r} missing or invalid: {entry.get(name)!r:.60}"
            )
    return CocoImage(entry["id"], entry["file_name"], entry["height"], entry["width"])


def _polygons(segmentation: list, height: int, width: int, where: str) -> list[list[float]]:
    """Check polygons: each a flat list of at least 3 (x, y) pairs of finite numbers, within one image size
    of the image (x in [-width, 2 width], y in [-height, 2 height]).

    pycocotools rasterises a polygon in memory proportional to its perimeter and overflows an ``int`` on
    coordinates near 1e9 (a segmentation fault): a vertex that far out is an error of the file, not a shape.
    """
    if not segmentation:
        raise SkipSample("bad_segmentation", f"{where}: empty polygon list")
    for i, polygon in enumerate(segmentation):
        ok = isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0
        if not ok or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in polygon):
            raise SkipSample(
                "bad_segmentation", f"{where}: polygon {i} is not an even list of >= 6 finite numbers"
            )
        xs, ys = polygon[0::2], polygon[1::2]
        if min(xs) < -width or max(xs) > 2 * width or min(ys) < -height or max(ys) > 2 * height:
            raise SkipSample(
                "bad_segmentation", f"{where}: polygon {i} reaches ({max(xs, key=abs)}, {max(ys, key=abs)}), "
                f"farther than one image size outside the {width} x {height} image"
            )
    return segmentation


def coco_rle(segmentation: object, height: int, width: int, where: str) -> dict:
    """The RLE of a COCO segmentation, as ``COCO.annToRLE`` computes it for an ``height`` x ``width`` image.

    Raises:
        SkipSample: ``bad_segmentation`` (neither polygons nor RLE, malformed polygons), ``rle_size``
            or ``bad_rle`` (see :func:`~sam_engine.data.importers.base.check_rle`), naming ``where``.
    """
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(_polygons(segmentation, height, width, where), height, width))
    if not isinstance(segmentation, dict) or "counts" not in segmentation:
        raise SkipSample("bad_segmentation", f"{where}: segmentation is neither polygons nor an RLE")
    check_rle(segmentation, height, width, where)
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return {"size": [height, width], "counts": segmentation["counts"].encode("ascii")}


def coco_annotations(
    annotations: list[dict],
    height: int,
    width: int,
    *,
    include_crowd: bool,
    crowd_is_encoding: bool = False,
    categories: dict[int, str] | None = None,
    where: str,
    drop: Callable[[str, str, str], None],
) -> list[dict]:
    """SA-1B annotations of one image's COCO annotations (masks decoded and re-encoded in bulk).

    Arguments:
        annotations: the image's COCO annotation dicts.
        height, width: the image size from the COCO JSON.
        include_crowd: keep ``iscrowd: 1`` annotations.
        crowd_is_encoding: the file is sam_engine's export, whose ``iscrowd`` names the encoding only: keep
            every annotation, as an object.
        categories: the file's category names by id (:func:`category_names`), carried with each mask.
        where: names the image in messages.
        drop: called as ``drop(source, kind, reason)`` for each annotation left out.
    """
    kept, rles, fields = [], [], []
    for annotation in annotations:
        source = f"{where}: annotation {annotation.get('id')!r}"
        if annotation.get("iscrowd", 0) and not (include_crowd or crowd_is_encoding):
            drop(source, "crowd_excluded", f"{source}: iscrowd=1 (crowd=exclude)")
            continue
        try:
            category = category_fields(annotation, categories or {}, source)
            rles.append(coco_rle(annotation.get("segmentation"), height, width, source))
            kept.append(annotation)
            fields.append(category)
        except SkipSample as exc:
            drop(source, exc.kind, str(exc))
    if not rles:
        return []
    masks = mask_utils.decode(rles).transpose(2, 0, 1).view(bool)  # N x H x W
    nonempty = masks.any(axis=(1, 2))
    for annotation in (a for a, ok in zip(kept, nonempty, strict=True) if not ok):
        source = f"{where}: annotation {annotation.get('id')!r}"
        drop(source, "empty_mask", f"{source}: the mask has no pixel")
    kept = [(a, f) for a, f, ok in zip(kept, fields, nonempty, strict=True) if ok]
    result = make_annotations(masks[nonempty], provenance={"source": "seed"})
    for out, (annotation, category) in zip(result, kept, strict=True):
        out["id"] = annotation.get("id", out["id"])
        out["iscrowd"] = 0 if crowd_is_encoding else int(bool(annotation.get("iscrowd", 0)))
        out.update(category)
    return result


def import_coco(
    annotations: str | Path,
    images: str | Path,
    out_dir: str | Path,
    *,
    crowd: str = "exclude",
    shard_size: int = 1000,
    prefix: str = "shard",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImportReport:
    """Import a COCO instances file and its image folder into a shard directory.

    Arguments:
        annotations: the COCO JSON.
        images: the folder the JSON's ``file_name`` s are relative to.
        out_dir: the shard directory (resumed if it has shards already).
        crowd: ``exclude`` (default) or ``include`` crowd annotations.
        shard_size, prefix: see :class:`~sam_engine.data.importers.base.ImportSink`.
        max_pixels: larger images are skipped.
    Returns:
        The report (also in ``<out_dir>/import_report.json``).
    Raises:
        ValueError: the annotations file itself is unusable, ``crowd`` is not a choice, or ``out_dir`` is the
            images folder.
    """
    if crowd not in CROWD_CHOICES:
        raise ValueError(f"crowd must be one of {CROWD_CHOICES}, got {crowd!r}")
    check_output_is_not_input(images, out_dir, input_key="images", output_key="out_dir")
    dataset = load_coco_json(annotations)
    ours = isinstance(dataset.get("info"), dict) and "sam_engine_export" in dataset["info"]
    categories = category_names(dataset)
    images = Path(images)
    by_image = defaultdict(list)
    for annotation in dataset["annotations"]:
        by_image[annotation.get("image_id") if isinstance(annotation, dict) else None].append(annotation)
    with ImportSink(out_dir, shard_size=shard_size, prefix=prefix) as sink:
        known = set()
        for i, entry in enumerate(progress_of(dataset["images"], "imported images")):
            where = f"{annotations}: images[{i}]"
            try:
                image = image_entry(entry, where)
                if image.id in known:  # its annotations stay with the first entry of the id, as a COCO reader's
                    raise SkipSample("duplicate_image_id", f"{where}: image id {image.id!r} appears twice")
            except SkipSample as exc:
                sink.report.skip(where, exc.kind, str(exc))
                continue
            known.add(image.id)
            path = images / image.file_name
            with sink.guard(str(path)):
                _import_image(sink, path, images, image, by_image.get(image.id, []), crowd == "include", ours,
                              categories, max_pixels)
        for image_id in by_image.keys() - known:
            for annotation in by_image[image_id]:
                label = annotation.get("id") if isinstance(annotation, dict) else annotation
                source = f"{annotations}: annotation {label!r}"
                sink.report.skip_annotation(
                    source, "unknown_image", f"{source}: image_id {image_id!r} is not in images"
                )
    return sink.report


def _import_image(
    sink: ImportSink, path: Path, images: Path, entry: CocoImage, annotations: list, include_crowd: bool,
    crowd_is_encoding: bool, categories: dict[int, str], max_pixels: int,
) -> None:
    """Decode one COCO image (``path``, read only if it lies inside ``images``), convert its annotations and
    write the sample (runs inside ``sink.guard``)."""
    key = key_from_path(entry.file_name)
    if sink.is_done(key):
        return
    image = prepare_image(read_file(path, inside=images), str(path), max_pixels)
    if (image.height, image.width) != (entry.height, entry.width):
        raise SkipSample(
            "size_mismatch",
            f"{path}: the image is {image.width}x{image.height}, the JSON says {entry.width}x{entry.height}",
        )
    converted = coco_annotations(
        [a for a in annotations if isinstance(a, dict)],
        entry.height,
        entry.width,
        include_crowd=include_crowd,
        crowd_is_encoding=crowd_is_encoding,
        categories=categories,
        where=str(path),
        drop=sink.report.skip_annotation,
    )
    record = make_record(entry.id, entry.width, entry.height, entry.file_name, converted)
    sink.write(key, image, record)
