"""People in the loop: SA-1B shards <-> a COCO instances file that CVAT ("COCO 1.0") and Label Studio read.

In stage 2 the model pre-fills confident masks and people annotate what is missing. The bridge::

    export_coco(shards, "to_people/", sources=("auto",))     # to_people/images/*, to_people/annotations.json
    # ... people correct it in CVAT / Label Studio and export COCO again ...
    import_coco_corrections("corrected.json", shards, "shards/stage2_manual", stage=2)

**Export.** Each sample becomes ``images/<file>``, its bytes exactly as in the shard, named after the
record's ``image.file_name`` (directories dropped, characters other than letters, digits, ``._-``
replaced by ``_``), or ``<key>.<ext>`` when that name is taken or its extension is not the image's.
Each ``images[i]`` entry (``id`` 1, 2, ...) carries the sample key (``sam_engine_key``) and the
record's ``image_id`` (``sam_engine_image_id``). Each annotation has COCO's fields (``id`` unique in the
file, ``category_id`` the annotation's own or 1, SA-1B's single category ``object``; ``categories`` lists
every id used, named as the shards name them, ``category_name``), ``segmentation`` the record's compressed RLE,
``area`` and ``bbox`` as pycocotools computes them) and, beside them, every other field of the SA-1B
annotation (``predicted_iou``, ``stability_score``, ``point_coords``, ``crop_box``, provenance ``source``,
``stage``...) with its SA-1B ``id`` as ``sam_engine_id``. The JSON is written to a temporary file and
renamed, so a killed export leaves the previous file or none, never half of one. Samples and annotations
that cannot be exported are skipped, logged and listed in ``info.sam_engine_export.skipped``.

**iscrowd: 1 for people, 0 for evaluation.** COCO stores an object as polygons with ``iscrowd: 0`` and
RLE with ``iscrowd: 1``; tools follow that convention. CVAT's importer keeps an RLE annotation as a mask
(its ``is_crowd`` attribute set) and its exporter writes ``is_crowd`` masks back as RLE, whereas a
non-crowd object is written as polygons, which do not reproduce a mask pixel for pixel. So the export
for people (the default) sets ``iscrowd: 1``: an untouched mask comes back exactly. COCOeval, though,
treats crowd regions as "ignore" areas, so a file meant as ground truth for evaluation
(``evaluation=True``) sets ``iscrowd: 0`` on the same RLE masks, which COCOeval and pycocotools read as
objects (AP 1.0 against themselves). ``segmentation="polygons"`` writes each mask as COCO polygons
instead (``iscrowd: 0``, what tools that draw polygons expect): the outline of each of its parts, traced
so that pycocotools rasterises every pixel of the part back (:func:`mask_polygons`); holes are lost, as
COCO polygons cannot have them. Either way the flag means nothing here beyond the encoding: the
file says it is ours (``info.sam_engine_export``), and both this module's import and the COCO importer
(:mod:`sam_engine.data.importers.coco`) read every annotation of such a file as an object.

**Import.** A corrected file's images are matched to the pool's samples by ``sam_engine_key`` when the
entry has one (CVAT drops unknown fields), else by file name (the exported name, the record's file name
or ``<key>.<ext>``), else by file stem (the key); width and height must agree with the pool's record.
Masks may be polygons, uncompressed or compressed RLE (read as ``COCO.annToRLE`` does, see
:func:`sam_engine.data.importers.coco.coco_rle`). Each matched image is written to the output shards (atomic
shards and manifest) with the pool's image bytes and a record of its corrected masks, ``source="manual"``,
``stage=stage``, ``predicted_iou``/``stability_score`` from the file when present (else 1.0, a human mask).
Each mask keeps its ``category_id`` (and, when the file's ``categories`` name it, ``category_name``).
Skipped, counted and reported in ``<out_dir>/import_report.json``: malformed image entries, images not
in the pool, images whose size differs from the pool's, annotations that are malformed, of another size,
empty or of an unknown image, and bad pool samples. An image whose masks were all deleted is written
with no annotation. A rerun into the same ``out_dir`` resumes: samples already there are not rewritten,
so a new round of corrections goes to a new directory.
"""

from __future__ import annotations

