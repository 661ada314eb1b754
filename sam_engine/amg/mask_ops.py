"""Batched operations on mask logits and binary masks that the automatic mask generator filters with.

Every function works on a whole batch of masks on their device, with no loop over masks or pixels,
and computes exactly what the same-named step of ``segment_anything`` computes.
"""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils


def stability_scores(logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """IoU of the masks cut at ``mask_threshold + offset`` and at ``mask_threshold - offset``.

    A stable mask barely changes when its logits' cut-off moves. An empty low cut gives NaN (filtered).

    Arguments:
        logits: K x H x W.
    Returns:
        K float32.
    """
    flat = logits.flatten(-2)
    cut = torch.empty_like(flat)  # one buffer for both cuts
    inner = count_true(above(flat, mask_threshold + offset, cut))
    outer = count_true(above(flat, mask_threshold - offset, cut))
    return inner.float() / outer.float()


def above(values: torch.Tensor, threshold: float, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """``values > threshold`` as bool (NaN: False), through ``buffer``: a tensor like ``values``, overwritten
    (it may be ``values`` itself); a new one if None.

    The comparison writes 0/1 in the values' dtype, then converts to bool: on a CPU, PyTorch vectorises a
    comparison into its input's dtype but not into bool, so the two passes take less time than one
    (docs/performance.md).
    """
    buffer = torch.empty_like(values) if buffer is None else buffer
    return torch.gt(values, threshold, out=buffer).bool()


def count_true(flags: torch.Tensor) -> torch.Tensor:
    """K x L bool -> K int32: the number of True values in each row.

    The row is cut in 255 stretches that are added element-wise as uint8 (exact: at most 255 per
    position), vector by vector along contiguous memory; then the stretch's totals are summed in int32.
    Faster on a CPU than one sum of bools into int32, which converts every value first (docs/performance.md).
    """
    stretches = 255
    length = flags.shape[-1]
    whole = length - length % stretches
    bytes_ = flags.view(torch.uint8)
    partial = bytes_[:, :whole].view(len(flags), stretches, whole // stretches).sum(dim=1, dtype=torch.uint8)
    return partial.sum(dim=-1, dtype=torch.int32) + bytes_[:, whole:].sum(dim=-1, dtype=torch.int32)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes around masks, with inclusive pixel indices (x2 = last column), as SAM.

    Whether a row or column holds the mask is a maximum over its bytes: ``amax`` of uint8 is vectorised on a
    CPU, ``any`` of bool over the last dimension is not (docs/performance.md).

    Arguments:
        masks: K x H x W bool.
    Returns:
        K x 4 int64; an empty mask gets (0, 0, 0, 0).
    """
    if masks.shape[0] == 0:
        return torch.zeros(0, 4, dtype=torch.int64, device=masks.device)
    bytes_ = masks.view(torch.uint8)
    rows = bytes_.amax(dim=-1)  # K x H, 0 or 1
    cols = bytes_.amax(dim=-2)  # K x W
    height, width = rows.shape[1], cols.shape[1]
    top = rows.argmax(dim=1)
    bottom = height - 1 - rows.flip(1).argmax(dim=1)
    left = cols.argmax(dim=1)
    right = width - 1 - cols.flip(1).argmax(dim=1)
    boxes = torch.stack([left, top, right, bottom], dim=1).long()
    return boxes * rows.amax(dim=1, keepdim=True)


def near_crop_edge(boxes: torch.Tensor, crop_box: list[int], image_box: list[int], tolerance: float = 20.0):
    """Whether a box (in the crop's frame) touches an edge of its crop that is not an edge of the image.

    Such a mask is probably cut by the crop; the whole object is found in a larger crop.

    Arguments:
        boxes: K x 4 XYXY in the crop's frame.
        crop_box, image_box: XYXY in the image's frame.
    Returns:
        K bool.
    """
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    image = torch.as_tensor(image_box, dtype=torch.float, device=boxes.device)
    uncropped = (boxes + crop[[0, 1, 0, 1]].long()).float()
    at_crop_edge = torch.isclose(uncropped, crop[None], atol=tolerance, rtol=0)
    at_image_edge = torch.isclose(uncropped, image[None], atol=tolerance, rtol=0)
    return (at_crop_edge & ~at_image_edge).any(dim=1)


def uncrop_rles(rles: list[dict], crop_box: list[int], image_size: tuple[int, int]) -> list[dict]:
    """RLEs of masks in a crop's frame -> RLEs in the image's frame (zeros outside the crop).

    Arguments:
        crop_box: XYXY of the crop in the image. image_size: (H, W).
    """
    x0, y0, x1, y1 = crop_box
    height, width = image_size
    if not rles or (x0, y0, x1, y1) == (0, 0, width, height):
        return rles
    crop_masks = mask_utils.decode(rles)  # h x w x K, Fortran order
    full = np.zeros((height, width, len(rles)), dtype=np.uint8, order="F")
    full[y0:y1, x0:x1] = crop_masks
    return mask_utils.encode(full)
