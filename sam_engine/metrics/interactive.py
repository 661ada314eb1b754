"""Mask-quality and interactive-segmentation metrics: tensor in, tensor out, on any device.

These are the maths only; the loop that prompts the model belongs to the training module. Each
function returns per-mask values (or a scalar where it says so), so a caller aggregates across
batches and ranks with a running mean (e.g. ``torchmetrics.MeanMetric``) of what it returns:

- mIoU after k clicks: ``mask_iou`` of the prediction after click k, averaged over masks
  (SAM's 1-point and 5-point mIoU; boxes likewise);
- NoC@90: ``clicks_to_reach`` of the per-click IoUs, averaged over masks;
- multimask outputs: ``multimask_ious`` gives both the IoU-head choice and the oracle choice;
- IoU-head quality: ``iou_head_mae``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Intersection over union of binary masks, over the last two dims, broadcasting the rest.

    Two empty masks agree perfectly: their IoU is 1.0 (not 0/0).

    Arguments:
        pred, gt: ... x H x W bool, broadcastable (e.g. N x C x H x W against N x 1 x H x W).
    Returns:
        torch.Tensor: ... float32 in [0, 1].
    """
    if pred.dtype != torch.bool or gt.dtype != torch.bool:
        raise ValueError(f"mask_iou takes bool masks, got {pred.dtype} and {gt.dtype}")
    intersection = (pred & gt).sum(dim=(-2, -1), dtype=torch.float32)
    union = (pred | gt).sum(dim=(-2, -1), dtype=torch.float32)
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


class MultimaskIoU(NamedTuple):
    """IoU of the output the IoU head ranks first (``predicted``) and of the best one (``oracle``)."""

    predicted: torch.Tensor
    oracle: torch.Tensor


def multimask_ious(ious: torch.Tensor, iou_pred: torch.Tensor) -> MultimaskIoU:
    """Score several candidate masks per object two ways: as SAM picks, and as an oracle would.

    Arguments:
        ious: N x C actual IoU of each output with the truth.
        iou_pred: N x C the IoU head's predictions (ties: the first output).
    Returns:
        MultimaskIoU of two N tensors.
    """
    chosen = iou_pred.argmax(dim=1, keepdim=True)
    return MultimaskIoU(ious.gather(1, chosen)[:, 0], ious.amax(dim=1))


def clicks_to_reach(ious_per_click: torch.Tensor, threshold: float = 0.9, cap: int = 20) -> torch.Tensor:
    """Number of clicks (NoC) each mask needed to reach ``threshold`` IoU, as RITM counts it.

    Click k (1-based) is the first whose IoU is >= ``threshold``, looking at the first ``cap``
    clicks only; a mask that never gets there counts ``cap`` (also when fewer than ``cap`` clicks
    were simulated, as RITM's ``compute_noc_metric``).

    Arguments:
        ious_per_click: N x K, column k - 1 the IoU after k clicks.
    Returns:
        torch.Tensor: N int64 in [1, cap].
    """
    reached = ious_per_click[:, :cap] >= threshold
    first = reached.int().argmax(dim=1) + 1  # argmax: the first maximal entry
    return torch.where(reached.any(dim=1), first, torch.full_like(first, cap))


def iou_head_mae(iou_pred: torch.Tensor, ious: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of the IoU head over every given output: a scalar.

    Arguments:
        iou_pred, ious: same shape (N, or N x C for every multimask output).
    """
    return (iou_pred.float() - ious.float()).abs().mean()
