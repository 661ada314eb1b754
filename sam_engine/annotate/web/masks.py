"""Masks as the page and the server exchange them: PNG images with the mask in the alpha channel.

The page draws a mask by tinting such a PNG (canvas compositing, no pixel loop) and paints its brush
strokes on a canvas of the same kind, which it sends back as a PNG when a mask is accepted.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, UnidentifiedImageError


class MaskPngError(ValueError):
    """A mask sent by the page is not a PNG of the expected size."""


def mask_to_png(mask: np.ndarray) -> str:
    """An H x W bool mask as a base64 PNG: grey + alpha, alpha 255 inside the mask and 0 outside."""
    alpha = mask.astype(np.uint8) * 255
    pixels = np.stack([alpha, alpha], axis=-1)  # H x W x 2: white where the mask is, transparent elsewhere
    out = io.BytesIO()
    Image.fromarray(pixels, mode="LA").save(out, format="PNG", compress_level=1)
    return base64.b64encode(out.getvalue()).decode("ascii")


def png_to_mask(data: str, size: tuple[int, int]) -> np.ndarray:
    """The H x W bool mask of a base64 PNG (its alpha channel >= 128; a PNG without alpha: its grey level).

    Arguments:
        data: base64 text, optionally a ``data:image/png;base64,`` URL.
        size: (H, W) the mask must have; the header is checked before any pixel is decoded.
    Raises:
        MaskPngError: not base64, not a PNG, or of another size.
    """
    text = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        raw = base64.b64decode(text, validate=True)
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as image:
            if (image.height, image.width) != tuple(size):
                raise MaskPngError(f"the mask is {image.width}x{image.height}, the image {size[1]}x{size[0]}")
            image.load()
            channel = image.getchannel("A") if "A" in image.getbands() else image.convert("L")
    except (ValueError, OSError, UnidentifiedImageError) as exc:
        if isinstance(exc, MaskPngError):
            raise
        raise MaskPngError(f"the mask is not a base64 PNG ({exc})") from None
    return np.asarray(channel) >= 128
