"""Batched ``min_mask_region_area`` post-processing of the automatic mask generator.

The official ``SamAutomaticMaskGenerator.postprocess_small_regions`` loops over masks in Python and,
for each one, calls ``segment_anything.utils.amg.remove_small_regions`` twice (mode ``"holes"``, then
mode ``"islands"``), i.e. two ``cv2.connectedComponentsWithStats`` calls and two ``np.isin`` per mask.
Here a whole chunk of masks is labelled by one OpenCV call per pass: the masks are stacked vertically
into one image with zero rows between them (8-connectivity never crosses a zero row, so no component
spans two masks), and the component statistics are mapped back to their masks with NumPy.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["DEFAULT_MAX_PIXELS_PER_CALL", "remove_small_regions"]

#: Default bound on the pixels (separator rows included) of the image handed to one OpenCV call.
#: One call's working set is ~10 bytes per pixel (uint8 image, int32 labels, their gathered copy,
#: bool look-up output), up to ~20 for pathological masks with a component every other pixel (stats,
#: centroids and OpenCV's union-find grow with the number of components): ~10 MB typical, ~20 MB
#: worst at 2**20. Bigger stacks do not pay: OpenCV's labelling is cache-bound, so a call's time per
#: pixel grows with the stack beyond a few MB, while the per-chunk overhead is small
#: (docs/performance.md). 2**20 is 3 masks of 512 x 512, 60 of 128 x 128; an SA-1B-sized mask
#: (1500 x 2250) goes alone.
DEFAULT_MAX_PIXELS_PER_CALL = 2**20


def remove_small_regions(
    masks: np.ndarray,
    min_area: float,
    max_pixels_per_call: int = DEFAULT_MAX_PIXELS_PER_CALL,
) -> tuple[np.ndarray, np.ndarray]:
    """Fill small holes, then remove small islands, in every mask of a batch.

    Exactly the official per-mask post-processing of ``SamAutomaticMaskGenerator`` with
    ``min_mask_region_area=min_area``, for every mask ``m`` of the batch::

        m, changed_holes = segment_anything.utils.amg.remove_small_regions(m, min_area, "holes")
        m, changed_islands = segment_anything.utils.amg.remove_small_regions(m, min_area, "islands")
        changed = changed_holes or changed_islands

    - "holes": every 8-connected component of ``~m`` with fewer than ``min_area`` pixels is filled,
      the background component touching the image border included (it is a component like any
      other);
    - "islands": every 8-connected component of ``m`` with fewer than ``min_area`` pixels is removed,
      except that if every component is small the largest one is kept (ties go to the first in
      OpenCV's label order, as the official ``np.argmax`` does);
    - ``changed`` is True when either pass found a small component, also where the "islands"
      fallback then kept the mask's only component (so the mask itself is unchanged).

    The result is identical to the official function, including the tie-break: each mask starts on
    an even row of the stacked image, so OpenCV's 2 x 2-block labelling orders a mask's components
    exactly as it does for the mask alone.

    Memory is bounded: masks are processed in chunks, and each ``cv2.connectedComponentsWithStats``
    call sees at most ``max_pixels_per_call`` pixels (separator rows counted), except that a single
    mask larger than that is processed alone. The loop runs over chunks, never over masks. Besides
    the output, one chunk costs ~10 bytes per pixel (see ``DEFAULT_MAX_PIXELS_PER_CALL``).

    Arguments:
      masks (np.ndarray): NxHxW bool (other dtypes are read as ``!= 0``). Not modified.
      min_area (float): components with fewer pixels than this are small; ``min_area <= 1`` (no
        component is that small, ``min_area <= 0`` included) returns a copy of ``masks``.
      max_pixels_per_call (int): the bound on the pixels of one OpenCV call, >= 1.

    Returns:
      (np.ndarray): NxHxW bool, the post-processed masks (a new array).
      (np.ndarray): N bool, whether each mask had a small hole or a small island.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"remove_small_regions: masks must be N x H x W, got shape {masks.shape}")
    if max_pixels_per_call < 1:
        raise ValueError(f"remove_small_regions: max_pixels_per_call must be >= 1, got {max_pixels_per_call}")
    masks = masks.astype(bool, copy=False)
    n, h, w = masks.shape
    out = masks.copy()
    changed = np.zeros(n, dtype=bool)
    # Components have >= 1 pixel, so nothing is small unless min_area > 1.
    if n == 0 or h == 0 or w == 0 or not min_area > 1:
        return out, changed

    stride = h + 1 + (h + 1) % 2  # rows per mask in the stacked image: even, >= h + 1 (one zero row)
    per_call = max(1, max_pixels_per_call // (stride * w))
    for start in range(0, n, per_call):
        stop = min(start + per_call, n)
        changed[start:stop] = _chunk(out[start:stop], min_area, stride)
    return out, changed


def _label(buf: np.ndarray, min_area: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Label the stacked chunk ``buf`` (K x S x W uint8, 0/1, rows >= H of each mask zero).

    Returns:
      labels (np.ndarray): K x S x W int32, OpenCV's 8-connectivity labels (0 = background).
      owner (np.ndarray): L int, the mask of component ``l + 1`` (from the top row of its bbox).
      area (np.ndarray): L int32, the pixel count of component ``l + 1``.
      small (np.ndarray): L bool, ``area < min_area``.
    """
    k, s, w = buf.shape
    _, labels, stats, _ = cv2.connectedComponentsWithStats(buf.reshape(k * s, w), connectivity=8, ltype=cv2.CV_32S)
    area = stats[1:, cv2.CC_STAT_AREA]
    owner = stats[1:, cv2.CC_STAT_TOP] // s
    return labels.reshape(k, s, w), owner, area, area < min_area


def _chunk(out: np.ndarray, min_area: float, stride: int) -> np.ndarray:
    """Both passes on one chunk, in place.

    Arguments:
      out (np.ndarray): KxHxW bool, the chunk's masks; overwritten with the result.
      min_area (float): the area threshold.
      stride (int): rows per mask in the stacked image (even, >= H + 1).

    Returns:
      (np.ndarray): K bool, the chunk's ``changed`` flags.
    """
    k, h, _ = out.shape
    buf = np.zeros((k, stride, out.shape[2]), dtype=np.uint8)
    body = buf[:, :h].view(bool)  # the mask rows; the separator rows stay 0 in both passes

    # "holes": components of ~mask; label 0 is the mask itself (and the separators), never filled.
    np.logical_not(out, out=body)
    labels, owner, _, small = _label(buf, min_area)
    changed = np.zeros(k, dtype=bool)
    changed[owner[small]] = True
    idx = np.flatnonzero(changed)
    if idx.size:
        fill = np.concatenate(([False], small))
        out[idx] |= fill[labels[idx, :h]]

    # "islands": components of the mask; keep the large ones, or the largest if all are small.
    body[...] = out
    labels, owner, area, small = _label(buf, min_area)
    islands = np.zeros(k, dtype=bool)
    islands[owner[small]] = True
    idx = np.flatnonzero(islands)
    if idx.size:
        keep = np.concatenate(([False], ~small))
        n_large = np.bincount(owner[~small], minlength=k)
        fallback = islands & (n_large == 0)  # masks whose every component is small
        comp = np.flatnonzero(fallback[owner])  # their components, in label order
        if comp.size:
            largest = np.zeros(k, dtype=area.dtype)
            np.maximum.at(largest, owner[comp], area[comp])
            comp = comp[area[comp] == largest[owner[comp]]]
            _, first = np.unique(owner[comp], return_index=True)  # first in label order = np.argmax
            keep[comp[first] + 1] = True
        out[idx] = keep[labels[idx, :h]]
    return changed | islands
