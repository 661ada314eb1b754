"""SAM's training loss: focal + dice on the masks, MSE on the IoU head, min over multimask outputs.

SAM (appendix A) supervises mask prediction with a linear combination of focal and dice loss in a
20:1 ratio, trains the IoU head with an MSE loss against each output's actual IoU (weight 1), and,
when it predicts several masks for an ambiguous prompt, backpropagates only the lowest mask loss.
The focal loss is RetinaNet's; SAM's paper gives no alpha, so this follows SAM 2's training code:
alpha = 0.25, gamma = 2. Dice carries +1 smoothing, as DETR and SAM 2. Per-mask losses are
averaged over pixels (focal) or taken over the whole mask (dice), summed over masks, and divided
by the number of masks across all ranks, which the caller supplies.

Every loss is computed in float32, whatever dtype the logits come in (bfloat16 under autocast).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as _elementwise_focal_loss

from sam_engine.metrics.interactive import mask_iou


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """RetinaNet's focal loss, averaged over the pixels of each mask.

    Arguments:
        logits: ... x H x W mask logits.
        targets: ... x H x W, bool or 0/1 floats, broadcastable to the logits.
        alpha: weight of the positive pixels (negatives get 1 - alpha); -1 for no weighting.
        gamma: focusing exponent on (1 - p_t).
    Returns:
        torch.Tensor: ... float32, one loss per mask.
    """
    logits = logits.float()
    targets = targets.float().expand_as(logits)
    return _elementwise_focal_loss(logits, targets, alpha=alpha, gamma=gamma).mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft dice loss of each mask: ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)``, p = sigmoid.

    Arguments:
        logits: ... x H x W mask logits.
        targets: ... x H x W, bool or 0/1 floats, broadcastable to the logits.
    Returns:
        torch.Tensor: ... float32 in [0, 1), one loss per mask.
    """
    probs = logits.float().sigmoid()
    targets = targets.float().expand_as(probs)
    overlap = 2 * (probs * targets).sum(dim=(-2, -1))
    total = probs.sum(dim=(-2, -1)) + targets.sum(dim=(-2, -1))
    return 1 - (overlap + 1) / (total + 1)


def iou_of_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Actual IoU of each output thresholded at logit 0 with the truth: the IoU head's target.

    Arguments:
        logits: N x C x H x W mask logits.
        targets: N x H x W bool.
    Returns:
        torch.Tensor: N x C float32, no gradient (empty vs empty counts 1.0, as ``mask_iou``).
    """
    return mask_iou(logits.detach() > 0, targets[:, None])


class LossTerms(NamedTuple):
    """Scalar losses, each a sum over masks divided by the global mask count.

    ``total`` = focal_weight * focal + dice_weight * dice + iou_weight * iou; ``focal`` and
    ``dice`` are those of the output chosen per mask, ``iou`` the IoU head's MSE averaged over
    all outputs; ``best_output`` (N int64) is the output with the lowest mask loss per mask.
    """

    total: torch.Tensor
    focal: torch.Tensor
    dice: torch.Tensor
    iou: torch.Tensor
    best_output: torch.Tensor


def multimask_loss(
    mask_logits: torch.Tensor,
    iou_pred: torch.Tensor,
    targets: torch.Tensor,
    *,
    num_masks_total: float | torch.Tensor,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
) -> LossTerms:
    """SAM's loss for one decoder pass, with one or several outputs per mask.

    Per mask and per output the mask loss is ``focal_weight * focal + dice_weight * dice``; only
    the output with the lowest one is kept (so only its logits get a gradient). The IoU head is
    trained on every output (as SAM; SAM 2 by default trains only the kept one) with the MSE
    against that output's actual IoU, averaged over the outputs. Sums over masks are divided by
    ``num_masks_total``, the number of masks in the whole global batch (all ranks), so that the
    gradient does not depend on how the batch is split.

    Arguments:
        mask_logits: N x C x H x W logits (C = 1 or 3).
        iou_pred: N x C predicted IoUs.
        targets: N x H x W bool truth, already at the logits' resolution.
        num_masks_total: positive; the global mask count (a float or a 0-dim tensor).
    Returns:
        LossTerms.
    """
    if mask_logits.ndim != 4 or iou_pred.shape != mask_logits.shape[:2]:
        raise ValueError(
            f"expected mask_logits N x C x H x W and iou_pred N x C, got {tuple(mask_logits.shape)} "
            f"and {tuple(iou_pred.shape)}"
        )
    if targets.dtype != torch.bool or targets.shape != (mask_logits.shape[0], *mask_logits.shape[2:]):
        raise ValueError(
            f"targets must be N x H x W bool at the logits' resolution {tuple(mask_logits.shape[2:])} "
            f"(resize them first), got {targets.dtype} {tuple(targets.shape)}"
        )
    if not isinstance(num_masks_total, torch.Tensor) and num_masks_total <= 0:
        raise ValueError(f"num_masks_total must be positive, got {num_masks_total}")

    truth = targets[:, None]  # N x 1 x H x W, broadcast over the outputs
    focal = sigmoid_focal_loss(mask_logits, truth)  # N x C
    dice = dice_loss(mask_logits, truth)
    best = (focal_weight * focal + dice_weight * dice).argmin(dim=1, keepdim=True)  # N x 1
    focal, dice = focal.gather(1, best).sum(), dice.gather(1, best).sum()
    iou_mse = F.mse_loss(iou_pred.float(), iou_of_logits(mask_logits, targets), reduction="none")
    iou = iou_mse.mean(dim=1).sum()

    focal, dice, iou = (term / num_masks_total for term in (focal, dice, iou))
    total = focal_weight * focal + dice_weight * dice + iou_weight * iou
    return LossTerms(total, focal, dice, iou, best[:, 0])
