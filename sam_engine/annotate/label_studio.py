"""People in the loop through Label Studio: SA-1B shards <-> Label Studio's own JSON with brush masks.

    export_label_studio(shards, "to_people/")   # to_people/images/*, tasks.json, label_config.xml
    # ... import tasks.json into a Label Studio project set up with label_config.xml, correct, export JSON ...
    import_label_studio("export.json", shards, "shards/stage2_manual", stage=2)

**Export.** Each sample is one task: ``data.image`` the image's path under ``images/`` (prefixed with
``image_prefix``, e.g. Label Studio's local-files URL), beside it ``sam_engine_key``, ``width`` and
``height`` (Label Studio keeps task data and exports it back); its masks are one prediction (pre-annotation)
of ``brushlabels`` results, each a brush RLE (:mod:`sam_engine.annotate.brush_rle`, exact, holes kept) labelled
with its ``category_name`` or ``object``, scored by its ``predicted_iou``. ``label_config.xml`` is the
labelling interface that reads them (one ``BrushLabels`` with every label used).

**Import.** Label Studio's JSON export (a list of tasks): of each task, the last annotation not cancelled,
its ``brushlabels`` results decoded to masks. Tasks are matched to the pool as COCO images are
(:func:`sam_engine.annotate.coco_bridge.import_corrections`): by ``sam_engine_key``, else by file name, where a
Label Studio upload's ``<8 hex digits>-`` prefix is dropped (``3f2a1b9c-img0.png`` is ``img0.png``), else by
stem. A label becomes the mask's ``category_name`` (``category_id`` 1 for ``object``, then 2, 3 ... in the order
labels appear). The image's size is the task's ``height``/``width`` (our export's), else its first result's.
Skipped and reported in ``import_report.json``: results of another size than the image, or whose RLE does not
decode to it, results of an image over 10^8 pixels (never allocated), tasks without a size, besides what the
COCO path skips (an image of another size than the pool's, ...).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from xml.sax.saxutils import quoteattr

from pycocotools import mask as mask_utils

from sam_engine.annotate.brush_rle import BrushRleError, decode_brush, encode_brush
from sam_engine.annotate.coco_bridge import (
    CATEGORY,
    IMAGES_DIR,
    KEY_FIELD,
    check_stage,
    exported_samples,
    import_corrections,
)
from sam_engine.data.importers.base import DEFAULT_MAX_PIXELS
from sam_engine.data.records import decode_masks
from sam_engine.utils.atomic_files import write_bytes_atomic
from sam_engine.utils.json_input import parse_json

log = logging.getLogger(__name__)

TASKS_FILE = "tasks.json"
CONFIG_FILE = "label_config.xml"
FROM_NAME, TO_NAME = "label", "image"
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


# --- export -----------------------------------------------------------------------------------


def _brush_result(mask, index: int, label: str, height: int, width: int, score: float | None) -> dict:
    result = {
        "id": f"m{index}", "type": "brushlabels", "from_name": FROM_NAME, "to_name": TO_NAME,
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"format": "rle", "rle": encode_brush(mask), "brushlabels": [label]},
    }
    return result if score is None else {**result, "score": score}


def export_label_studio(
    shards: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    sources: tuple[str, ...] | None = None,
    image_prefix: str = "",
) -> Path:
    """Export the samples of shards as Label Studio tasks with brush pre-annotations (module docstring).

    Arguments:
        shards: anything ``list_shards`` takes.
        out_dir: receives ``images/``, ``tasks.json`` and ``label_config.xml``.
        sources: only annotations of these provenances (``("auto",)``: the model's); None: all.
        image_prefix: put before ``images/<file>`` in ``data.image`` (where Label Studio serves them from).
    Returns:
        The path of ``tasks.json``.
    """
    out_dir = Path(out_dir)
    skipped: list[dict] = []

    def skip(source: str, kind: str, reason: str) -> None:
        log.warning("not exported %s [%s]: %s", source, kind, reason)
        skipped.append({"source": source, "kind": kind, "reason": reason})

    tasks, labels = [], {CATEGORY["name"]}
    for sample, name, exported in exported_samples(shards, out_dir, sources, skip):
        height, width = sample.record["image"]["height"], sample.record["image"]["width"]
        results = []
        for i, annotation in enumerate(exported):  # one mask decoded at a time: a large image's masks stay small
            mask = decode_masks([annotation["segmentation"]], size=(height, width))[0]
            label = annotation.get("category_name") or CATEGORY["name"]
            labels.add(label)
            results.append(_brush_result(mask, i, label, height, width, annotation.get("predicted_iou")))
        tasks.append({
            "data": {"image": f"{image_prefix}{IMAGES_DIR}/{name}", KEY_FIELD: sample.key,
                     "width": width, "height": height},
            "predictions": [{"model_version": "sam_engine", "result": results}],
        })
    label_xml = "".join(f"<Label value={quoteattr(label)}/>" for label in sorted(labels))
    config = (f'<View><Image name="{TO_NAME}" value="$image"/>'
              f'<BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">{label_xml}</BrushLabels></View>\n')
    write_bytes_atomic(out_dir / CONFIG_FILE, config.encode("utf-8"))
    path = out_dir / TASKS_FILE
    write_bytes_atomic(path, json.dumps(tasks, separators=(",", ":")).encode("utf-8"))
    log.info("exported %d tasks to %s, skipped %d", len(tasks), path, len(skipped))
    return path


# --- import -----------------------------------------------------------------------------------


def _final_results(task: dict) -> list:
    """The results of a task's last annotation that was not cancelled ([] if none)."""
    done = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    results = done[-1].get("result") if done else []
    return results if isinstance(results, list) else []


def _file_name(task: dict) -> str:
    """The image's file name, a Label Studio upload's ``<8 hex>-`` prefix dropped."""
    name = PurePosixPath(str(task.get("data", {}).get("image", "")).split("?d=")[-1]).name
    return _UPLOAD_PREFIX.sub("", name)


def label_studio_to_coco(tasks: list, where: str) -> tuple[dict, list[tuple[str, str, str]]]:
    """Label Studio's exported tasks -> a COCO dataset (compressed RLE masks) and the results left out.

    Raises:
        ValueError: ``tasks`` is not a list (naming ``where``).
    """
    if not isinstance(tasks, list):
        raise ValueError(f"{where}: expected Label Studio's JSON export, a list of tasks")
    images, annotations, skipped, categories = [], [], [], {CATEGORY["name"]: CATEGORY["id"]}
    for t, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            images.append({})  # the COCO path reports it as a bad image entry
            continue
        data, results = task["data"], _final_results(task)
        brushes = [r for r in results if isinstance(r, dict) and r.get("type") == "brushlabels"]
        height, width = data.get("height"), data.get("width")  # our export's; else the first result's
        if height is None and brushes:
            height, width = brushes[0].get("original_height"), brushes[0].get("original_width")
        entry = {"id": t + 1, "file_name": _file_name(task), "height": height, "width": width}
        if isinstance(data.get(KEY_FIELD), str):
            entry[KEY_FIELD] = data[KEY_FIELD]
        images.append(entry)
        for r, result in enumerate(brushes):
            source = f"{where}: task {t} result {r}"
            value = result.get("value") if isinstance(result.get("value"), dict) else {}
            try:
                if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (height, width)):
                    raise BrushRleError(f"no valid image size: {height!r} x {width!r}")
                if height * width > DEFAULT_MAX_PIXELS:
                    raise BrushRleError(f"an image of {height}x{width} is over {DEFAULT_MAX_PIXELS} pixels")
                if (result.get("original_height"), result.get("original_width")) != (height, width):
                    raise BrushRleError(f"the brush is {result.get('original_height')!r}x"
                                        f"{result.get('original_width')!r}, the image {height}x{width}")
                mask = decode_brush(value.get("rle"), height, width)
            except BrushRleError as exc:
                skipped.append((source, "bad_brush", f"{source}: {exc}"))
                continue
            labels = value.get("brushlabels")
            label = str(labels[0]) if isinstance(labels, list) and labels else CATEGORY["name"]
            category = categories.setdefault(label, len(categories) + 1)
            rle = mask_utils.encode(mask[:, :, None].astype("uint8", order="F"))[0]
            annotations.append({"id": len(annotations) + 1, "image_id": t + 1, "category_id": category,
                                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
    dataset = {"images": images, "annotations": annotations,
               "categories": [{"id": i, "name": n} for n, i in categories.items()]}
    return dataset, skipped


def import_label_studio(
    tasks_json: str | Path,
    pool: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    stage: int,
    prefix: str = "corrected",
    shard_size: int = 1000,
) -> dict:
    """Write people's corrections from Label Studio's JSON export as shards of manual masks (module docstring).

    Returns:
        The import report (``import_report.json``), as :func:`~sam_engine.annotate.coco_bridge.import_corrections`.
    Raises:
        ValueError: the file is unreadable, not JSON or not a list of tasks, naming it; or a bad ``stage``.
    """
    check_stage(stage)
    try:
        tasks = parse_json(Path(tasks_json).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{tasks_json}: cannot read Label Studio's export: {exc}") from exc
    dataset, skipped = label_studio_to_coco(tasks, str(tasks_json))
    return import_corrections(dataset, str(tasks_json), pool, out_dir, stage=stage, prefix=prefix,
                              shard_size=shard_size, skipped=skipped)
