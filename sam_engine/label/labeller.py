"""Pseudo-labelling: input shards (or an image folder) -> output shards of automatic SA-1B annotations.

The unit of work is an *input shard* (:mod:`sam_engine.label.inputs`). Input shard ``NAME`` becomes
output shard ``NAME-000000.tar``, written whole or not at all (:class:`~sam_engine.data.shards.ShardWriter`:
temporary file, rename, manifest under a lock). So a task can be killed anywhere and rerun: finished
output shards are skipped, a half-written one is deleted and redone, and no image is written twice.

A SLURM array splits the input shards into ``num_tasks`` contiguous blocks; task ``task_index`` labels
its block (:func:`~sam_engine.label.inputs.task_block`). Each task writes
``<output>/summaries/task-NNNNNN.json`` after every shard: images, masks, skipped images and
unreadable shards with their reasons, seconds, and the masks' quality against the input records'
annotations when they have any (:class:`~sam_engine.metrics.proposals.ProposalQuality`).

Images whose short side exceeds ``max_short_side`` are resized to it first, as SA-1B's images were
(short side 1500): the output holds the resized image and masks of its size.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sam_engine.amg import SamAutomaticMaskGenerator
from sam_engine.data.images import ImageDecodeError, decode_image
from sam_engine.data.importers.base import SkipSample, key_from_path, prepare_image, read_file
from sam_engine.data.records import make_record
from sam_engine.data.samples import Sample, Skipped, UnreadableShard, shard_samples
from sam_engine.data.shards import MANIFEST, ShardWriter, read_manifest
from sam_engine.label.inputs import SUMMARY_DIR, InputShard, images_in
from sam_engine.metrics.proposals import ProposalQuality
from sam_engine.model.build import EXPORT_WEIGHTS
from sam_engine.utils.atomic_files import file_sha256, write_json_atomic
from sam_engine.utils.config_checks import is_int
from sam_engine.utils.progress import Progress

log = logging.getLogger(__name__)

def input_samples(shard: InputShard, root: Path | None = None) -> Iterator[Sample | Skipped]:
    """The samples of an input shard; a bad image or record comes as :class:`Skipped` instead.

    Raises:
        UnreadableShard: the tar cannot be read to its end (after yielding what came before).
    """
    if shard.url is not None:
        yield from shard_samples(shard.url)
        return
    for path in shard.files:
        relative = path.relative_to(root) if root is not None else Path(path.name)
        try:  # only regular files inside the folder: never a link out of it
            prepared = prepare_image(read_file(path, inside=root if root is not None else path.parent), str(path))
        except (OSError, ValueError, SkipSample) as exc:
            yield Skipped(str(path), "bad_image", str(exc))
            continue
        yield Sample(key_from_path(relative), prepared.data, prepared.ext, None, str(path))


def fit_short_side(image: np.ndarray, data: bytes, ext: str, max_short_side: int | None):
    """``(image, data)``, resized (PIL bilinear) and re-encoded when the short side exceeds ``max_short_side``."""
    height, width = image.shape[:2]
    if max_short_side is None or min(height, width) <= max_short_side:
        return image, data
    scale = max_short_side / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(image).resize(size, Image.BILINEAR)
    buffer = io.BytesIO()
    resized.save(buffer, format="JPEG" if ext == "jpg" else "PNG", quality=95)
    return np.asarray(resized), buffer.getvalue()


def model_id(checkpoint: str | Path) -> str:
    """``<checkpoint>@<first 12 hex digits of the weights' sha256>``: which weights labelled a mask. The
    checkpoint is an export directory (its ``sam.pth``) or an official ``.pth``."""
    weights = Path(checkpoint) / EXPORT_WEIGHTS if Path(checkpoint).is_dir() else Path(checkpoint)
    return f"{checkpoint}@{file_sha256(weights)[:12]}"


@dataclass
class LabelSummary:
    """What one task did: counts, every skip with its reason, time, and quality where ground truth exists."""

    task_index: int
    num_tasks: int
    input_shards: list[str]
    shards_labelled: list[str] = field(default_factory=list)
    shards_already_done: list[str] = field(default_factory=list)
    unreadable_shards: list[dict] = field(default_factory=list)
    images: int = 0
    masks: int = 0
    skipped_images: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    quality: ProposalQuality = field(default_factory=ProposalQuality)
    stopped_by: str | None = None  # the error that stopped the task (a full disk...), naming the shard

    def to_dict(self) -> dict:
        out = asdict(self)
        out["quality"] = self.quality.summary() if self.quality.gt_masks else None
        out["masks_per_image"] = self.masks / self.images if self.images else None
        out["images_per_second"] = self.images / self.seconds if self.seconds else None
        out["complete"] = len(self.shards_labelled) + len(self.shards_already_done) == len(self.input_shards)
        return out


def write_task_summary(summary: LabelSummary, output: Path) -> Path:
    """Write the task's summary JSON atomically; returns its path."""
    directory = output / SUMMARY_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"task-{summary.task_index:06d}.json"
    write_json_atomic(path, summary.to_dict())
    return path


