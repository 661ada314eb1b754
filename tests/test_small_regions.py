"""Batched small-region removal against the official per-mask ``remove_small_regions``."""

import cv2
import numpy as np
import pytest
from segment_anything.utils.amg import remove_small_regions as official_remove_small_regions

from sam_engine.amg.small_regions import remove_small_regions


def official(masks: np.ndarray, min_area: float) -> tuple[np.ndarray, np.ndarray]:
    """The official post-processing (holes then islands), one mask at a time: NxHxW, N."""
    out, changed = [], []
    for m in masks:
        m, changed_holes = official_remove_small_regions(m, min_area, mode="holes")
        m, changed_islands = official_remove_small_regions(m, min_area, mode="islands")
        out.append(m)
        changed.append(changed_holes or changed_islands)
    return np.array(out, dtype=bool).reshape(masks.shape), np.array(changed, dtype=bool)


def blobs(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """NxHxW masks: smooth random blobs (often touching the border) plus salt-and-pepper islands/holes."""
    cells = (max(1, h // 8), max(1, w // 8))
    noise = rng.random((n, *cells), dtype=np.float32)
    smooth = np.stack([cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR) for x in noise]).reshape(n, h, w)
    masks = smooth > rng.uniform(0.3, 0.7, size=(n, 1, 1))
    flip = rng.random((n, h, w)) < rng.uniform(0.0, 0.03, size=(n, 1, 1))
    return masks ^ flip


def sparse(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """NxHxW masks of scattered pixels and tiny clusters: every island small, many equal-size ties."""
    masks = rng.random((n, h, w)) < rng.uniform(0.005, 0.08, size=(n, 1, 1))
    grow = rng.random(n) < 0.5  # dilate half of them into equal-size 2x2-ish clusters
    for i in np.flatnonzero(grow):
        masks[i] = cv2.dilate(masks[i].astype(np.uint8), np.ones((2, 2), np.uint8)) > 0
    return masks


def special(h: int, w: int) -> np.ndarray:
    """Empty, full, one pixel in each corner, a border frame, a full mask with one-pixel holes."""
    empty = np.zeros((h, w), bool)
    full = np.ones((h, w), bool)
    corners = empty.copy()
    corners[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    frame = full.copy()
    frame[1:-1, 1:-1] = False
    holes = full.copy()
    holes[::3, ::4] = False
    return np.stack([empty, full, corners, frame, holes, ~corners, ~frame, ~holes])


SHAPES = [(1, 1), (1, 2), (2, 1), (1, 17), (17, 1), (2, 2), (3, 3), (2, 40), (5, 7), (7, 5)]
SHAPES += [(16, 16), (31, 40), (40, 33), (64, 63)]
MIN_AREAS = [0, 1, 2, 3, 5, 10, 25, 100, 10_000, 2.5]


def check(masks: np.ndarray, min_area: float, **kwargs) -> None:
    expected, expected_changed = official(masks, min_area)
    got, got_changed = remove_small_regions(masks, min_area, **kwargs)
    assert got.dtype == bool and got.shape == masks.shape
    assert got_changed.dtype == bool and got_changed.shape == (len(masks),)
    bad = np.flatnonzero((got != expected).any(axis=(1, 2)) | (got_changed != expected_changed))
    assert bad.size == 0, f"min_area={min_area} {kwargs}: masks {bad[:10].tolist()} differ"


@pytest.mark.parametrize("h,w", SHAPES)
@pytest.mark.parametrize("max_pixels_per_call", [1, 200, 2**24])
def test_matches_official(h, w, max_pixels_per_call):
    rng = np.random.default_rng(h * 1000 + w)
    masks = np.concatenate([blobs(rng, 12, h, w), sparse(rng, 12, h, w), special(h, w)])
    masks = masks[rng.permutation(len(masks))]  # special cases land in the middle of chunks too
    for min_area in MIN_AREAS:
        check(masks, min_area, max_pixels_per_call=max_pixels_per_call)


@pytest.mark.parametrize("h", [8, 9])
def test_ties_follow_opencv_label_order(h):
    """All islands equal and small: the kept one is the official argmax, in OpenCV's label order.

    OpenCV labels 2 x 2 blocks in raster order, so a pixel at (1, 0) comes before one at (0, 5); the
    stacked masks must start on even rows for their labels to keep the order they have alone.
    """
    rng = np.random.default_rng(h)
    masks = np.zeros((300, h, 11), bool)
    for i in range(len(masks)):  # isolated single pixels (3-pixel grid, jittered), any row parity
        ys, xs = np.nonzero(rng.random((3, 4)) < 0.3)
        masks[i, 3 * ys + rng.integers(0, 2, ys.size), 3 * xs + rng.integers(0, 2, xs.size)] = True
    masks[0, 1, 0] = masks[0, 0, 5] = True  # (1, 0) is later in raster order, earlier in 2x2 blocks
    for max_pixels_per_call in (1, h * 11 * 7, 2**24):
        check(masks, 2, max_pixels_per_call=max_pixels_per_call)


@pytest.mark.parametrize("threads", [1, 4])
def test_opencv_threads(threads):
    """OpenCV's parallel labelling splits the stacked image into stripes; the result must not depend on it."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        rng = np.random.default_rng(threads)
        masks = np.concatenate([blobs(rng, 20, 61, 50), sparse(rng, 20, 61, 50)])
        for min_area in (4, 30, 400):
            check(masks, min_area)
            check(masks, min_area, max_pixels_per_call=3000)
    finally:
        cv2.setNumThreads(before)


def test_empty_and_degenerate():
    for shape in [(0, 5, 7), (0, 0, 0), (3, 0, 4), (3, 4, 0)]:
        out, changed = remove_small_regions(np.zeros(shape, bool), 10)
        assert out.shape == shape and out.dtype == bool
        assert changed.shape == (shape[0],) and changed.dtype == bool


def test_nonpositive_min_area_is_identity():
    rng = np.random.default_rng(1)
    masks = blobs(rng, 5, 20, 30)
    for min_area in (0, -5, 1):
        out, changed = remove_small_regions(masks, min_area)
        assert np.array_equal(out, masks) and not changed.any()
        assert out is not masks


def test_input_not_modified_and_uint8_accepted():
    rng = np.random.default_rng(2)
    masks = blobs(rng, 6, 25, 25)
    copy = masks.copy()
    out_bool, changed_bool = remove_small_regions(masks, 20)
    assert np.array_equal(masks, copy)
    out_u8, changed_u8 = remove_small_regions(masks.astype(np.uint8), 20)
    assert np.array_equal(out_bool, out_u8) and np.array_equal(changed_bool, changed_u8)


def test_bad_input():
    with pytest.raises(ValueError, match="N x H x W"):
        remove_small_regions(np.zeros((4, 4), bool), 3)
    with pytest.raises(ValueError, match="max_pixels_per_call"):
        remove_small_regions(np.zeros((1, 4, 4), bool), 3, max_pixels_per_call=0)
