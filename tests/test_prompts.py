"""Prompt sampling: where the clicks land, their statistics, and parity with cv2/RITM references."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from sam_engine.train.prompts import (
    Clicks,
    append_click,
    farthest_from_boundary_points,
    interactive_schedule,
    largest_error_region_clicks,
    mask_boxes,
    noisy_boxes,
    sample_error_clicks,
    sample_points_in_masks,
    squared_distance_transform,
)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_masks(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Ellipses of varied sizes (some cut by the border) with speckle; the last mask is empty."""
    g = _generator(seed)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    centres = torch.rand(n, 2, 1, 1, generator=g) * torch.tensor([width, height]).view(1, 2, 1, 1)
    radii = (0.05 + 0.5 * torch.rand(n, 2, 1, 1, generator=g)) * min(height, width)
    ellipses = ((xs - centres[:, 0]) / radii[:, 0]) ** 2 + ((ys - centres[:, 1]) / radii[:, 1]) ** 2 < 1
    speckle = torch.rand(n, height, width, generator=g) < 0.03
    masks = ellipses ^ speckle
    masks[-1] = False
    return masks


def _perturbed(masks: torch.Tensor, seed: int) -> torch.Tensor:
    """A plausible imperfect prediction: shifted masks with some pixels flipped."""
    flips = torch.rand(masks.shape, generator=_generator(seed)) < 0.02
    return torch.roll(masks, shifts=(2, -3), dims=(1, 2)) ^ flips


