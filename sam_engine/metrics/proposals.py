"""Quality of automatically generated masks (pseudo-labels) against ground truth, in a streaming way.

A labelling job scores thousands of images; ``ProposalQuality`` keeps only counts (a few small
fixed-size arrays), never masks or per-image lists, so its memory does not grow with the images.
Two accumulators (e.g. from the tasks of a SLURM array) combine with ``merge``.

Per image, the predicted masks (N) and the ground-truth masks (G) are compared by their IoU matrix
(N x G, one ``pycocotools.mask.iou`` call, no mask treated as a crowd). Over all images added:

- ``precision_iou50`` / ``precision_iou75`` / ``precision_iou90``: fraction of predicted masks whose
  best IoU with a ground-truth mask of their image is strictly above 0.5 / 0.75 / 0.9 (SAM's paper:
  94% of SA-1B's automatic masks have IoU > 90% with a professional annotation). A prediction on
  an image without ground truth counts as imprecise.
- ``recall_iou50`` / ``recall_iou75``: fraction of ground-truth masks whose best IoU with a
  predicted mask of their image is >= 0.5 / 0.75. Best match, no one-to-one constraint: one
  prediction may recall several ground-truth masks.
- ``ar100`` / ``ar1000``: class-agnostic mask average recall as pycocotools' ``COCOeval`` computes it
  with ``iouType="segm"``, ``useCats=0``, area range "all" and ``maxDets`` 100 / 1000 (see
  ``ProposalQuality.add`` for the matching): for each IoU threshold t in 0.50, 0.55, ..., 0.95, the
  number of ground-truth masks matched by one of their image's top-k predictions, summed over the
  images, divided by the number of ground-truth masks; then the mean over the 10 thresholds.

Every fraction of an empty set (no predictions, no ground truth) is None, so that ``summary()`` is
JSON-safe.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

PRECISION_THRESHOLDS = (0.5, 0.75, 0.9)
"""A prediction is precise at t when its best IoU is > t (strictly)."""
RECALL_THRESHOLDS = (0.5, 0.75)
"""A ground-truth mask is recalled at t when its best IoU is >= t."""
AR_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
"""COCOeval's ``iouThrs``, computed as it does (the very same floats)."""
AR_MAX_DETS = (100, 1000)
"""Proposals per image for ``ar100`` and ``ar1000``."""


def coco_greedy_matches(ious: np.ndarray, thresholds: np.ndarray = AR_IOU_THRESHOLDS) -> np.ndarray:
    """Which detections ``COCOeval.evaluateImg`` matches, for every IoU threshold at once.

    For each threshold t and each detection in row order (highest score first), the detection takes
    the ground-truth mask with the highest IoU among those not yet taken at t, if that IoU is
    >= min(t, 1 - 1e-10); among equal IoUs it takes the last ground-truth mask, as COCOeval's
    ``if ious[d, g] < iou: continue`` does. No crowds, no ignored ground truth.

    Matching is sequential in the detections (each one sees what the earlier ones took), so this
    loops over the detections that can match at all (best IoU >= the lowest threshold), each
    step vectorised over the thresholds and the ground truth.

    Arguments:
        ious: D x G float, detections sorted by score descending.
        thresholds: T floats, ascending.
    Returns:
        np.ndarray: T x D bool, True where detection d is matched at threshold t. A ground-truth
        mask is matched by at most one detection per threshold, so ``.sum(axis=1)`` counts the
        matched ground truth, and ``[:, :k].sum(axis=1)`` those matched by the top-k detections.
    """
    thresholds = np.minimum(np.asarray(thresholds, dtype=np.float64), 1 - 1e-10)
    num_dets, num_gts = ious.shape
    matched = np.zeros((len(thresholds), num_dets), dtype=bool)
    if num_dets == 0 or num_gts == 0:
        return matched
    taken = np.zeros((len(thresholds), num_gts), dtype=bool)  # T x G
    rows = np.arange(len(thresholds))
    for d in np.flatnonzero(ious.max(axis=1) >= thresholds.min()):
        free = np.where(taken, -1.0, ious[d])  # T x G, taken ground truth out of reach
        best = num_gts - 1 - np.argmax(free[:, ::-1], axis=1)  # T, the last maximum
        hit = free[rows, best] >= thresholds  # T
        taken[rows[hit], best[hit]] = True
        matched[hit, d] = True
    return matched


def _fraction(count: int, total: int) -> float | None:
    return float(count) / total if total else None


