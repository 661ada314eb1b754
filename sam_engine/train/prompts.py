"""Prompt sampling for SAM's simulated interactive training and for interactive evaluation.

Everything here works on a whole batch of masks at once, on whatever device the masks live on:
no Python loop over masks, points or pixels, and no host round-trip except the few scalar
synchronisations documented below.

Conventions (shared by every function):

- masks are ``N x H x W`` bool tensors;
- a point is ``(x, y)`` in pixels of that mask frame, the integer index of the pixel (column, row)
  as float32; SAM's prompt encoder adds 0.5 to reach the pixel centre;
- boxes are XYXY with *inclusive* max coordinates (``x2`` is the index of the last column),
  as ``segment_anything``'s ``batched_mask_to_box`` and ``torchvision.ops.masks_to_boxes``;
- labels are SAM's: 1 positive click, 0 negative click, -1 padding ("not a point"). A function
  that cannot place a click for some mask (empty mask, no error left) returns the padding point
  ``(0, 0)`` with label -1 there, which the prompt encoder ignores.

Randomness comes only from the ``torch.Generator`` argument, which must live on the masks' device
(``torch.Generator(device="cuda")`` for CUDA tensors): the same seed gives the same samples.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchvision.ops import masks_to_boxes

POSITIVE, NEGATIVE, PADDING = 1, 0, -1


class Clicks(NamedTuple):
    """One click per mask: ``points`` N x 2 float32 (x, y) and ``labels`` N int64 (1, 0 or -1)."""

    points: torch.Tensor
    labels: torch.Tensor


def _check_masks(masks: torch.Tensor, name: str = "masks") -> None:
    if masks.dtype != torch.bool or masks.ndim != 3:
        raise ValueError(f"{name} must be an N x H x W bool tensor, got {masks.dtype} {tuple(masks.shape)}")


def _check_mask_pair(pred_masks: torch.Tensor, gt_masks: torch.Tensor) -> None:
    _check_masks(pred_masks, "pred_masks")
    _check_masks(gt_masks, "gt_masks")
    if pred_masks.shape != gt_masks.shape:
        raise ValueError(f"pred_masks {tuple(pred_masks.shape)} and gt_masks {tuple(gt_masks.shape)} differ")


def _check_generator(generator: torch.Generator, device: torch.device) -> None:
    if generator.device.type != device.type:
        raise ValueError(
            f"the generator lives on {generator.device} but the tensors on {device}: "
            f"create it with torch.Generator(device={str(device)!r})"
        )


def _flat_index_to_points(flat_index: torch.Tensor, width: int) -> torch.Tensor:
    """N flat pixel indices (row-major) -> N x 2 float32 (x, y)."""
    return torch.stack([flat_index % width, flat_index // width], dim=-1).to(torch.float32)


def _padded_where(has_click: torch.Tensor, points: torch.Tensor, labels: torch.Tensor) -> Clicks:
    """Replace the clicks of masks without ``has_click`` by the padding point (0, 0), label -1."""
    points = torch.where(has_click[:, None], points, torch.zeros_like(points))
    labels = torch.where(has_click, labels, torch.full_like(labels, PADDING))
    return Clicks(points, labels)


# --------------------------------------------------------------------------------------------
# Uniform sampling (training)
# --------------------------------------------------------------------------------------------


def sample_points_in_masks(masks: torch.Tensor, generator: torch.Generator) -> Clicks:
    """A positive click drawn uniformly over the pixels of each mask, all masks at once.

    Exact inverse-CDF sampling in two steps: draw a rank ``r`` uniformly in ``[0, area)``, find the
    row holding the r-th pixel from the cumulative row counts, then the column inside that row.
    Cost: one pass over the masks for the row counts (O(N·H·W); the CPU backend casts the masks
    to int32 for that sum, a transient 256 MiB for 64 masks of 1024 x 1024), then O(N·(H + W)).

    Arguments:
        masks: N x H x W bool.
        generator: a ``torch.Generator`` on the masks' device.
    Returns:
        Clicks: points N x 2 (x, y); labels N, 1, or -1 with point (0, 0) where the mask is empty.
    """
    _check_masks(masks)
    _check_generator(generator, masks.device)
    n = masks.shape[0]
    row_counts = masks.sum(dim=-1, dtype=torch.int32)  # N x H
    row_ends = row_counts.cumsum(dim=-1, dtype=torch.int64)  # N x H, pixels up to and including each row
    area = row_ends[:, -1]
    # A 62-bit random integer modulo the area: uniform up to a bias below 2^-30.
    rank = torch.randint(2**62, (n,), generator=generator, device=masks.device) % area.clamp(min=1)

    row = torch.searchsorted(row_ends, rank[:, None], right=True).clamp(max=masks.shape[1] - 1)
    rank_in_row = rank[:, None] - (row_ends.gather(1, row) - row_counts.gather(1, row))
    row_pixels = masks[torch.arange(n, device=masks.device), row[:, 0]]  # N x W
    column_ends = row_pixels.cumsum(dim=-1)
    column = torch.searchsorted(column_ends, rank_in_row, right=True)

    points = torch.cat([column, row], dim=-1).to(torch.float32)
    labels = torch.full((n,), POSITIVE, dtype=torch.int64, device=masks.device)
    return _padded_where(area > 0, points, labels)


def sample_error_clicks(pred_masks: torch.Tensor, gt_masks: torch.Tensor, generator: torch.Generator) -> Clicks:
    """SAM's training click: uniform over the error region between a prediction and the truth.

    The error region is the union of false negatives (truth, not predicted) and false positives
    (predicted, not truth); a click on a false negative is positive (label 1), on a false
    positive negative (label 0).

    Arguments:
        pred_masks, gt_masks: N x H x W bool, same shape.
        generator: a ``torch.Generator`` on the masks' device.
    Returns:
        Clicks: points N x 2; labels N, 1 or 0, or -1 with point (0, 0) where the prediction is
        perfect (SAM's "not a point").
    """
    _check_mask_pair(pred_masks, gt_masks)
    points, labels = sample_points_in_masks(pred_masks ^ gt_masks, generator)
    x, y = points.long().unbind(-1)
    on_truth = gt_masks[torch.arange(gt_masks.shape[0], device=gt_masks.device), y, x]
    return _padded_where(labels != PADDING, points, on_truth.long())


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY box of each mask with inclusive max coordinates; (0, 0, 0, 0) for an empty mask.

    This is ``torchvision.ops.masks_to_boxes`` (vectorised), whose convention is that of SAM's
    ``batched_mask_to_box``: a mask covering columns 3..7 gets ``x1 = 3, x2 = 7``.

    Arguments:
        masks: N x H x W bool.
    Returns:
        torch.Tensor: N x 4 float32.
    """
    _check_masks(masks)
    return masks_to_boxes(masks)


def noisy_boxes(
    boxes: torch.Tensor,
    generator: torch.Generator,
    *,
    image_size: tuple[int, int],
    noise_std_fraction: float = 0.1,
    max_noise: float = 20.0,
) -> torch.Tensor:
    """SAM's box prompt: each coordinate moved by clamped Gaussian noise, then clipped to the image.

    Noise on x1/x2 has standard deviation ``noise_std_fraction`` times the box width (x2 - x1),
    on y1/y2 that fraction of its height; each offset is clamped to ``±max_noise`` pixels (the
    SAM paper: "standard deviation equal to 10% of the box sidelength, to a maximum of 20
    pixels"). The noisy box is clipped to ``[0, W - 1] x [0, H - 1]``; its corners are not
    re-sorted (crossing would need a ~7-sigma draw).

    Arguments:
        boxes: N x 4 XYXY float.
        generator: a ``torch.Generator`` on the boxes' device.
        image_size: (H, W) of the frame the boxes live in.
    Returns:
        torch.Tensor: N x 4 float32.
    """
    _check_generator(generator, boxes.device)
    boxes = boxes.to(torch.float32)
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # (w, h, w, h)
    noise = torch.randn(boxes.shape, generator=generator, device=boxes.device) * noise_std_fraction * sides
    height, width = image_size
    upper = boxes.new_tensor([width - 1, height - 1, width - 1, height - 1])
    return torch.clamp(boxes + noise.clamp(-max_noise, max_noise), min=torch.zeros_like(upper), max=upper)


# --------------------------------------------------------------------------------------------
# Deterministic clicks (evaluation, simulated annotator)
# --------------------------------------------------------------------------------------------


def _column_squared_distance(masks: torch.Tensor) -> torch.Tensor:
    """Squared distance from each pixel to the nearest background pixel of its column.

    Rows -1 and H count as background. Exact, O(N·H·W): the nearest background above is a
    running maximum of background row indices, the nearest below a reversed running minimum.

    Arguments:
        masks: N x H x W bool.
    Returns:
        torch.Tensor: N x H x W int32.
    """
    height = masks.shape[1]
    columns = masks.transpose(1, 2).contiguous()  # N x W x H: scan along the last, contiguous axis
    rows = torch.arange(height, dtype=torch.int32, device=masks.device)
    above = torch.cummax(torch.where(columns, -1, rows), dim=-1).values
    below = torch.cummin(torch.where(columns, height, rows).flip(-1), dim=-1).values.flip(-1)
    distance = torch.minimum(rows - above, below - rows)
    return (distance * distance).transpose(1, 2).contiguous()


def _row_lower_envelope(f: torch.Tensor) -> torch.Tensor:
    """``out[b, j] = min_k (j - k)^2 + f[b, k]`` for every row b of f, exactly.

    Brute force over the horizontal offset d = |j - k| = 1, 2, ..., which stops for a row as soon
    as d^2 reaches the largest value still in it (no farther column can lower it). The number of
    passes is the largest Euclidean distance in the batch; rows that are done drop out of the
    working set (compacted whenever it halves), so small masks cost little beside a large one.

    Arguments:
        f: B x n int32, non-negative.
    Returns:
        torch.Tensor: B x n int32.
    """
    best = f.clone()
    active_rows = None  # None: every row, working on ``best`` itself
    f_work, best_work = f, best
    offset = 1
    while True:
        still_open = best_work.amax(dim=-1) > offset * offset
        num_open = int(still_open.sum())  # one host synchronisation per offset
        if num_open == 0:
            break
        if num_open <= best_work.shape[0] // 2:
            if active_rows is not None:
                best[active_rows] = best_work
            active_rows = still_open.nonzero()[:, 0] if active_rows is None else active_rows[still_open]
            f_work, best_work = f[active_rows], best[active_rows]
        square = offset * offset
        torch.minimum(best_work[:, :-offset], f_work[:, offset:] + square, out=best_work[:, :-offset])
        torch.minimum(best_work[:, offset:], f_work[:, :-offset] + square, out=best_work[:, offset:])
        offset += 1
    if active_rows is not None:
        best[active_rows] = best_work
    return best


def squared_distance_transform(masks: torch.Tensor) -> torch.Tensor:
    """Exact squared Euclidean distance from each mask pixel to the nearest pixel outside the mask.

    Pixels outside the image count as background, so the image border is a boundary: this equals
    ``cv2.distanceTransform(np.pad(mask, 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1] ** 2``
    (RITM's padded convention). Background pixels get 0, an isolated pixel 1.

    Separable, as Felzenszwalb & Huttenlocher: exact squared distances along each column first,
    then ``min_k (j - k)^2 + g(k)`` along each row (``_row_lower_envelope``). Cost: O(N·H·W) for
    the columns plus O(R·N·H·W) at most for the rows, R the largest distance in the batch;
    a few N x H x W int32/int64 temporaries.

    Arguments:
        masks: N x H x W bool.
    Returns:
        torch.Tensor: N x H x W int32 (take ``.float().sqrt()`` for the distance itself).
    """
    _check_masks(masks)
    n, height, width = masks.shape
    column_sq = F.pad(_column_squared_distance(masks), (1, 1))  # columns -1 and W: background
    envelope = _row_lower_envelope(column_sq.view(n * height, width + 2))
    return envelope.view(n, height, width + 2)[:, :, 1:-1].contiguous()


def _deepest_pixels(masks: torch.Tensor, excluded: Clicks | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared depth and position of each mask's pixel farthest from its boundary.

    Ties go to the first pixel in raster order (row-major), as ``torch.argmax`` documents.

    Arguments:
        masks: N x H x W bool.
        excluded: clicks (N x K x 2 points, N x K labels) whose pixels may not be chosen
            (their depth counts as 0); padding clicks (label -1) are ignored.
    Returns:
        (N int32 squared depth, 0 for an empty mask; N x 2 float32 (x, y) point).
    """
    n, height, width = masks.shape
    depth = squared_distance_transform(masks).view(n, height * width)
    if excluded is not None:
        x, y = excluded.points.round().long().unbind(-1)
        flat = y.clamp(0, height - 1) * width + x.clamp(0, width - 1)  # N x K
        # 0 at each real click's pixel; padding clicks bring the largest value, which changes nothing.
        floor = torch.full_like(flat, torch.iinfo(depth.dtype).max, dtype=depth.dtype)
        depth = depth.scatter_reduce(1, flat, floor.masked_fill(excluded.labels != PADDING, 0), "amin")
    deepest = depth.argmax(dim=-1)
    return depth.gather(1, deepest[:, None])[:, 0], _flat_index_to_points(deepest, width)


def farthest_from_boundary_points(masks: torch.Tensor) -> Clicks:
    """A positive click at the pixel of each mask farthest from its boundary (SAM's 1-point eval).

    The image border counts as boundary; ties go to the first pixel in raster order.

    Arguments:
        masks: N x H x W bool.
    Returns:
        Clicks: points N x 2; labels N, 1, or -1 with point (0, 0) where the mask is empty.
    """
    depth, points = _deepest_pixels(masks)
    return _padded_where(depth > 0, points, torch.full_like(depth, POSITIVE, dtype=torch.int64))


def largest_error_region_clicks(
    pred_masks: torch.Tensor, gt_masks: torch.Tensor, *, previous: Clicks | None = None
) -> Clicks:
    """The interactive-evaluation click (RITM, SAM): at the centre of the largest error region.

    RITM's ``Clicker._get_next_click``, batched: take the distance transforms of the false
    negatives (truth, not predicted) and false positives (predicted, not truth), each with the
    image border as boundary; the click goes to the deepest pixel of whichever map reaches
    farther, positive for false negatives, negative for false positives (negative on a tie, as
    RITM); within a map, ties go to the first pixel in raster order. With an empty prediction
    this is ``farthest_from_boundary_points(gt_masks)``.

    Arguments:
        pred_masks, gt_masks: N x H x W bool, same shape.
        previous: optional clicks already made (points N x K x 2, labels N x K); their pixels are
            never chosen again (RITM's ``not_clicked_map``). Padding clicks are ignored.
    Returns:
        Clicks: points N x 2; labels N, 1 or 0, or -1 with point (0, 0) where there is no error
        left to click on.
    """
    _check_mask_pair(pred_masks, gt_masks)
    errors = torch.cat([gt_masks & ~pred_masks, pred_masks & ~gt_masks])  # 2N: false neg., false pos.
    if previous is not None:
        previous = Clicks(previous.points.repeat(2, 1, 1), previous.labels.repeat(2, 1))
    depth, points = _deepest_pixels(errors, previous)
    (fn_depth, fp_depth), (fn_points, fp_points) = depth.chunk(2), points.chunk(2)
    positive = fn_depth > fp_depth
    return _padded_where(
        torch.maximum(fn_depth, fp_depth) > 0,
        torch.where(positive[:, None], fn_points, fp_points),
        positive.long(),
    )


# --------------------------------------------------------------------------------------------
# Assembling the interaction
# --------------------------------------------------------------------------------------------


def append_click(
    points: torch.Tensor, labels: torch.Tensor, new_points: torch.Tensor, new_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Append one click per mask to the accumulated clicks.

    Arguments:
        points: N x K x 2, labels: N x K (K may be 0).
        new_points: N x 2, new_labels: N (padding clicks, label -1, are kept as they are).
    Returns:
        (N x (K + 1) x 2 points, N x (K + 1) labels).
    """
    return (
        torch.cat([points, new_points[:, None].to(points.dtype)], dim=1),
        torch.cat([labels, new_labels[:, None].to(labels.dtype)], dim=1),
    )


def interactive_schedule(generator: torch.Generator, num_click_rounds: int = 8) -> list[bool]:
    """What each decoder pass after the first does in SAM's simulated interaction.

    SAM (appendix A): after the initial prompt, ``num_click_rounds`` passes each add one error
    click, and two passes add no new click (only the previous logits as mask prompt): one at a
    random position among the click passes, one at the end. With the default 8 that is
    1 + 8 + 2 = 11 decoder passes.

    The random mask-only pass is inserted before one of the click passes, chosen uniformly
    (right after the initial prompt is possible; right before the final mask-only pass is not).

    Arguments:
        generator: a ``torch.Generator`` (any device; one scalar is drawn and read back).
    Returns:
        list[bool] of ``num_click_rounds + 2`` entries for passes 2, 3, ...: True adds a click,
        False is mask-only. The last entry is always False.
    """
    position = int(torch.randint(num_click_rounds, (1,), generator=generator, device=generator.device))
    schedule = [True] * num_click_rounds
    schedule.insert(position, False)
    return [*schedule, False]