import json
import logging
import math
import re
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from sam_engine.data.importers.base import ImportSink, PreparedImage, SkipSample
from sam_engine.data.importers.coco import (
    CocoImage,
    category_fields,
    category_names,
    coco_rle,
    image_entry,
    load_coco_json,
)
from sam_engine.data.records import (
    MASK_DECODE_BYTES,
    SOURCES,
    decode_masks,
    make_annotations,
    make_record,
    mask_areas,
    rle_problem,
)
from sam_engine.data.samples import Sample, good_samples
from sam_engine.utils.atomic_files import write_atomic, write_bytes_atomic

log = logging.getLogger(__name__)

COCO_FILE = "annotations.json"
IMAGES_DIR = "images"
CVAT_COCO_FILE = "annotations/instances_default.json"
CVAT_ZIP = "cvat_coco.zip"
LAYOUTS = ("coco", "cvat")
SEGMENTATIONS = ("rle", "polygons")
CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}
KEY_FIELD = "sam_engine_key"
IMAGE_ID_FIELD = "sam_engine_image_id"
ANNOTATION_ID_FIELD = "sam_engine_id"
_COCO_FIELDS = ("id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")

Skip = Callable[[str, str, str], None]
"""Called as ``skip(source, kind, reason)`` for each thing left out."""


# --- reading the pool -------------------------------------------------------------------------


def recorded_samples(source: str | Path | Sequence[str | Path], skip: Skip) -> Iterator[Sample]:
    """The good samples of the shards of ``source`` (anything ``list_shards`` takes), in order.

    A bad sample or unreadable shard (``data.samples.good_samples``), a key repeated across shards and a
    sample without a record are passed to ``skip`` (kinds of :class:`~sam_engine.data.samples.Skipped`,
    ``duplicate_key``, ``bad_record``) and left out.
    """
    seen: set[str] = set()
    for sample in good_samples(source, lambda skipped: skip(*skipped)):
        if sample.key in seen:
            skip(sample.source, "duplicate_key", f"{sample.source}: key {sample.key!r} was already read")
            continue
        seen.add(sample.key)
        if sample.record is None:
            skip(sample.source, "bad_record", f"{sample.source}: no SA-1B record (json)")
            continue
        yield sample


def safe_file_name(file_name: str) -> str:
    """The last component of a path, characters other than letters, digits, ``._-`` replaced by ``_``,
    no leading dot (``a/b c.jpg`` -> ``b_c.jpg``)."""
    return _UNSAFE_CHARS.sub("_", PurePosixPath(file_name.replace("\\", "/")).name).lstrip(".")


# --- export -----------------------------------------------------------------------------------


def _export_name(sample: Sample, used: set[str]) -> str | None:
    """The sample's file name under ``images/`` (see the module docstring), None if both choices are taken.

    ``used`` holds the lower-cased names given so far (case-insensitive file systems); the name is added.
    """
    suffixes = (".png",) if sample.ext == "png" else (".jpg", ".jpeg")
    for name in (safe_file_name(sample.record["image"]["file_name"]), f"{sample.key}.{sample.ext}"):
        stem_ok = len(name) > len(PurePosixPath(name).suffix)
        if name.lower().endswith(suffixes) and stem_ok and name.lower() not in used:
            used.add(name.lower())
            return name
    return None


