"""Where the automatic mask generator looks: point grids and crop boxes, with SAM's exact arithmetic.

The generator prompts the model with a regular grid of points over the whole image (layer 0) and,
optionally, over overlapping crops: layer i cuts the image into 2^i x 2^i crops and samples
``points_per_side / downscale^i`` points per side in each. The formulas (rounding included) are those of
``segment_anything.utils.amg`` so that grids and crops, and therefore masks, are identical.
"""

from __future__ import annotations

import math

import numpy as np


def point_grid(n_per_side: int) -> np.ndarray:
    """n^2 x 2 points (x, y) in [0, 1]^2 at the centres of an n x n grid of cells, row by row."""
    offset = 1 / (2 * n_per_side)
    one_side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(one_side[None, :], (n_per_side, 1))
    ys = np.tile(one_side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def layer_point_grids(n_per_side: int, n_layers: int, downscale_factor: int) -> list[np.ndarray]:
    """The point grid of crop layers 0..n_layers: layer i has ``int(n_per_side / downscale_factor**i)``
    points per side."""
    return [point_grid(int(n_per_side / downscale_factor**i)) for i in range(n_layers + 1)]


def crop_boxes(image_size: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """Crop boxes of every layer: the whole image, then 2^i x 2^i overlapping crops for layer i = 1..n_layers.

    In layer i the crops overlap by ``overlap_ratio * short_side * 2 / 2^i`` pixels.

    Arguments:
        image_size: (H, W).
    Returns:
        boxes: XYXY pixel boxes (x1, y1 exclusive); layers: the layer of each box.
    """
    height, width = image_size
    short_side = min(height, width)
    boxes, layers = [[0, 0, width, height]], [0]

    def crop_length(length: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + length) / n_crops))

    for layer in range(1, n_layers + 1):
        n_crops = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / n_crops))
        crop_w = crop_length(width, n_crops, overlap)
        crop_h = crop_length(height, n_crops, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n_crops)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_crops)]
        for x0 in x0s:
            for y0 in y0s:
                boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
                layers.append(layer)
    return boxes, layers