class Labeller:
    """Labels input shards into an output shard directory with an automatic mask generator.

    Arguments:
        generator: the automatic mask generator.
        output: the output shard directory (shared by every task).
        provenance: added to every annotation (``source``, ``stage``, ``model``).
        max_short_side: see the module docstring; None keeps every image's size.
        folder_root: the image folder, when the input shards are groups of its files (keys are relative paths).
    """

    def __init__(self, generator: SamAutomaticMaskGenerator, output: str | Path, provenance: dict,
                 max_short_side: int | None = 1500, folder_root: Path | None = None):
        if max_short_side is not None and not (is_int(max_short_side) and max_short_side >= 1):
            raise ValueError(f"max_short_side={max_short_side!r}: expected a positive number of pixels, or null")
        self.generator = generator
        self.output = Path(output)
        self.provenance = provenance
        self.max_short_side = max_short_side
        self.folder_root = folder_root

    def done_shards(self) -> set[str]:
        """Names of the output shards already complete (in the output manifest)."""
        if not (self.output / MANIFEST).exists():
            return set()
        return set(read_manifest(self.output)["shards"])

    def run(self, shards: list[InputShard], summary: LabelSummary, progress: bool = True) -> LabelSummary:
        """Label every shard not done yet, updating and writing ``summary`` after each one."""
        done = self.done_shards()
        start = time.perf_counter()

        def masks_per_image() -> str:
            return f"{summary.masks / max(summary.images, 1):.1f} masks/image"

        total = images_in([s for s in shards if s.output_name not in done])
        with Progress("labelled images", total, "images", masks_per_image, enabled=progress) as bar:
            for shard in shards:
                if shard.output_name not in done and (self.output / shard.output_name).is_file():
                    # Published but not listed (killed between the rename and the manifest update): a
                    # writer of its prefix adds it to the manifest.
                    ShardWriter(self.output, prefix=shard.name)
                    done.add(shard.output_name)
                if shard.output_name in done:
                    summary.shards_already_done.append(shard.name)
                    continue
                counts = summary.images, summary.masks, copy.deepcopy(summary.quality)
                try:
                    self.label_shard(shard, summary, bar)
                    summary.shards_labelled.append(shard.name)
                except UnreadableShard as exc:
                    log.warning("skipping unreadable input shard: %s", exc)
                    summary.unreadable_shards.append({"shard": shard.name, "reason": str(exc)})
                    # Nothing of the shard was published: its images are not counted as labelled.
                    summary.images, summary.masks, summary.quality = counts
                except Exception as exc:  # the task stops; its summary says why, beside what it published
                    summary.stopped_by = f"{shard.name}: {type(exc).__name__}: {exc}"
                    summary.images, summary.masks, summary.quality = counts
                    self._write_summary(summary, start)
                    raise
                self._write_summary(summary, start)
        return summary

    def _write_summary(self, summary: LabelSummary, start: float) -> None:
        summary.seconds = time.perf_counter() - start
        try:
            write_task_summary(summary, self.output)
        except OSError as error:
            if summary.stopped_by is None:
                raise
            log.error("could not write the task's summary (%s): %s", error, json.dumps(summary.to_dict()))

    def label_shard(self, shard: InputShard, summary: LabelSummary, bar: Progress) -> None:
        """Label one input shard into its output shard; nothing of it is published if it fails."""
        writer = ShardWriter(self.output, prefix=shard.name, max_samples=2**31, max_bytes=2**50)
        with writer:
            for sample in input_samples(shard, self.folder_root):
                if isinstance(sample, Skipped):
                    log.warning("skipped %s: %s", sample.source, sample.reason)
                    summary.skipped_images.append({"source": sample.source, "reason": sample.reason})
                    continue
                self.label_sample(sample, writer, summary)
                bar.update()

    def label_sample(self, sample: Sample, writer: ShardWriter, summary: LabelSummary) -> None:
        try:
            image = decode_image(sample.data, source=sample.source)
        except ImageDecodeError as exc:
            self._skip(sample, str(exc), summary)
            return
        info = (sample.record or {}).get("image", {})
        if sample.record is not None and (info["height"], info["width"]) != image.shape[:2]:
            self._skip(sample, f"{sample.source}: image.height/width: the record says {info['height']}x"
                       f"{info['width']} but the image is {image.shape[0]}x{image.shape[1]}", summary)
            return
        resized_image, data = fit_short_side(image, sample.data, sample.ext, self.max_short_side)
        annotations = self.generator.generate(resized_image, provenance=self.provenance)
        height, width = resized_image.shape[:2]
        record = make_record(info.get("image_id", sample.key), width, height,
                             info.get("file_name", f"{sample.key}.{sample.ext}"), annotations)
        try:
            writer.write(sample.key, data, sample.ext, record)
        except ValueError as exc:  # checked before anything is written: a key already labelled, a bad key
            self._skip(sample, str(exc), summary)
            return
        summary.images += 1
        summary.masks += len(annotations)
        truth = (sample.record or {}).get("annotations", [])
        if truth and resized_image is image:
            summary.quality.add([a["segmentation"] for a in annotations],
                                np.array([a["predicted_iou"] for a in annotations]),
                                [a["segmentation"] for a in truth])

    @staticmethod
    def _skip(sample: Sample, reason: str, summary: LabelSummary) -> None:
        log.warning("skipped %s: %s", sample.source, reason)
        summary.skipped_images.append({"source": sample.source, "reason": reason})