def exported_samples(
    shards: str | Path | Sequence[str | Path], out_dir: Path, sources: tuple[str, ...] | None, skip: Skip
) -> Iterator[tuple[Sample, str, list[dict]]]:
    """What every export for people writes: each good sample's image under ``out_dir/images/<name>``
    (:func:`_export_name`), yielded with that name and its annotations whose ``source`` is in ``sources``
    (all if None) and whose RLE covers the image. Samples without a free name and bad annotations are passed
    to ``skip`` and left out.

    Raises:
        ValueError: ``sources`` names an unknown source.
    """
    if sources is not None and not set(sources) <= set(SOURCES):
        raise ValueError(f"sources must be a subset of {SOURCES}, got {sources!r}")
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for sample in recorded_samples(shards, skip):
        name = _export_name(sample, used)
        if name is None:
            skip(sample.source, "name_collision", f"{sample.source}: its file names are taken by other images")
            continue
        height, width = sample.record["image"]["height"], sample.record["image"]["width"]
        kept = []
        for i, annotation in enumerate(sample.record["annotations"]):
            if sources is not None and annotation.get("source") not in sources:
                continue
            problem = rle_problem(annotation["segmentation"], height, width)
            if problem is not None:
                where = f"{sample.source}: annotations[{i}]"
                skip(where, problem[0], f"{where}: {problem[1]}")
                continue
            kept.append(annotation)
        write_bytes_atomic(out_dir / IMAGES_DIR / name, sample.data)
        yield sample, name, kept


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons of a mask (H x W bool): one ``[x0, y0, x1, y1, ...]`` per connected part, in
    pycocotools' coordinates (pixel ``(x, y)`` spans ``[x, x + 1)``); [] for an empty mask.

    The outer outline of each part is traced on the mask's box doubled in size, so that every vertex lies a
    quarter pixel inside the part's pixel edges: pycocotools then rasterises each pixel of the part back,
    and none outside it. Holes are filled (COCO polygons cannot have them).
    """
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return []
    top, left = rows[0], cols[0]
    box = mask[top: rows[-1] + 1, left: cols[-1] + 1].astype(np.uint8)
    doubled = box.repeat(2, axis=0).repeat(2, axis=1)
    contours, _ = cv2.findContours(doubled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [((contour.reshape(-1, 2) + 0.5) / 2 + (left, top)).ravel().tolist() for contour in contours]


def _coco_annotations(sample: Sample, annotations: list[dict], image_id: int, first_id: int, iscrowd: int,
                      polygons: bool, names: dict[int, str], skip: Skip) -> list[dict]:
    """The COCO annotations of a sample's exported SA-1B ``annotations``, their masks as the record's RLE or,
    with ``polygons``, as COCO polygons (``area`` and ``bbox`` then those of the polygons' pixels).

    An annotation whose ``category_id`` is not an integer is passed to ``skip`` and left out. The category
    names the annotations carry are added to ``names``.
    """
    kept = []
    for annotation in annotations:
        where = f"{sample.source}: annotation {annotation.get('id')!r}"
        try:
            category_fields(annotation, {}, where)
        except SkipSample as exc:
            skip(where, exc.kind, str(exc))
            continue
        if "category_id" in annotation and isinstance(annotation.get("category_name"), str):
            names.setdefault(annotation["category_id"], annotation["category_name"])
        kept.append(annotation)
    segmentations = [a["segmentation"] for a in kept]
    if polygons:
        height, width = sample.record["image"]["height"], sample.record["image"]["width"]
        segmentations = [mask_polygons(mask_utils.decode(rle).astype(bool)) for rle in segmentations]
        rles = [mask_utils.merge(mask_utils.frPyObjects(polygon, height, width)) for polygon in segmentations]
    else:
        rles = segmentations
    areas = mask_areas(rles).tolist()
    boxes = mask_utils.toBbox(rles).tolist() if kept else []
    return [
        {
            "id": first_id + i,
            "image_id": image_id,
            "category_id": annotation.get("category_id", CATEGORY["id"]),
            "segmentation": segmentations[i],
            "area": areas[i],
            "bbox": boxes[i],
            "iscrowd": iscrowd,  # see the module docstring
            ANNOTATION_ID_FIELD: annotation["id"],
            **{k: v for k, v in annotation.items() if k not in _COCO_FIELDS and k != "category_name"},
        }
        for i, annotation in enumerate(kept)
    ]


def _categories(annotations: list[dict], names: dict[int, str]) -> list[dict]:
    """COCO's ``categories``: every id the annotations use (always 1, ``object``, SA-1B's one class), named
    as the shards named them, else ``category_<id>``."""
    used = {CATEGORY["id"]} | {a["category_id"] for a in annotations}
    return [{"id": i, "name": names.get(i, CATEGORY["name"] if i == CATEGORY["id"] else f"category_{i}"),
             "supercategory": CATEGORY["supercategory"]} for i in sorted(used)]


def export_coco(
    shards: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    sources: tuple[str, ...] | None = None,
    evaluation: bool = False,
    layout: str = "coco",
    segmentation: str = "rle",
) -> Path:
    """Export the samples of shards as a COCO instances file and its image folder (see the module docstring).

    Arguments:
        shards: a shard directory, pattern, tar or a list of them (anything ``list_shards`` takes).
        out_dir: receives ``images/<file>`` and ``annotations.json`` (created if needed).
        sources: export only annotations whose provenance ``source`` is one of these (e.g. ``("auto",)``
            for the model's pre-filled masks); an annotation without ``source`` then is left out. None:
            all. Every image is exported, with no annotation if none passes.
        evaluation: ``iscrowd: 0`` (ground truth for COCOeval) instead of ``iscrowd: 1`` (masks that come
            back exactly from CVAT); see the module docstring.
        layout: ``coco``: ``annotations.json`` beside ``images/``; ``cvat``: CVAT's "COCO 1.0" layout,
            ``annotations/instances_default.json`` beside ``images/``, and both zipped in ``cvat_coco.zip``
            (what CVAT's "Import dataset" and "Upload annotations" take).
        segmentation: ``rle``: the records' masks, exact; ``polygons``: COCO polygons, ``iscrowd: 0``
            whatever ``evaluation`` says (holes lost; see the module docstring).
    Returns:
        The path of the JSON.
    Raises:
        ValueError: ``sources`` names an unknown source, or ``layout`` or ``segmentation`` is not a choice;
            FileNotFoundError / ValueError: no such shards.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"segmentation must be one of {SEGMENTATIONS}, got {segmentation!r}")
    polygons = segmentation == "polygons"
    iscrowd = int(not (evaluation or polygons))
    out_dir = Path(out_dir)
    skipped = []

    def skip(source: str, kind: str, reason: str) -> None:
        log.warning("not exported %s [%s]: %s", source, kind, reason)
        skipped.append({"source": source, "kind": kind, "reason": reason})

    images, annotations, names = [], [], {}
    for sample, name, exported in exported_samples(shards, out_dir, sources, skip):
        image = sample.record["image"]
        image_id = len(images) + 1
        annotations += _coco_annotations(sample, exported, image_id, len(annotations) + 1, iscrowd, polygons,
                                         names, skip)
        images.append(
            {
                "id": image_id,
                "file_name": name,
                "width": image["width"],
                "height": image["height"],
                KEY_FIELD: sample.key,
                IMAGE_ID_FIELD: image["image_id"],
            }
        )
    is_list = isinstance(shards, Sequence) and not isinstance(shards, str)
    info = {
        "description": "SA-1B records exported by sam_engine",
        "sam_engine_export": {
            "shards": [str(s) for s in shards] if is_list else str(shards),
            "sources": None if sources is None else list(sources),
            "iscrowd": iscrowd,  # the encoding's flag, not a crowd: every mask is one object
            "segmentation": segmentation,
            "images": len(images),
            "annotations": len(annotations),
            "skipped": skipped,
        },
    }
    coco = {"info": info, "licenses": [], "images": images, "annotations": annotations,
            "categories": _categories(annotations, names)}
    path = out_dir / (CVAT_COCO_FILE if layout == "cvat" else COCO_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, json.dumps(coco, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if layout == "cvat":
        write_atomic(out_dir / CVAT_ZIP, lambda f: _zip_tree(f, out_dir, [CVAT_COCO_FILE] + [
            f"{IMAGES_DIR}/{image['file_name']}" for image in images]), binary=True)
    log.info("exported %d images, %d annotations, skipped %d to %s", len(images), len(annotations), len(skipped), path)
    return path


def _zip_tree(file, root: Path, members: list[str]) -> None:
    """Write a zip of the ``members`` (paths relative to ``root``) to the open binary ``file``; images are
    stored, not compressed (PNG and JPEG are compressed already)."""
    with zipfile.ZipFile(file, "w") as archive:
        for member in members:
            compression = zipfile.ZIP_DEFLATED if member.endswith(".json") else zipfile.ZIP_STORED
            archive.write(root / member, member, compress_type=compression)


# --- import -----------------------------------------------------------------------------------


class _CocoImages:
    """The image entries of a corrected COCO file, indexed for matching pool samples (each matched once)."""

    def __init__(self, dataset: dict, where: str, skip: Skip):
        self.entries: dict[int | str, tuple[CocoImage, str]] = {}  # COCO id -> (entry, where)
        self.by_key: dict[str, int | str] = {}
        self.by_name: dict[str, int | str] = {}
        self.by_stem: dict[str, int | str] = {}
        self.matched: dict[int | str, str] = {}  # COCO id -> pool key
        for i, raw in enumerate(dataset["images"]):
            source = f"{where}: images[{i}]"
            try:
                self._add(raw, source)
            except SkipSample as exc:
                skip(source, exc.kind, str(exc))

    def _add(self, raw: object, where: str) -> None:
        entry = image_entry(raw, where)
        if entry.id in self.entries:
            raise SkipSample("duplicate_image_id", f"{where}: image id {entry.id!r} appears twice")
        key = raw.get(KEY_FIELD)
        name = PurePosixPath(entry.file_name.replace("\\", "/")).name
        if isinstance(key, str) and key:
            indexes = [(self.by_key, key)]
        else:
            indexes = [(self.by_name, name), (self.by_stem, PurePosixPath(name).stem)]
        for index, value in indexes:
            if value in index:
                raise SkipSample("duplicate_image", f"{where}: {value!r} also names image {index[value]!r}")
        for index, value in indexes:
            index[value] = entry.id
        self.entries[entry.id] = (entry, where)

    def match(self, sample: Sample) -> CocoImage | None:
        """The entry of ``sample``: by key, else by file name, else by stem; None if none.

        Raises:
            SkipSample: ``ambiguous_match`` when the entry was matched by an earlier sample already.
        """
        names = {sample.record["image"]["file_name"], f"{sample.key}.{sample.ext}"}
        names |= {safe_file_name(n) for n in names} | {PurePosixPath(n).name for n in names}
        candidates = [self.by_key.get(sample.key)]
        candidates += [self.by_name.get(n) for n in sorted(names)]
        candidates += [self.by_stem.get(s) for s in sorted({sample.key} | {PurePosixPath(n).stem for n in names})]
        image_id = next((c for c in candidates if c is not None), None)
        if image_id is None:
            return None
        if image_id in self.matched:
            raise SkipSample(
                "ambiguous_match",
                f"{sample.source}: matches COCO image {image_id!r}, already matched to {self.matched[image_id]!r}",
            )
        self.matched[image_id] = sample.key
        return self.entries[image_id][0]

    def unmatched(self) -> list[tuple[CocoImage, str]]:
        """The entries (with where) no pool sample matched."""
        return [v for image_id, v in self.entries.items() if image_id not in self.matched]


def _score(annotation: dict, name: str, where: str) -> float:
    """``annotation[name]`` as a float, 1.0 (a human mask) when absent; SkipSample ``bad_annotation`` if not a
    finite number."""
    value = annotation.get(name)
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SkipSample("bad_annotation", f"{where}: {name} is not a finite number: {value!r:.40}")
    return float(value)


def manual_annotations(
    annotations: list[dict], height: int, width: int, *, stage: int, where: str, skip: Skip,
    names: dict[int, str] | None = None,
) -> list[dict]:
    """SA-1B annotations (``source="manual"``, ``stage``) of one image's corrected COCO annotations.

    Masks are read as ``COCO.annToRLE`` reads them and decoded ``MASK_DECODE_BYTES`` at a time. An annotation
    whose segmentation is malformed, of another size or empty, or whose scores are not numbers, is passed
    to ``skip`` and left out.

    Arguments:
        annotations: the image's COCO annotation dicts.
        height, width: the image size.
        stage: the provenance ``stage``.
        where: names the image in messages.
        skip: called as ``skip(source, kind, reason)``.
        names: the file's category names by id; each mask keeps its ``category_id`` (and that name).
    Returns:
        The annotations, ids 0, 1, ... in the file's order.
    """
    sources, rles, scores, categories = [], [], [], []
    for annotation in annotations:
        source = f"{where}: annotation {annotation.get('id')!r}"
        try:
            rle = coco_rle(annotation.get("segmentation"), height, width, source)
            score = [_score(annotation, name, source) for name in ("predicted_iou", "stability_score")]
            category = category_fields(annotation, names or {}, source)
        except SkipSample as exc:
            skip(source, exc.kind, str(exc))
            continue
        sources.append(source)
        rles.append(rle)
        scores.append(score)
        categories.append(category)
    result = []
    step = max(1, MASK_DECODE_BYTES // (height * width))
    for start in range(0, len(rles), step):
        masks = decode_masks(rles[start : start + step])
        nonempty = masks.any(axis=(1, 2))
        for source, ok in zip(sources[start : start + step], nonempty, strict=True):
            if not ok:
                skip(source, "empty_mask", f"{source}: the mask has no pixel")
        chunk_scores = np.asarray(scores[start : start + step]).reshape(-1, 2)[nonempty]
        made = make_annotations(
            masks[nonempty],
            start_id=len(result),
            predicted_iou=chunk_scores[:, 0],
            stability_score=chunk_scores[:, 1],
            provenance={"source": "manual", "stage": stage},
        )
        kept_categories = [c for c, ok in zip(categories[start : start + step], nonempty, strict=True) if ok]
        result += [{**annotation, **category} for annotation, category in zip(made, kept_categories, strict=True)]
    return result


def check_stage(stage: object) -> None:
    """Raises ValueError unless ``stage`` (a mask's provenance) is an int >= 0."""
    if isinstance(stage, bool) or not isinstance(stage, int) or stage < 0:
        raise ValueError(f"stage must be an int >= 0, got {stage!r}")


def import_coco_corrections(
    coco_json: str | Path,
    pool: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    stage: int,
    prefix: str = "corrected",
    shard_size: int = 1000,
) -> dict:
    """Write the people's corrections of a COCO file as shards of manual masks (see the module docstring).

    Arguments:
        coco_json: the COCO instances file exported by the annotation tool.
        pool: the shards holding the images (usually those given to :func:`export_coco`).
        out_dir: the output shard directory (a rerun resumes it).
        stage: the data-engine stage recorded in each mask's provenance.
        prefix, shard_size: shard name prefix and samples per shard.
    Returns:
        The report (``ImportReport.to_dict``: counts, counts per kind, every skip with its reason), also
        written to ``<out_dir>/import_report.json``.
    Raises:
        ValueError: ``coco_json`` is unreadable, not JSON or has no ``images`` list (naming it), or
            ``stage`` is not an int >= 0.
    """
    check_stage(stage)  # before reading: a bad call fails at once
    return import_corrections(load_coco_json(coco_json), str(coco_json), pool, out_dir, stage=stage, prefix=prefix,
                              shard_size=shard_size)


def import_corrections(
    dataset: dict,
    where: str,
    pool: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    stage: int,
    prefix: str = "corrected",
    shard_size: int = 1000,
    skipped: Sequence[tuple[str, str, str]] = (),
) -> dict:
    """:func:`import_coco_corrections` of a COCO dataset already read from ``where`` (another tool's file
    converted to COCO); ``skipped``: ``(source, kind, reason)`` of annotations its conversion left out,
    reported with the rest.

    Raises:
        ValueError: ``stage`` is not an int >= 0.
    """
    check_stage(stage)
    names = category_names(dataset)
    with ImportSink(out_dir, shard_size=shard_size, prefix=prefix) as sink:
        for skip in skipped:
            sink.report.skip_annotation(*skip)
        images = _CocoImages(dataset, where, sink.report.skip)
        by_image = defaultdict(list)
        for i, annotation in enumerate(dataset["annotations"]):
            source = f"{where}: annotations[{i}]"
            if not isinstance(annotation, dict):
                sink.report.skip_annotation(source, "bad_annotation", f"{source}: expected an object")
            elif annotation.get("image_id") not in images.entries:
                reason = f"{source}: image_id {annotation.get('image_id')!r} is not a valid image of the file"
                sink.report.skip_annotation(source, "unknown_image", reason)
            else:
                by_image[annotation["image_id"]].append(annotation)
        for sample in recorded_samples(pool, sink.report.skip):
            with sink.guard(sample.source):
                entry = images.match(sample)
                if entry is not None and not sink.is_done(sample.key):
                    _import_sample(sink, sample, entry, by_image[entry.id], stage, names)
        for entry, entry_where in images.unmatched():
            sink.report.skip(entry_where, "not_in_pool",
                             f"{entry_where}: {entry.file_name!r} matches no sample of {pool}")
    return sink.report.to_dict()


def _import_sample(sink: ImportSink, sample: Sample, entry: CocoImage, annotations: list, stage: int,
                   names: dict[int, str]) -> None:
    """Write one matched sample with its corrected masks (runs inside ``sink.guard``)."""
    image = sample.record["image"]
    if (entry.height, entry.width) != (image["height"], image["width"]):
        raise SkipSample(
            "size_mismatch",
            f"{sample.source}: the pool's image is {image['width']}x{image['height']}, "
            f"COCO image {entry.id!r} says {entry.width}x{entry.height}",
        )
    converted = manual_annotations(
        annotations, entry.height, entry.width, stage=stage, where=sample.source, skip=sink.report.skip_annotation,
        names=names,
    )
    record = make_record(image["image_id"], image["width"], image["height"], image["file_name"], converted)
    sink.write(sample.key, PreparedImage(sample.data, sample.ext, image["height"], image["width"]), record)
