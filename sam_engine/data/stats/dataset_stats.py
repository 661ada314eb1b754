"""Dataset statistics as in the SA-1B paper (Sec. 5, Fig. 5 and 6), streamed over shards.

- masks per image, in the paper's bins (<=10, 11-50, 51-100, 101-200, >200, plus 0 for unlabelled images);
- relative mask size: sqrt(mask area / image area), histogram on [0, 1];
- mask-centre heat map: the mask's centroid in image-normalised coordinates, a 2-D histogram;
- concavity: 1 - mask area / area of the mask's convex hull, histogram on [0, 1].

Pixels are unit squares, so a mask's area is its pixel count and its convex hull is that of the
pixels' corners: a filled rectangle has concavity 0 exactly, and a 20x20 square missing a 10x10
corner has area 300 and hull 350, concavity 1/7. Records are read from the tars' ``json`` members
only (images are never decoded), masks are decoded in bounded chunks, and only histograms are kept,
so memory does not grow with the dataset. :func:`compute_stats` returns :class:`DatasetStats`;
:func:`write_stats` writes ``stats.json`` and PNG plots (``python -m sam_engine.data.stats``).
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from webdataset.gopen import gopen

from sam_engine.data.importers.base import SkipSample, check_rle
from sam_engine.data.records import RecordError, decode_masks, mask_areas, validate_record
from sam_engine.data.shards import list_shards
from sam_engine.utils.json_input import parse_json

log = logging.getLogger(__name__)

MASK_COUNT_BINS = ((0, 0), (1, 10), (11, 50), (51, 100), (101, 200), (201, None))
"""Masks-per-image bins (inclusive); the paper's five, and 0 for images without masks."""

DECODE_PIXELS = 2**26
"""Masks are decoded this many pixels (bytes) at a time, at least one mask per chunk."""

_PIXEL_CORNERS = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.int32)


def _bin_label(low: int, high: int | None) -> str:
    if high is None:
        return f">{low - 1}"
    return str(low) if low == high else f"{low}-{high}"


# --- per-mask properties ----------------------------------------------------------------------


