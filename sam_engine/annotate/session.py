"""One annotation round of stage 1 or 2: a chunk of the image pool, annotated with the model's help.

For every image of the chunk (stage 2 first pre-fills it with the automatic mask generator's confident
masks, ``source=auto``, and the annotator rejects the wrong ones unless ``review`` is off), the simulated
annotator annotates the objects of its intent, the pool's hidden ground truth, that no kept pre-filled
mask covers (``source=manual``, with ``clicks`` and ``seconds``). The record written holds the kept
pre-filled and the manual masks, never the ground truth. A round writes one shard, published whole
(``ShardWriter``): a killed round leaves nothing, its rerun does it all again.

``round_statistics`` reads a round's shard back (so a resumed engine gets the same figures): masks per
image, clicks and seconds per manual mask, and the pre-filled masks' precision against the ground truth.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sam_engine.amg import SamAutomaticMaskGenerator
from sam_engine.annotate.simulated import SimulatedAnnotator, review_prefilled
from sam_engine.data.images import ImageDecodeError, decode_image
from sam_engine.data.records import decode_masks, make_annotations, make_record, renumbered
from sam_engine.data.samples import Sample, good_samples
from sam_engine.data.shards import ShardWriter, shard_name
from sam_engine.metrics.proposals import ProposalQuality
from sam_engine.predict.predictor import SamPredictor
from sam_engine.utils.progress import progress_of

log = logging.getLogger(__name__)


class MissingGroundTruth(ValueError):
    """A simulated annotator was given a pool image without ground-truth masks (its intent)."""


def pool_samples(pool: str | Path) -> Iterator[Sample]:
    """The good samples of a pool (shards), in shard and sample order; bad ones are logged and left out."""
    return good_samples(pool, lambda skipped: log.warning("pool %s: skipped %s", pool, skipped.reason))


def pool_chunk(pool: str | Path, start: int, count: int) -> list[Sample]:
    """Images ``start .. start + count - 1`` of a pool (a shard directory), in shard and sample order.

    Bad samples are skipped (logged); the chunk holds the next good ones instead.

    Raises:
        ValueError: the pool has fewer than ``start + count`` good images.
    """
    chunk = list(itertools.islice(pool_samples(pool), start, start + count))
    if len(chunk) < count:
        raise ValueError(f"pool {pool}: needs at least {start + count} images, has {start + len(chunk)}")
    return chunk


def intent_masks(sample: Sample, pool_option: str) -> np.ndarray:
    """The ground-truth masks of a pool image (N x H x W bool): the simulated annotator's intent.

    Raises:
        MissingGroundTruth: the sample has no record or no annotation, naming ``pool_option``.
    """
    annotations = (sample.record or {}).get("annotations") or []
    if not annotations:
        raise MissingGroundTruth(
            f"{sample.source}: no ground-truth masks, which the simulated annotator needs as its intent; "
            f"point {pool_option} at shards whose records hold the objects' masks, or use annotator.kind=people"
        )
    info = sample.record["image"]
    return decode_masks([a["segmentation"] for a in annotations], (info["height"], info["width"]))


def record_info(sample: Sample, shape: tuple[int, int]) -> dict:
    """``image_id``, ``width``, ``height`` and ``file_name`` of a pool image's record (``make_record``'s first
    arguments): its own record's, or for a bare image its key, ``shape`` (H, W) and a file name from both."""
    if sample.record:
        info = sample.record["image"]
        return {key: info[key] for key in ("image_id", "width", "height", "file_name")}
    return {"image_id": sample.key, "width": shape[1], "height": shape[0], "file_name": f"{sample.key}.{sample.ext}"}


@dataclass
class RoundSetup:
    """What an annotation round needs besides its images.

    Attributes:
        predictor: over the current model (its image is set per pool image).
        annotator: the simulated annotator.
        stage: 1 or 2 (provenance of every mask written).
        model: the model id written with every mask (``labelling.model_id``).
        prefill: stage 2's automatic mask generator (its confident masks); None in stage 1.
        cover_iou: stage 2: an object counts as covered by a pre-filled mask of IoU >= this.
        review: stage 2: the annotator rejects each pre-filled mask below its ``accept_iou`` with every
            object, as people do on the web page; False keeps them all (SAM's stage 2).
        pool_option: the config option naming the pool (for error messages).
    """

    predictor: SamPredictor
    annotator: SimulatedAnnotator
    stage: int
    model: str
    prefill: SamAutomaticMaskGenerator | None = None
    cover_iou: float = 0.5
    review: bool = True
    pool_option: str = "pool"


