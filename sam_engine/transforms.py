"""Geometry shared by the predictor and the data loader: SAM's resize-longest-side, normalise and pad.

SAM feeds its image encoder a square ``img_size`` x ``img_size`` input: the image is resized so
that its longest side is ``img_size`` (aspect ratio kept), normalised with the pixel mean and
standard deviation, and zero-padded at the bottom and right. Prompts follow the same scaling.
Everything here reproduces the official ``segment_anything`` arithmetic exactly (rounding
included), so coordinates and masks agree with it to the pixel.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """Size (h, w) of an image of ``height`` x ``width`` resized so that its longest side is ``long_side``.

    SAM's rounding, but never below 1 pixel: a 1 x 300 strip at 128 px would otherwise be 0 pixels high
    (where the official ``ResizeLongestSide`` fails); every other size is the official one.
    """
    scale = long_side * 1.0 / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_image(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize an HxWx3 uint8 image so its longest side is ``long_side`` (PIL bilinear, as SAM).

    Returns:
        np.ndarray: h x w x 3 uint8.
    """
    h, w = preprocess_shape(image.shape[0], image.shape[1], long_side)
    return np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def scale_coords(coords: torch.Tensor | np.ndarray, original_size: tuple[int, int], long_side: int):
    """Map (x, y) pixel coordinates of the original image into the resized frame.

    Arguments:
        coords: ... x 2 array or tensor of (x, y); boxes as ... x 4 (XYXY) work too, since
            x and y alternate.
        original_size: (H, W) of the original image.
    Returns:
        The same shape, as float64 numpy or float32 torch.
    """
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    if isinstance(coords, torch.Tensor):
        coords = coords.to(torch.float32).clone()
    else:
        coords = np.array(coords, dtype=np.float64)
    coords[..., 0::2] = coords[..., 0::2] * (new_w / old_w)
    coords[..., 1::2] = coords[..., 1::2] * (new_h / old_h)
    return coords


def normalize_and_pad(
    images: torch.Tensor, img_size: int, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """Normalise pixel values and zero-pad at the bottom/right to ``img_size``.

    Arguments:
        images: B x 3 x h x w, pixel values in 0..255 (any float or uint8 dtype), h, w <= img_size.
        mean, std: 3 x 1 x 1.
    Returns:
        torch.Tensor: B x 3 x img_size x img_size, float.
    """
    h, w = images.shape[-2:]
    if h > img_size or w > img_size:
        raise ValueError(f"image of {h}x{w} is larger than the model input {img_size}x{img_size}")
    images = (images.to(mean.dtype) - mean) / std
    return F.pad(images, (0, img_size - w, 0, img_size - h))