def _pixels_at(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    x, y = points.long().unbind(-1)
    return masks[torch.arange(masks.shape[0]), y, x]


def _cv2_distance(mask: np.ndarray) -> np.ndarray:
    """RITM's convention: distance transform of the mask padded with background, then cropped."""
    padded = np.pad(mask.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def _ritm_click(pred: np.ndarray, gt: np.ndarray, not_clicked: np.ndarray) -> tuple[tuple[int, int], int]:
    """RITM's ``Clicker._get_next_click`` (isegm/inference/clicker.py), one mask at a time."""
    fn_dt = _cv2_distance(gt & ~pred) * not_clicked
    fp_dt = _cv2_distance(pred & ~gt) * not_clicked
    fn_max, fp_max = fn_dt.max(), fp_dt.max()
    if max(fn_max, fp_max) == 0:
        return (0, 0), -1
    is_positive = fn_max > fp_max
    ys, xs = np.where(fn_dt == fn_max) if is_positive else np.where(fp_dt == fp_max)
    return (int(xs[0]), int(ys[0])), int(is_positive)


# --------------------------------------------------------------------------------------------
# Uniform points
# --------------------------------------------------------------------------------------------


def test_sampled_points_lie_inside_their_masks_and_empty_masks_get_padding():
    masks = _random_masks(24, 37, 53, seed=1)
    points, labels = sample_points_in_masks(masks, _generator())
    assert points.shape == (24, 2) and points.dtype == torch.float32
    assert labels[:-1].eq(1).all() and labels[-1] == -1
    assert _pixels_at(masks[:-1], points[:-1]).all()
    assert points[-1].tolist() == [0.0, 0.0]


def test_sampled_points_are_uniform_over_the_mask():
    # Rows of very different widths: a sampler that picked a row uniformly first would fail.
    mask = torch.zeros(5, 8, dtype=torch.bool)
    mask[0, 3] = True
    mask[1, 1:8] = True
    mask[2, 2:4] = True
    mask[4, [0, 2, 4, 6, 7]] = True
    num_pixels, draws = int(mask.sum()), 30_000
    points, _ = sample_points_in_masks(mask.expand(draws, -1, -1), _generator(3))
    flat = points[:, 1].long() * mask.shape[1] + points[:, 0].long()
    counts = torch.bincount(flat, minlength=mask.numel()).float()
    assert counts[~mask.flatten()].sum() == 0
    expected = draws / num_pixels
    chi_square = ((counts[mask.flatten()] - expected) ** 2 / expected).sum().item()
    assert chi_square < 36.12  # chi-square critical value, 14 degrees of freedom, p = 0.001


def test_sampling_is_reproducible_under_a_seed():
    masks = _random_masks(16, 32, 32, seed=2)
    first = sample_points_in_masks(masks, _generator(7))
    again = sample_points_in_masks(masks, _generator(7))
    other = sample_points_in_masks(masks, _generator(8))
    assert torch.equal(first.points, again.points)
    assert not torch.equal(first.points, other.points)


def test_generator_on_another_device_is_refused():
    with pytest.raises(ValueError, match="generator"):
        sample_points_in_masks(torch.ones(1, 4, 4, dtype=torch.bool, device="meta"), _generator())


# --------------------------------------------------------------------------------------------
# Error clicks (training)
# --------------------------------------------------------------------------------------------


def test_error_clicks_land_in_the_error_region_with_the_right_label():
    gt = _random_masks(32, 40, 40, seed=4)
    pred = _perturbed(gt, seed=5)
    pred[0] = gt[0]  # a perfect prediction
    points, labels = sample_error_clicks(pred, gt, _generator())
    assert labels[0] == -1 and points[0].tolist() == [0.0, 0.0]
    clicked = slice(1, None)
    assert _pixels_at(pred[clicked] ^ gt[clicked], points[clicked]).all()
    assert torch.equal(labels[clicked], _pixels_at(gt[clicked], points[clicked]).long())
    assert set(labels[clicked].tolist()) == {0, 1}


def test_error_clicks_are_uniform_over_false_negatives_and_false_positives():
    gt = torch.zeros(6, 10, dtype=torch.bool)
    gt[:, :5] = True
    pred = torch.zeros_like(gt)
    pred[:3, :5] = True  # rows 3..5: 3 x 5 = 15 false negatives
    pred[:, 5:] = True  # 6 x 5 = 30 false positives
    draws = 20_000
    _, labels = sample_error_clicks(pred.expand(draws, -1, -1), gt.expand(draws, -1, -1), _generator(9))
    assert labels.float().mean().item() == pytest.approx(15 / 45, abs=0.01)


# --------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------


def test_mask_boxes_use_inclusive_max_coordinates():
    masks = torch.zeros(2, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:8] = True  # rows 2..4, columns 3..7
    assert mask_boxes(masks).tolist() == [[3.0, 2.0, 7.0, 4.0], [0.0, 0.0, 0.0, 0.0]]


def test_box_noise_has_a_tenth_of_the_side_as_std_and_is_bounded():
    draws = 20_000
    small = torch.tensor([[200.0, 300.0, 260.0, 340.0]]).expand(draws, -1)  # 60 x 40: std 6 and 4 px
    noise = noisy_boxes(small, _generator(1), image_size=(1000, 1000)) - small
    std = noise.std(dim=0)
    assert std.tolist() == pytest.approx([6.0, 4.0, 6.0, 4.0], rel=0.03)
    assert noise.mean(dim=0).abs().max() < 0.15

    large = torch.tensor([[100.0, 100.0, 600.0, 500.0]]).expand(draws, -1)  # std 50 and 40: clamped
    noise = noisy_boxes(large, _generator(2), image_size=(1000, 1000)) - large
    assert noise.abs().max() <= 20.0
    assert (noise.abs() == 20.0).float().mean() > 0.5


def test_noisy_boxes_stay_inside_the_image_and_are_reproducible():
    boxes = torch.tensor([[0.0, 0.0, 99.0, 49.0], [10.0, 5.0, 90.0, 45.0]]).repeat(500, 1)
    noisy = noisy_boxes(boxes, _generator(3), image_size=(50, 100))
    assert noisy.min() >= 0
    assert (noisy[:, [0, 2]] <= 99).all() and (noisy[:, [1, 3]] <= 49).all()
    assert torch.equal(noisy, noisy_boxes(boxes, _generator(3), image_size=(50, 100)))


# --------------------------------------------------------------------------------------------
# Distance transform and deterministic clicks (evaluation)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(41, 41), (23, 64), (64, 17)])
def test_distance_transform_equals_cv2_with_the_border_as_background(height, width):
    masks = _random_masks(20, height, width, seed=height + width)
    masks[0] = True  # the whole image: distances to the border only
    masks[1] = False
    masks[1, 0, width - 1] = True  # one pixel in a corner
    squared = squared_distance_transform(masks)
    assert squared.dtype == torch.int32
    expected = np.stack([_cv2_distance(m) for m in masks.numpy()])
    np.testing.assert_allclose(squared.float().sqrt().numpy(), expected, atol=1e-4)


def test_farthest_point_is_the_first_maximum_of_cv2_distance():
    masks = _random_masks(20, 48, 40, seed=11)
    masks[0] = False
    masks[0, 10:20, 5:15] = True  # a square: a block of tied centre pixels; raster order decides
    points, labels = farthest_from_boundary_points(masks)
    assert labels[:-1].eq(1).all() and labels[-1] == -1
    for mask, point in zip(masks[:-1].numpy(), points[:-1].long().tolist(), strict=True):
        distance = _cv2_distance(mask)
        row, col = np.unravel_index(np.argmax(distance), distance.shape)
        assert point == [col, row]
    assert points[0].tolist() == [9.0, 14.0]


def test_largest_error_region_click_matches_ritm():
    gt = _random_masks(24, 40, 36, seed=12)
    pred = _perturbed(gt, seed=13)
    pred[0] = gt[0]  # no error: padding
    gt[1] = False  # only false positives
    pred[2] = False  # only false negatives
    points, labels = largest_error_region_clicks(pred, gt)
    everywhere = np.ones(gt.shape[1:], dtype=np.float32)
    for i, (p, g) in enumerate(zip(pred.numpy(), gt.numpy(), strict=True)):
        point, label = _ritm_click(p, g, everywhere)
        assert (points[i].long().tolist(), labels[i].item()) == (list(point), label), f"mask {i}"
    assert labels[:3].tolist() == [-1, 0, 1]


def test_largest_error_region_click_skips_pixels_already_clicked():
    gt = _random_masks(12, 32, 32, seed=14)[:-1]
    pred = _perturbed(gt, seed=15)
    first = largest_error_region_clicks(pred, gt)
    previous = Clicks(first.points[:, None], first.labels[:, None])
    second = largest_error_region_clicks(pred, gt, previous=previous)
    for i, (p, g) in enumerate(zip(pred.numpy(), gt.numpy(), strict=True)):
        not_clicked = np.ones(g.shape, dtype=np.float32)
        x, y = first.points[i].long().tolist()
        not_clicked[y, x] = 0
        point, label = _ritm_click(p, g, not_clicked)
        assert (second.points[i].long().tolist(), second.labels[i].item()) == (list(point), label)


def test_first_evaluation_click_is_the_farthest_point_of_the_truth():
    gt = _random_masks(10, 30, 30, seed=16)
    click = largest_error_region_clicks(torch.zeros_like(gt), gt)
    farthest = farthest_from_boundary_points(gt)
    assert torch.equal(click.points, farthest.points) and torch.equal(click.labels, farthest.labels)


# --------------------------------------------------------------------------------------------
# Assembling the interaction
# --------------------------------------------------------------------------------------------


def test_append_click_grows_the_prompt_by_one_click():
    points, labels = torch.zeros(3, 0, 2), torch.zeros(3, 0, dtype=torch.int64)
    for k in range(2):
        new = Clicks(torch.full((3, 2), float(k)), torch.tensor([1, 0, -1]))
        points, labels = append_click(points, labels, *new)
    assert points.shape == (3, 2, 2) and labels.shape == (3, 2)
    assert points[:, 1].eq(1.0).all() and labels.tolist() == [[1, 1], [0, 0], [-1, -1]]


def test_schedule_has_eleven_passes_with_two_mask_only_ones():
    schedule = interactive_schedule(_generator(0))
    assert len(schedule) == 10  # passes 2..11, after the initial prompt
    assert schedule.count(True) == 8 and schedule[-1] is False
    assert schedule[:-1].count(False) == 1


def test_schedule_mask_only_position_is_random_and_reproducible():
    positions = {interactive_schedule(_generator(seed))[:-1].index(False) for seed in range(200)}
    assert positions == set(range(8))  # before any of the 8 clicks, never after the last
    assert interactive_schedule(_generator(5)) == interactive_schedule(_generator(5))