def annotate_round(samples: list[Sample], out_dir: str | Path, prefix: str, setup: RoundSetup) -> Path:
    """Annotate ``samples`` into the shard ``<out_dir>/<prefix>-000000.tar``; returns its path.

    Nothing is done when that shard is already complete (a rerun of a finished round).
    """
    path = Path(out_dir) / shard_name(prefix, 0)
    with ShardWriter(out_dir, prefix=prefix, max_samples=2**31, max_bytes=2**50) as writer:
        if path.is_file():
            return path
        for sample in progress_of(samples, f"annotated images of {prefix}"):
            record = _annotate_image(sample, setup)
            if record is not None:
                writer.write(sample.key, sample.data, sample.ext, record)
    return path


def _annotate_image(sample: Sample, setup: RoundSetup) -> dict | None:
    """The record of one pool image: pre-filled masks then manual ones; None (logged) for an image that cannot
    be annotated: undecodable, without ground truth, or of another size than its record says."""
    try:
        intent = intent_masks(sample, setup.pool_option)
        image = decode_image(sample.data, source=sample.source)
    except (ImageDecodeError, MissingGroundTruth) as exc:
        log.warning("skipped %s", exc)
        return None
    if intent.shape[1:] != image.shape[:2]:
        log.warning("skipped %s: its record says %s (H, W), the image is %s", sample.source, intent.shape[1:],
                    image.shape[:2])
        return None
    device = setup.predictor.model.device
    intent_tensor = torch.from_numpy(intent).to(device)
    annotations, exclude = [], None
    if setup.prefill is not None:
        generated = setup.prefill.generate(image, {"source": "auto", "stage": setup.stage, "model": setup.model})
        prefilled = torch.from_numpy(decode_masks([a["segmentation"] for a in generated], image.shape[:2]))
        review = review_prefilled(intent_tensor, prefilled.to(device), setup.cover_iou,
                                  setup.annotator.accept_iou if setup.review else None)
        annotations = renumbered(a for a, keep in zip(generated, review.kept.tolist(), strict=True) if keep)
        if len(annotations) < len(generated):  # the manual masks' ids follow the kept ones'
            log.info("%s: rejected %d of %d pre-filled masks (IoU < %.2f with every object)", sample.source,
                     len(generated) - len(annotations), len(generated), setup.annotator.accept_iou)
        exclude = ~review.uncovered
    setup.predictor.set_image(image)
    result = setup.annotator.annotate(setup.predictor, intent_tensor, exclude)
    setup.predictor.reset_image()
    manual = make_annotations(
        result.masks.cpu().numpy(),
        start_id=len(annotations),
        point_coords=result.first_points().cpu().numpy() if len(result.masks) else None,
        provenance={"source": "manual", "stage": setup.stage, "model": setup.model,
                    "clicks": result.clicks.tolist(), "seconds": result.seconds.tolist()},
    )
    info = sample.record["image"]
    return make_record(info["image_id"], info["width"], info["height"], info["file_name"], annotations + manual)


def round_statistics(shards: str | Path, truth: dict[str, list[dict]]) -> dict:
    """What a round (or stage 3) collected, read back from its shards (a shard directory or one ``.tar``).

    Arguments:
        truth: the ground-truth annotations of the pool images, by sample key (images absent: not scored).
    Returns:
        ``images``, ``masks_collected`` (manual + pre-filled), ``manual_masks``, ``auto_masks``,
        ``masks_per_image``, ``clicks_per_mask`` and ``seconds_per_mask`` (over the manual masks that
        record them: the simulated annotator's; masks imported from people's tools do not),
        ``annotation_hours``, and ``pseudo_label_precision`` (fraction of automatic
        masks with IoU > 0.9 to a ground-truth mask of their image; None without automatic masks scored).
    """
    quality = ProposalQuality()
    images = manual = timed = auto = clicks = 0
    seconds = 0.0
    for sample in pool_samples(shards):
        annotations = sample.record["annotations"]
        images += 1
        prefilled = [a for a in annotations if a.get("source") == "auto"]
        people = [a for a in annotations if a.get("source") == "manual"]
        manual, auto = manual + len(people), auto + len(prefilled)
        timed += sum("seconds" in a for a in people)
        clicks += sum(a.get("clicks", 0) for a in people)
        seconds += sum(a.get("seconds", 0.0) for a in people)
        if prefilled and truth.get(sample.key):
            quality.add([a["segmentation"] for a in prefilled], np.array([a["predicted_iou"] for a in prefilled]),
                        [a["segmentation"] for a in truth[sample.key]])
    return {
        "images": images,
        "masks_collected": manual + auto,
        "manual_masks": manual,
        "auto_masks": auto,
        "masks_per_image": (manual + auto) / images if images else None,
        "clicks_per_mask": clicks / timed if timed else None,
        "seconds_per_mask": seconds / timed if timed else None,
        "annotation_hours": seconds / 3600,
        "pseudo_label_precision": quality.summary()["precision_iou90"] if quality.pred_masks else None,
    }
