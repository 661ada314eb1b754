"""Decoding image bytes to RGB, the way every reader in sam_engine does it.

Images are decoded with PIL, turned upright by their EXIF orientation, and converted to 8-bit RGB:

==================  =============================================================================
mode                conversion
==================  =============================================================================
RGB                 unchanged
L, 1, P, CMYK,      PIL's ``convert("RGB")`` (grey replicated; palette looked up; CMYK by PIL's
YCbCr, LAB, HSV     naive formula, no ICC profile)
RGBA, LA, PA, P     alpha dropped, colour kept as stored (as ``cv2.imread`` does, which SAM used);
with transparency   a palette with transparency goes through RGBA first
I;16, I;16B/L/N, I  16-bit grey scaled to 8 bits: round(v / 257) after clipping to [0, 65535]
F                   32-bit float grey rescaled linearly from its own [min, max] to [0, 255]
==================  =============================================================================

Errors are :class:`ImageDecodeError` naming the source (shard and key, or a path).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import ExifTags, Image, ImageOps

_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class ImageDecodeError(ValueError):
    """Image bytes that PIL cannot decode (zero-byte, truncated, unknown format, too large)."""


class ImageTooLarge(ImageDecodeError):
    """An image whose header claims more pixels than PIL's decompression-bomb guard lets it open."""


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(grey.astype(np.uint8), mode="L").convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB, as documented in the module docstring."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT:
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        return _grey_to_rgb((values + 128) // 257)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        return _grey_to_rgb(np.rint((values - low) * scale))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def _swaps_axes(image: Image.Image) -> bool:
    """Whether the image's EXIF orientation rotates it by 90 degrees."""
    return image.getexif().get(ExifTags.Base.Orientation, 1) in _SWAPS_AXES


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    """(H, W) of the image once its EXIF orientation is applied."""
    width, height = image.size
    return (width, height) if _swaps_axes(image) else (height, width)


def open_image(
    data: bytes, *, source: str = "image", draft_size: tuple[int, int] | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode image bytes to an upright RGB PIL image.

    Arguments:
        data: encoded bytes (JPEG, PNG, anything PIL reads).
        source: names the image in errors (e.g. ``shard-000001.tar:sa_1``).
        draft_size: upright (h, w) the caller will resize to. JPEGs are then decoded by libjpeg at
            the smallest 1/2, 1/4 or 1/8 scale still at least that large, which bounds the memory
            and time a huge photo costs. Other formats decode at full size.
    Returns:
        (image, (H, W)): the upright RGB image (smaller than full size when a draft applied) and
        the full-resolution upright size.
    Raises:
        ImageDecodeError: naming ``source``.
    """
    try:
        image = Image.open(io.BytesIO(data))
        full_size = _oriented_size(image)
        if draft_size is not None:
            height, width = draft_size
            image.draft("RGB", (height, width) if _swaps_axes(image) else (width, height))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return to_rgb(image), full_size
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{source}: {exc}") from exc
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, struct.error...) on bad bytes
        raise ImageDecodeError(f"{source}: cannot decode image ({len(data)} bytes): {exc}") from exc


def decode_image(data: bytes, *, source: str = "image") -> np.ndarray:
    """Decode image bytes at full resolution.

    Returns:
        np.ndarray: H x W x 3 uint8 RGB, upright.
    """
    image, _ = open_image(data, source=source)
    return np.asarray(image)


def image_size(data: bytes, *, source: str = "image") -> tuple[int, int]:
    """(H, W) of the upright image, read from the header only (no pixel decoding)."""
    try:
        return _oriented_size(Image.open(io.BytesIO(data)))
    except Image.DecompressionBombError as exc:  # not an OSError: it derives from Exception
        raise ImageTooLarge(f"{source}: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"{source}: cannot read image header ({len(data)} bytes): {exc}") from exc