def concavity(mask: np.ndarray) -> float:
    """1 - area / convex-hull area of an (H, W) bool mask, with pixels as unit squares; 0 if empty."""
    contours, _ = cv2.findContours(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    if not contours:
        return 0.0
    points = np.concatenate(contours).reshape(-1, 1, 2)
    corners = (points + _PIXEL_CORNERS[None]).reshape(-1, 1, 2)
    hull_area = cv2.contourArea(cv2.convexHull(corners))
    return float(1.0 - mask.sum() / hull_area)


def mask_properties(masks: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relative size, centre and concavity of non-empty masks.

    Arguments:
        masks: (N, H, W) bool, none empty.
        boxes: (N, 4) XYWH integer bounding boxes (concavity is computed on the crop).
    Returns:
        relative_size (N,) in [0, 1]: sqrt(area / (H W));
        centres (N, 2): centroid (x, y) of the pixel centres, divided by (W, H), in [0, 1];
        concavities (N,) in [0, 1).
    """
    n, height, width = masks.shape
    column_counts = masks.sum(axis=1, dtype=np.int64)  # N x W
    row_counts = masks.sum(axis=2, dtype=np.int64)  # N x H
    areas = column_counts.sum(axis=1)
    centre_x = column_counts @ (np.arange(width) + 0.5) / areas / width
    centre_y = row_counts @ (np.arange(height) + 0.5) / areas / height
    concavities = np.array(
        [concavity(m[y : y + h, x : x + w]) for m, (x, y, w, h) in zip(masks, boxes, strict=True)]
    )
    return np.sqrt(areas / (height * width)), np.stack([centre_x, centre_y], axis=1), concavities


# --- accumulation -----------------------------------------------------------------------------


@dataclass
class DatasetStats:
    """Histograms accumulated over records (see the module docstring); JSON via :meth:`to_dict`.

    ``*_hist`` are int64 counts: images per :data:`MASK_COUNT_BINS` bin, masks per relative-size
    and concavity bin on [0, 1], and masks per (y, x) cell of the centre heat map.
    """

    size_bins: int = 50
    concavity_bins: int = 20
    heatmap_bins: int = 20
    num_images: int = 0
    num_masks: int = 0
    empty_masks: int = 0
    bad_records: int = 0
    max_masks_per_image: int = 0
    size_sum: float = 0.0
    concavity_sum: float = 0.0
    count_hist: np.ndarray = field(init=False)
    size_hist: np.ndarray = field(init=False)
    concavity_hist: np.ndarray = field(init=False)
    centre_hist: np.ndarray = field(init=False)

    def __post_init__(self):
        self.count_hist = np.zeros(len(MASK_COUNT_BINS), dtype=np.int64)
        self.size_hist = np.zeros(self.size_bins, dtype=np.int64)
        self.concavity_hist = np.zeros(self.concavity_bins, dtype=np.int64)
        self.centre_hist = np.zeros((self.heatmap_bins, self.heatmap_bins), dtype=np.int64)

    def add_record(self, record: dict) -> None:
        """Add one SA-1B record (validated, RLEs checked, by the caller)."""
        annotations = record["annotations"]
        count = len(annotations)
        self.num_images += 1
        self.num_masks += count
        self.max_masks_per_image = max(self.max_masks_per_image, count)
        self.count_hist[_count_bin(count)] += 1
        if not count:
            return
        segmentations = [a["segmentation"] for a in annotations]
        nonempty = mask_areas(segmentations) > 0
        self.empty_masks += int((~nonempty).sum())
        segmentations = [s for s, ok in zip(segmentations, nonempty, strict=True) if ok]
        if not segmentations:
            return
        boxes = mask_utils.toBbox(segmentations).astype(np.int64)
        height, width = record["image"]["height"], record["image"]["width"]
        chunk = max(1, DECODE_PIXELS // (height * width))
        for start in range(0, len(segmentations), chunk):
            masks = decode_masks(segmentations[start : start + chunk])
            self._add_masks(*mask_properties(masks, boxes[start : start + chunk]))

    def _add_masks(self, sizes: np.ndarray, centres: np.ndarray, concavities: np.ndarray) -> None:
        self.size_hist += np.histogram(sizes, bins=self.size_bins, range=(0, 1))[0]
        self.concavity_hist += np.histogram(concavities, bins=self.concavity_bins, range=(0, 1))[0]
        cells = np.histogram2d(centres[:, 1], centres[:, 0], bins=self.heatmap_bins, range=((0, 1), (0, 1)))[
            0
        ]
        self.centre_hist += cells.astype(np.int64)
        self.size_sum += float(sizes.sum())
        self.concavity_sum += float(concavities.sum())

    def to_dict(self) -> dict:
        """The statistics as JSON types: counts, means, and every histogram with its bin edges."""
        measured = max(self.num_masks - self.empty_masks, 1)
        return {
            "num_images": self.num_images,
            "num_masks": self.num_masks,
            "empty_masks": self.empty_masks,
            "bad_records": self.bad_records,
            "masks_per_image": {
                "bins": [_bin_label(low, high) for low, high in MASK_COUNT_BINS],
                "images": self.count_hist.tolist(),
                "mean": self.num_masks / max(self.num_images, 1),
                "max": self.max_masks_per_image,
            },
            "relative_size": {
                "bin_edges": np.linspace(0, 1, self.size_bins + 1).tolist(),
                "masks": self.size_hist.tolist(),
                "mean": self.size_sum / measured,
            },
            "concavity": {
                "bin_edges": np.linspace(0, 1, self.concavity_bins + 1).tolist(),
                "masks": self.concavity_hist.tolist(),
                "mean": self.concavity_sum / measured,
            },
            "centre_heatmap": {
                "bin_edges": np.linspace(0, 1, self.heatmap_bins + 1).tolist(),
                "masks": self.centre_hist.tolist(),
                "layout": "rows: normalised y (top to bottom), columns: normalised x",
            },
        }


def _count_bin(count: int) -> int:
    """Index of the :data:`MASK_COUNT_BINS` bin holding ``count``."""
    return next(
        i for i, (low, high) in enumerate(MASK_COUNT_BINS) if low <= count and (high is None or count <= high)
    )


# --- reading ----------------------------------------------------------------------------------


def iter_records(
    sources: str | Path | Sequence[str | Path], stats: DatasetStats | None = None
) -> Iterator[dict]:
    """Validated SA-1B records of every shard of ``sources`` (anything ``list_shards`` takes).

    Only the ``.json`` members are parsed. A record that does not parse or validate, or a tar that
    ends early, is logged and counted in ``stats.bad_records`` (when given); reading goes on.
    """
    for url in list_shards(sources):
        try:
            with gopen(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".json"):
                        yield from _parse(tar.extractfile(member).read(), f"{url}:{member.name}", stats)
        except (tarfile.TarError, OSError, EOFError) as exc:
            log.warning("%s: unreadable past this point: %s", url, exc)
            if stats is not None:
                stats.bad_records += 1


def _parse(data: bytes, where: str, stats: DatasetStats | None) -> Iterator[dict]:
    """The record in ``data`` if it parses, validates and has sound RLEs; else nothing (counted)."""
    try:
        record = validate_record(parse_json(data.decode("utf-8")), where=where)
        height, width = record["image"]["height"], record["image"]["width"]
        for i, annotation in enumerate(record["annotations"]):
            check_rle(annotation["segmentation"], height, width, f"{where}: annotations[{i}]")
        yield record
    except (UnicodeDecodeError, json.JSONDecodeError, RecordError, SkipSample) as exc:
        log.warning("%s: bad record: %s", where, exc)
        if stats is not None:
            stats.bad_records += 1


def compute_stats(
    sources: str | Path | Sequence[str | Path], *, max_images: int | None = None, **bins: int
) -> DatasetStats:
    """Statistics of the shards of ``sources`` (the first ``max_images`` records if given).

    ``bins``: ``size_bins``, ``concavity_bins``, ``heatmap_bins`` of :class:`DatasetStats`.
    """
    stats = DatasetStats(**bins)
    records: Iterable[dict] = iter_records(sources, stats)
    for i, record in enumerate(records):
        if max_images is not None and i >= max_images:
            break
        stats.add_record(record)
    return stats


# --- output -----------------------------------------------------------------------------------


def write_stats(stats: DatasetStats, out_dir: str | Path) -> list[Path]:
    """Write ``stats.json`` and four PNG plots into ``out_dir``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = stats.to_dict()
    paths = [out_dir / "stats.json"]
    paths[0].write_text(json.dumps(data, indent=1), encoding="utf-8")

    def percent(counts):
        counts = np.asarray(counts, dtype=np.float64)
        return 100 * counts / max(counts.sum(), 1)

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        paths.append(out_dir / name)

    per_image = data["masks_per_image"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(per_image["bins"], percent(per_image["images"]))
    ax.set(xlabel="Number of masks per image", ylabel="Percent of images")
    save(fig, "masks_per_image.png")
    for name, label in (("relative_size", "Relative segmentation size"), ("concavity", "Concavity")):
        edges = np.asarray(data[name]["bin_edges"])
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.bar(edges[:-1], percent(data[name]["masks"]), width=np.diff(edges), align="edge")
        ax.set(xlabel=label, ylabel="Percent of masks", xlim=(0, 1))
        save(fig, f"{name}.png")
    fig, ax = plt.subplots(figsize=(4.5, 4))
    image = ax.imshow(percent(data["centre_heatmap"]["masks"]), extent=(0, 1, 1, 0), cmap="viridis")
    fig.colorbar(image, ax=ax, label="Percent of masks")
    ax.set(xlabel="Normalised x", ylabel="Normalised y", title="Mask centres")
    save(fig, "centre_heatmap.png")
    return paths
