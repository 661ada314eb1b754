"""A simulated annotator: a person clicking in SAM's browser tool, played by the ground truth.

SAM's data engine, stages 1 and 2: the annotator picks the objects of an image from the most
prominent down, clicks foreground/background points while the model proposes a mask, and
brushes what the model gets wrong; once a mask takes more than 30 s they move on to the next
image. Here the annotator's "intent" is a ground-truth mask hidden from the model, and clicks
follow the interactive-evaluation protocol (RITM, SAM; ``sam_engine.train.interactive``):

1. click 1 at the pixel of the intent farthest from its boundary; three outputs, the annotator
   sees the one with the highest predicted IoU;
2. while IoU(mask, intent) < ``accept_iou``, the click budget lasts and the last ``patience``
   clicks improved the best proposal: a click at the centre of the largest error region (positive
   on a miss, negative on a spill), decoded with all clicks so far plus the previous low-res logits
   as mask prompt, one output;
3. the best proposal seen is kept as the model drew it when it reached ``accept_iou``; otherwise it
   is brushed into the intent (``AnnotationTimeModel.brush_strokes`` of its IoU).

All objects of an image are annotated at once, one decoder call per click round for every object
still clicking. The move-on rule is then applied to the finished batch, so objects past the cut
cost compute but no simulated time. Without a model (``predictor=None``) every mask is painted by
hand, as at the very start of stage 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sam_engine.annotate.cost import AnnotationTimeModel
from sam_engine.metrics.interactive import mask_iou
from sam_engine.predict.predictor import SamPredictor
from sam_engine.train.prompts import (
    PADDING,
    Clicks,
    append_click,
    farthest_from_boundary_points,
    largest_error_region_clicks,
)


@dataclass
class AnnotatedMasks:
    """The masks an annotator drew on ONE image, in annotation order (N masks, up to K clicks each).

    Every tensor lives on the predictor's device (the intent's device without a predictor). For an
    SA-1B record, ``sam_engine.data.records.make_annotations(masks.cpu().numpy(),
    point_coords=first_points().cpu().numpy(), provenance={"clicks": ..., "seconds": ...})``.

    Attributes:
        masks: N x H x W bool at the image's original size.
        object_index: N int64, which of the given intent masks each one annotates.
        clicks: N int64, clicks made (0 when drawn without a model).
        click_points: N x K x 2 float32 (x, y) in image pixels; padding (0, 0) past a mask's clicks.
        click_labels: N x K int64, 1 foreground, 0 background, -1 padding.
        strokes: N int64, brush strokes (0 for a mask accepted as the model drew it).
        seconds: N float32, time spent on each mask.
        iou: N float32, IoU of the final mask with its intent (1.0 for a brushed mask).
        model_iou: N float32, IoU of the model's last proposal with the intent (0.0 without a model).
        brushed: N bool, True where the mask was brushed to the intent rather than accepted.
    """

    masks: torch.Tensor
    object_index: torch.Tensor
    clicks: torch.Tensor
    click_points: torch.Tensor
    click_labels: torch.Tensor
    strokes: torch.Tensor
    seconds: torch.Tensor
    iou: torch.Tensor
    model_iou: torch.Tensor
    brushed: torch.Tensor

    def __len__(self) -> int:
        return self.masks.shape[0]

    def first_points(self) -> torch.Tensor:
        """One point per mask for the record's ``point_coords``: N x 2 float32 (x, y).

        The first click (every mask of an assisted run has one); for masks painted without a model,
        the pixel farthest from the mask's boundary, where that first click would have gone.
        """
        if self.click_points.shape[1] == 0:
            return farthest_from_boundary_points(self.masks).points
        return self.click_points[:, 0]

    def _select(self, keep: torch.Tensor) -> AnnotatedMasks:
        """The masks picked by ``keep`` (N bool or an index tensor)."""
        return AnnotatedMasks(**{name: value[keep] for name, value in vars(self).items()})


@dataclass
class _Proposals:
    """The model's best proposal for n objects and the clicks made (K clicks at most).

    masks: n x H x W bool; iou: n float32 with the intent; clicks: n int64;
    points: n x K x 2 float32 (x, y) image pixels; labels: n x K int64 (-1 past a mask's clicks).
    """

    masks: torch.Tensor
    iou: torch.Tensor
    clicks: torch.Tensor
    points: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def nothing(cls, targets: torch.Tensor) -> _Proposals:
        """No model: empty proposals (IoU 0) and no clicks, for n x H x W targets."""
        n, device = targets.shape[0], targets.device
        return cls(
            masks=torch.zeros_like(targets),
            iou=torch.zeros(n, device=device),
            clicks=torch.zeros(n, dtype=torch.int64, device=device),
            points=torch.zeros(n, 0, 2, device=device),
            labels=torch.zeros(n, 0, dtype=torch.int64, device=device),
        )


class SimulatedAnnotator:
    """Annotates the ground-truth objects of an image the way SAM's stage-1 annotators worked.

    Arguments:
        time_model: seconds per mask, click and brush stroke.
        accept_iou: a proposal at least this close to the intent is accepted as it is.
        max_clicks: clicks before giving up on the model and brushing (at least 1).
        patience: clicks in a row that do not improve the best proposal before giving up and brushing.
        move_on_seconds: the annotator moves to the next image after the first mask that took longer.
        min_area: objects with fewer pixels are ignored (empty objects always are).
    """

    def __init__(
        self,
        time_model: AnnotationTimeModel,
        accept_iou: float = 0.9,
        max_clicks: int = 10,
        move_on_seconds: float = 30.0,
        min_area: int = 0,
        patience: int = 3,
    ) -> None:
        if not 0.0 <= accept_iou <= 1.0:
            raise ValueError(f"accept_iou must be in [0, 1], got {accept_iou}")
        if max_clicks < 1:
            raise ValueError(f"max_clicks must be at least 1, got {max_clicks}")
        if not move_on_seconds >= 0:
            raise ValueError(f"move_on_seconds must be non-negative, got {move_on_seconds}")
        if min_area < 0:
            raise ValueError(f"min_area must be non-negative, got {min_area}")
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        self.patience = patience
        self.time_model = time_model
        self.accept_iou = accept_iou
        self.max_clicks = max_clicks
        self.move_on_seconds = move_on_seconds
        self.min_area = min_area

    def annotate(
        self, predictor: SamPredictor | None, intent: torch.Tensor, exclude: torch.Tensor | None = None
    ) -> AnnotatedMasks:
        """Annotate the objects of the predictor's current image, most prominent (largest) first.

        Arguments:
            predictor: a predictor whose image is set, or None to paint every mask by hand.
            intent: N x H x W bool, the objects the annotator means, at the image's original size.
            exclude: N bool, objects not to annotate (stage 2: those a pre-filled mask covers).
        Returns:
            AnnotatedMasks: the masks kept before the annotator moved on, in annotation order.
        """
        intent = _checked_intent(intent, predictor)
        device = predictor.device if predictor is not None else intent.device
        intent = intent.to(device)
        areas = intent.flatten(1).sum(dim=1)
        wanted = (areas > 0) & (areas >= self.min_area)
        if exclude is not None:
            if exclude.shape != (intent.shape[0],) or exclude.dtype != torch.bool:
                raise ValueError(
                    f"exclude must be a bool tensor of {intent.shape[0]} values (one per intent mask), "
                    f"got {exclude.dtype} {tuple(exclude.shape)}"
                )
            wanted &= ~exclude.to(device)
        by_area = torch.sort(areas, descending=True, stable=True).indices
        order = by_area[wanted[by_area]]  # n int64, annotation order
        targets = intent[order]  # n x H x W
        if predictor is None or len(order) == 0:
            proposals = _Proposals.nothing(targets)
        else:
            proposals = self._click_until_accepted(predictor, targets)

        brushed = proposals.iou < self.accept_iou
        strokes = torch.where(brushed, self.time_model.brush_strokes(proposals.iou), 0)
        seconds = self.time_model.seconds(proposals.clicks, strokes)
        annotated = AnnotatedMasks(
            masks=torch.where(brushed[:, None, None], targets, proposals.masks),
            object_index=order,
            clicks=proposals.clicks,
            click_points=proposals.points,
            click_labels=proposals.labels,
            strokes=strokes,
            seconds=seconds,
            iou=torch.where(brushed, 1.0, proposals.iou),
            model_iou=proposals.iou,
            brushed=brushed,
        )
        return annotated._select(self._kept_before_moving_on(seconds))

    def _kept_before_moving_on(self, seconds: torch.Tensor) -> torch.Tensor:
        """N bool: the masks up to and including the first that took over ``move_on_seconds``."""
        slow = seconds > self.move_on_seconds
        return (torch.cumsum(slow, dim=0) - slow.long()) == 0

    def _click_until_accepted(self, predictor: SamPredictor, targets: torch.Tensor) -> _Proposals:
        """The clicking phase for n objects at once: at most ``max_clicks`` decoder calls.

        Arguments:
            targets: n x H x W bool, non-empty intents on the predictor's device.
        """
        threshold = predictor.model.mask_threshold
        first = farthest_from_boundary_points(targets)
        points, labels = first.points[:, None], first.labels[:, None]  # n x 1 x 2, n x 1
        candidates, scores = predictor.predict_low_res_torch(
            predictor.transform_coords(points), labels, multimask_output=True
        )  # n x 3 x L x L, n x 3
        rows = torch.arange(len(targets), device=targets.device)
        logits = candidates[rows, scores.argmax(dim=1)][:, None]  # n x 1 x L x L, the output shown
        masks = predictor.upscale_masks(logits)[:, 0] > threshold  # n x H x W
        iou = mask_iou(masks, targets)
        best_masks, best_iou = masks.clone(), iou.clone()  # the best proposal so far, what is kept
        stale = torch.zeros_like(rows)  # clicks in a row that did not improve it
        clicks = torch.ones_like(rows)
        clicking = iou < self.accept_iou
        for _ in range(self.max_clicks - 1):
            active = clicking.nonzero()[:, 0]  # one host synchronisation per round
            if len(active) == 0:
                break
            new = largest_error_region_clicks(
                masks[active], targets[active], previous=Clicks(points[active], labels[active])
            )
            new_points = torch.zeros_like(points[:, 0]).index_copy(0, active, new.points)
            new_labels = torch.full_like(labels[:, 0], PADDING).index_copy(0, active, new.labels)
            points, labels = append_click(points, labels, new_points, new_labels)
            # No error pixel left that was not clicked already (label -1): the object keeps its mask.
            clicked = active[new.labels != PADDING]
            if len(clicked) == 0:
                break
            refined, _ = predictor.predict_low_res_torch(
                predictor.transform_coords(points[clicked]), labels[clicked], mask_input=logits[clicked],
                multimask_output=False,
            )
            logits[clicked] = refined
            masks[clicked] = predictor.upscale_masks(refined)[:, 0] > threshold
            iou[clicked] = mask_iou(masks[clicked], targets[clicked])
            clicks[clicked] += 1
            better = torch.zeros_like(clicking).index_fill(0, clicked, True) & (iou > best_iou)
            best_masks[better], best_iou[better] = masks[better], iou[better]
            stale = torch.where(better, 0, stale + torch.zeros_like(stale).index_fill(0, clicked, 1))
            clicking = (torch.zeros_like(clicking).index_fill(0, clicked, True) & (best_iou < self.accept_iou)
                        & (stale < self.patience))
        used = int(clicks.max())
        return _Proposals(best_masks, best_iou, clicks, points[:, :used], labels[:, :used])


def _checked_intent(intent: torch.Tensor, predictor: SamPredictor | None) -> torch.Tensor:
    """Raise ValueError unless ``intent`` is N x H x W bool at the predictor's image size."""
    if not isinstance(intent, torch.Tensor) or intent.dtype != torch.bool or intent.ndim != 3:
        shape = tuple(intent.shape) if hasattr(intent, "shape") else type(intent).__name__
        raise ValueError(f"intent must be an N x H x W bool torch.Tensor, got {getattr(intent, 'dtype', '')} {shape}")
    if predictor is not None:
        if predictor.original_size is None:
            raise ValueError("the predictor has no image: call predictor.set_image(image) before annotating")
        if tuple(intent.shape[1:]) != predictor.original_size:
            raise ValueError(
                f"intent masks are {tuple(intent.shape[1:])} (H, W) but the predictor's image is "
                f"{predictor.original_size}: give the masks at the image's original size"
            )
    return intent


@dataclass
class PrefillReview:
    """What the annotator makes of an image's M pre-filled masks, against its N objects (stage 2).

    kept: M bool, the pre-filled masks kept; uncovered: N bool, the objects no kept mask covers (the
    ones the annotator then annotates).
    """

    kept: torch.Tensor
    uncovered: torch.Tensor


def review_prefilled(
    intent: torch.Tensor, prefilled: torch.Tensor, cover_iou: float = 0.5, reject_below: float | None = None
) -> PrefillReview:
    """Which pre-filled masks the annotator keeps, and which objects they leave to annotate.

    With ``reject_below`` the annotator rejects each pre-filled mask whose IoU with every object is
    below it, as people reject wrong ones on the web page; None keeps them all (SAM's stage 2, whose
    pre-filled masks were confident ones of a strong model). Intersections of all pairs come from one
    matrix product of the flattened masks (float32: exact up to 2^24 pixels per mask; a transient
    (N + M) x H x W float32 copy).

    Arguments:
        intent: N x H x W bool; prefilled: M x H x W bool (either may be empty).
        cover_iou: an object is covered when a kept pre-filled mask reaches this IoU with it.
    """
    for name, masks in (("intent", intent), ("prefilled", prefilled)):
        if masks.dtype != torch.bool or masks.ndim != 3:
            raise ValueError(f"{name} must be an N x H x W bool tensor, got {masks.dtype} {tuple(masks.shape)}")
    if intent.shape[1:] != prefilled.shape[1:]:
        raise ValueError(f"intent {tuple(intent.shape)} and prefilled {tuple(prefilled.shape)} differ in H x W")
    a = intent.flatten(1).float()  # N x HW
    b = prefilled.to(intent.device).flatten(1).float()  # M x HW
    intersection = a @ b.T  # N x M
    union = a.sum(dim=1)[:, None] + b.sum(dim=1)[None, :] - intersection
    iou = torch.where(union > 0, intersection / union.clamp(min=1), 1.0)  # N x M
    if reject_below is None:
        kept = torch.ones(iou.shape[1], dtype=torch.bool, device=iou.device)
    else:
        kept = (iou >= reject_below).any(dim=0)  # M: right for some object
    covered = (iou[:, kept] >= cover_iou).any(dim=1)  # N: False where no mask is kept
    return PrefillReview(kept=kept, uncovered=~covered)