class ProposalQuality:
    """Streaming accumulator of precision, recall and COCO average recall of predicted masks.

    State: three ints (``images``, ``pred_masks``, ``gt_masks``) and three small int64 count arrays
    (``precise``: 3, ``recalled``: 2, ``ar_matched``: 10 x 2); it never holds a mask.

    Example::

        quality = ProposalQuality()
        for pred_rles, scores, gt_rles in images:
            quality.add(pred_rles, scores, gt_rles)
        json.dumps(quality.summary())
    """

    def __init__(self) -> None:
        self.images = 0
        self.pred_masks = 0
        self.gt_masks = 0
        self.precise = np.zeros(len(PRECISION_THRESHOLDS), dtype=np.int64)
        """Predictions whose best IoU is > each of PRECISION_THRESHOLDS."""
        self.recalled = np.zeros(len(RECALL_THRESHOLDS), dtype=np.int64)
        """Ground-truth masks whose best IoU is >= each of RECALL_THRESHOLDS."""
        self.ar_matched = np.zeros((len(AR_IOU_THRESHOLDS), len(AR_MAX_DETS)), dtype=np.int64)
        """Ground-truth masks matched at each of AR_IOU_THRESHOLDS by the top AR_MAX_DETS predictions."""

    def add(self, pred_rles: list[dict], pred_scores: np.ndarray, gt_rles: list[dict]) -> None:
        """Count one image.

        For the average recall the predictions are ordered as COCOeval orders them: by score
        descending with a stable sort (``np.argsort(-scores, kind="mergesort")``, so equal scores keep
        the given order), keeping the first 1000; ground-truth masks keep the given order (which
        breaks ties, see ``coco_greedy_matches``). The top-k predictions are the first k of that order.
        Precision and recall use every prediction.

        Arguments:
            pred_rles: N COCO compressed RLEs (``counts`` str or bytes) of the predicted masks.
            pred_scores: N floats, the predictions' confidence (e.g. predicted IoU).
            gt_rles: G COCO compressed RLEs of the ground-truth masks.
            All RLEs have the image's ``size``; either list may be empty.
        Raises:
            ValueError: ``pred_scores`` is not N values, or the RLEs differ in size.
        """
        scores = np.asarray(pred_scores, dtype=np.float64)
        if scores.shape != (len(pred_rles),):
            raise ValueError(f"pred_scores has shape {scores.shape} for {len(pred_rles)} predicted masks")
        sizes = {tuple(int(s) for s in rle["size"]) for rle in [*pred_rles, *gt_rles]}
        if len(sizes) > 1:
            raise ValueError(f"the image's RLEs differ in size: {sorted(sizes)}")
        num_preds, num_gts = len(pred_rles), len(gt_rles)
        self.images += 1
        self.pred_masks += num_preds
        self.gt_masks += num_gts
        if num_preds == 0 or num_gts == 0:
            return  # nothing precise, nothing recalled, nothing matched
        ious = np.asarray(mask_utils.iou(list(pred_rles), list(gt_rles), [0] * num_gts)).reshape(num_preds, num_gts)

        best_per_pred = ious.max(axis=1)  # N
        best_per_gt = ious.max(axis=0)  # G
        self.precise += (best_per_pred[None, :] > np.array(PRECISION_THRESHOLDS)[:, None]).sum(axis=1)
        self.recalled += (best_per_gt[None, :] >= np.array(RECALL_THRESHOLDS)[:, None]).sum(axis=1)

        order = np.argsort(-scores, kind="mergesort")[: max(AR_MAX_DETS)]
        matched = coco_greedy_matches(ious[order])  # T x D
        cumulative = np.cumsum(matched, axis=1)  # T x D, matched by the top-(j + 1)
        last = np.minimum(AR_MAX_DETS, len(order)) - 1  # per maxDet, the last detection it keeps
        self.ar_matched += cumulative[:, last]

    def merge(self, other: ProposalQuality) -> ProposalQuality:
        """Add another accumulator's counts (e.g. another shard's) to this one; returns self."""
        self.images += other.images
        self.pred_masks += other.pred_masks
        self.gt_masks += other.gt_masks
        self.precise += other.precise
        self.recalled += other.recalled
        self.ar_matched += other.ar_matched
        return self

    def summary(self) -> dict:
        """The numbers defined in this module's docstring, as JSON types (fractions of nothing: None).

        Returns:
            dict: ``images``, ``pred_masks``, ``gt_masks`` (int); ``precision_iou50``,
            ``precision_iou75``, ``precision_iou90``, ``recall_iou50``, ``recall_iou75``, ``ar100``,
            ``ar1000`` (float in [0, 1] or None).
        """
        result = {"images": self.images, "pred_masks": self.pred_masks, "gt_masks": self.gt_masks}
        for t, count in zip(PRECISION_THRESHOLDS, self.precise.tolist(), strict=True):
            result[f"precision_iou{round(t * 100)}"] = _fraction(count, self.pred_masks)
        for t, count in zip(RECALL_THRESHOLDS, self.recalled.tolist(), strict=True):
            result[f"recall_iou{round(t * 100)}"] = _fraction(count, self.gt_masks)
        for k, matched in zip(AR_MAX_DETS, self.ar_matched.T, strict=True):
            # COCOeval: recall per threshold (matched / all ground truth), then the mean over thresholds
            result[f"ar{k}"] = float(np.mean(matched / self.gt_masks)) if self.gt_masks else None
        return result
