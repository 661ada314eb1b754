"""SAM's simulated interactive annotation: training (SAM paper, appendix A) and evaluation.

Training (``simulate_training``), per mask of the batch, all masks at once:

1. Round 1: a foreground point drawn uniformly inside the mask, or the mask's box with noise of
   standard deviation 10% of its side (at most 20 px); the split is ``box_probability``. Optionally
   (``mask_prompt_probability``) a noisy version of the mask as a mask prompt too.
2. Passes 2..11 follow ``prompts.interactive_schedule``: 8 passes each add one click drawn uniformly
   from the error region between the previous prediction and the truth (positive on a false
   negative, negative on a false positive), and 2 passes add nothing: one at a random position among
   the eight, one at the end. Every pass after the first feeds the previous pass's low-res logits
   (unthresholded, detached) back as the mask prompt.
3. Ambiguity: three outputs while the prompt is a single point, the single-mask output otherwise; the
   mask carried to the next pass is the output with the highest predicted IoU.
4. Every pass is supervised (``losses.multimask_loss``: 20 focal + 1 dice, min over outputs, IoU MSE);
   the loss is the mean over the passes.

Box-started and point-started masks are decoded as two groups, so each group's prompts have exactly
the layout the official predictor produces at inference (box + clicks; clicks + one padding point).

Evaluation (``evaluate_interactive``): one click at the point farthest from the boundary, then clicks
at the centre of the largest error region (RITM/SAM protocol), up to ``max_clicks``; and the tight box.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from sam_engine.metrics.interactive import mask_iou
from sam_engine.model import Sam
from sam_engine.train.losses import LossTerms, iou_of_logits, multimask_loss
from sam_engine.train.prompts import (
    PADDING,
    Clicks,
    append_click,
    farthest_from_boundary_points,
    interactive_schedule,
    largest_error_region_clicks,
    mask_boxes,
    noisy_boxes,
    sample_error_clicks,
    sample_points_in_masks,
)
from sam_engine.train.settings import SimulationConfig


class Decoded(NamedTuple):
    """One decoder pass for n masks: ``logits`` n x C x L x L (low-res), ``iou_pred`` n x C."""

    logits: torch.Tensor
    iou_pred: torch.Tensor


def decode(
    model: Sam,
    embeddings: torch.Tensor,
    points: torch.Tensor,
    labels: torch.Tensor,
    boxes: torch.Tensor | None,
    mask_logits: torch.Tensor | None,
    multimask: bool,
    use_mask: torch.Tensor | None = None,
) -> Decoded:
    """Decode n masks from their prompts (model input frame).

    Arguments:
        embeddings: n x C x h x w, each mask's image embedding.
        points: n x K x 2, labels: n x K (K >= 0; a padding point is added when there is no box, as SAM).
        boxes: n x 4 XYXY or None.
        mask_logits: n x 1 x 4h x 4w mask prompts or None.
        use_mask: n bool, which masks take their mask prompt (the others get SAM's no-mask embedding);
            None: all of them.
    """
    has_points = points.shape[1] > 0 or boxes is None
    sparse, dense = model.prompt_encoder(
        points=(points, labels) if has_points else None, boxes=boxes, masks=mask_logits
    )
    if mask_logits is not None and use_mask is not None:
        no_mask = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand_as(dense)
        dense = torch.where(use_mask[:, None, None, None], dense, no_mask)
    logits, iou_pred = model.mask_decoder(
        image_embeddings=embeddings,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    return Decoded(logits, iou_pred)


def downsample_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """N x S x S bool -> N x size x size bool: area fraction >= 0.5 on the coarser grid."""
    return F.interpolate(masks[:, None].float(), size=(size, size), mode="area")[:, 0] >= 0.5


def noisy_mask_prompt(targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A corrupted version of each mask as low-res logits: blurred, its boundary noised, re-thresholded softly.

    The noise is confined to the blurred boundary band (``4 b (1 - b)``, 0 where the 5 x 5 blur is 0 or 1),
    so the prompt's interior and the image far from the mask stay as they are: independent noise on
    every pixel would speckle the whole image and bury a small mask.

    Arguments:
        targets: n x L x L bool.
    Returns:
        n x 1 x L x L float logits (+-10 away from the boundary, noisy within about 2 px of it).
    """
    blurred = F.avg_pool2d(targets[:, None].float(), kernel_size=5, stride=1, padding=2)
    band = 4.0 * blurred * (1.0 - blurred)
    noise = 0.5 * band * torch.randn(blurred.shape, generator=generator, device=blurred.device)
    return 20.0 * (blurred + noise - 0.5)


def best_output(decoded: Decoded) -> torch.Tensor:
    """The logits of the output with the highest predicted IoU: n x 1 x L x L."""
    best = decoded.iou_pred.argmax(dim=1)
    return decoded.logits[torch.arange(len(best), device=best.device), best][:, None]


class TrainingLoss(NamedTuple):
    """Each loss term summed over the masks and averaged over the passes (scalars): divide by the
    global mask count to normalise. ``num_masks``: masks used (those not empty on the loss grid);
    ``last_iou``: the summed IoU of the masks carried out of the last pass."""

    total: torch.Tensor
    focal: torch.Tensor
    dice: torch.Tensor
    iou: torch.Tensor
    num_masks: torch.Tensor
    last_iou: torch.Tensor


class _Group:
    """The masks that started from the same kind of prompt, with their accumulated clicks."""

    def __init__(self, index, embeddings, gt_masks, targets, points, labels, boxes, mask_prompt, use_mask):
        self.index = index  # positions of these masks in the batch (n,)
        self.embeddings = embeddings  # n x C x h x w
        self.gt_masks = gt_masks  # n x S x S bool, where clicks are drawn
        self.targets = targets  # n x L' x L' bool at the loss resolution
        self.points, self.labels = points, labels  # n x K x 2, n x K
        self.boxes = boxes  # n x 4 or None
        self.mask_prompt, self.use_mask = mask_prompt, use_mask  # n x 1 x L x L or None; n bool
        self.previous: torch.Tensor | None = None  # n x 1 x L x L logits carried to the next pass

    def multimask(self) -> bool:
        """Three outputs only while the prompt is a single point."""
        return self.boxes is None and self.points.shape[1] == 1


def simulate_training(
    model: Sam,
    image_embeddings: torch.Tensor,
    image_index: torch.Tensor,
    gt_masks: torch.Tensor,
    config: SimulationConfig,
    generator: torch.Generator,
) -> TrainingLoss:
    """Run the 11 supervised decoder passes of SAM's training for N masks.

    Masks too small to cover any pixel of the loss grid are left out (counted in ``num_masks``).

    Arguments:
        image_embeddings: B x C x h x w.
        image_index: N int64, the image of each mask.
        gt_masks: N x S x S bool in the model input frame (padding is background).
        generator: on the masks' device; all sampling draws from it.
    """
    size, device = gt_masks.shape[-1], gt_masks.device
    low_res = model.config.low_res_size
    loss_size = low_res if config.loss_resolution == "low_res" else size
    targets = downsample_masks(gt_masks, low_res) if loss_size == low_res else gt_masks
    kept = targets.flatten(1).any(dim=1)
    targets, gt_masks, image_index = targets[kept], gt_masks[kept], image_index[kept]
    n = len(targets)

    use_box = torch.rand(n, generator=generator, device=device) < config.box_probability
    use_mask = torch.rand(n, generator=generator, device=device) < config.mask_prompt_probability
    first_clicks = sample_points_in_masks(gt_masks, generator)
    boxes = noisy_boxes(
        mask_boxes(gt_masks), generator, image_size=(size, size),
        noise_std_fraction=config.box_noise_fraction, max_noise=config.box_noise_max,
    )
    mask_prompts = None
    if config.mask_prompt_probability > 0:
        mask_prompts = noisy_mask_prompt(downsample_masks(gt_masks, low_res), generator)
    embeddings = image_embeddings[image_index]

    groups = []
    for is_box in (True, False):
        index = torch.nonzero(use_box == is_box)[:, 0]
        if len(index) == 0:
            continue
        if is_box:
            points = torch.zeros(len(index), 0, 2, device=device)
            labels = torch.zeros(len(index), 0, dtype=torch.int64, device=device)
        else:
            points = first_clicks.points[index][:, None]
            labels = first_clicks.labels[index][:, None]
        groups.append(_Group(index, embeddings[index], gt_masks[index], targets[index], points, labels,
                             boxes[index] if is_box else None,
                             None if mask_prompts is None else mask_prompts[index], use_mask[index]))

    later_passes = interactive_schedule(generator, config.num_click_rounds) if config.num_click_rounds else []
    schedule = [False, *later_passes]
    sums = torch.zeros(4, device=device)
    last_ious = torch.zeros(n, device=device)
    for pass_index, adds_click in enumerate(schedule):
        for group in groups:
            if adds_click:
                predicted = _resized(group.previous, size)[:, 0] > 0
                clicks = sample_error_clicks(predicted, group.gt_masks, generator)
                group.points, group.labels = append_click(group.points, group.labels, clicks.points, clicks.labels)
            first = pass_index == 0
            decoded = decode(
                model, group.embeddings, group.points, group.labels, group.boxes,
                group.mask_prompt if first else group.previous,
                multimask=group.multimask(),
                use_mask=group.use_mask if first else None,
            )
            logits = _resized(decoded.logits, loss_size)
            terms: LossTerms = multimask_loss(
                logits, decoded.iou_pred, group.targets, num_masks_total=1.0,
                focal_weight=config.focal_weight, dice_weight=config.dice_weight, iou_weight=config.iou_weight,
            )
            sums = sums + torch.stack([terms.total, terms.focal, terms.dice, terms.iou])
            group.previous = best_output(decoded).detach()
            if pass_index == len(schedule) - 1:
                chosen = Decoded(logits.detach(), decoded.iou_pred.detach())
                last_ious[group.index] = iou_of_logits(best_output(chosen), group.targets)[:, 0]
    total, focal, dice, iou = sums / len(schedule)
    return TrainingLoss(total, focal, dice, iou, torch.tensor(n, device=device), last_ious.sum())


def _resized(logits: torch.Tensor, size: int) -> torch.Tensor:
    """n x C x L x L logits -> n x C x size x size (bilinear, as SAM's post-processing); as they are if L == size."""
    if logits.shape[-1] == size:
        return logits
    return F.interpolate(logits.float(), size=(size, size), mode="bilinear", align_corners=False)


class InteractiveEvaluation(NamedTuple):
    """Per-mask results of ``evaluate_interactive`` (N masks, K = max_clicks).

    ``ious``: N x K, IoU after each click (click 1 choosing among 3 outputs by predicted IoU);
    ``first_click_oracle``: N, the best of the 3 outputs after click 1; ``box``: N, IoU from the tight
    box alone; ``iou_pred_error``: N, mean |predicted - actual IoU| over the 3 outputs of click 1.
    """

    ious: torch.Tensor
    first_click_oracle: torch.Tensor
    box: torch.Tensor
    iou_pred_error: torch.Tensor


@torch.no_grad()
def evaluate_interactive(
    model: Sam,
    image_embeddings: torch.Tensor,
    image_index: torch.Tensor,
    gt_masks: torch.Tensor,
    valid: torch.Tensor,
    max_clicks: int = 20,
) -> InteractiveEvaluation:
    """Interactive-segmentation evaluation, all masks at once, scored in the S x S input frame.

    Arguments:
        image_embeddings: B x C x h x w; image_index: N; gt_masks: N x S x S bool.
        valid: N x S x S bool, the image region of each mask's frame (predictions in the padding
            are ignored).
    """
    embeddings = image_embeddings[image_index]
    size = gt_masks.shape[-1]
    n = gt_masks.shape[0]
    device = gt_masks.device

    def predicted_masks(logits: torch.Tensor) -> torch.Tensor:
        return (_resized(logits, size) > 0) & valid[:, None]

    clicks = farthest_from_boundary_points(gt_masks)
    points, labels = clicks.points[:, None], clicks.labels[:, None]
    decoded = decode(model, embeddings, points, labels, None, None, multimask=True)
    output_ious = mask_iou(predicted_masks(decoded.logits), gt_masks[:, None])  # N x 3
    chosen = decoded.iou_pred.argmax(dim=1)
    rows = torch.arange(n, device=device)
    ious = [output_ious[rows, chosen]]
    first_click_oracle = output_ious.amax(dim=1)
    iou_pred_error = (decoded.iou_pred.float() - output_ious).abs().mean(dim=1)
    previous = best_output(decoded)
    for _ in range(max_clicks - 1):
        current = predicted_masks(previous)[:, 0]
        new = largest_error_region_clicks(current, gt_masks, previous=Clicks(points, labels))
        points, labels = append_click(points, labels, new.points, new.labels)
        decoded = decode(model, embeddings, points, labels, None, previous, multimask=False)
        # Once nothing is left to click on (label -1), the mask stays as it was.
        done = new.labels == PADDING
        previous = torch.where(done[:, None, None, None], previous, decoded.logits)
        ious.append(mask_iou(predicted_masks(previous)[:, 0], gt_masks))

    boxes = mask_boxes(gt_masks)
    box_decoded = decode(model, embeddings, points[:, :0], labels[:, :0], boxes, None, multimask=False)
    box_ious = mask_iou(predicted_masks(box_decoded.logits)[:, 0], gt_masks)
    return InteractiveEvaluation(torch.stack(ious, dim=1), first_click_oracle, box_ious, iou_pred_error)

