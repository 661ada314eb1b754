"""Mask overlays as images: for demos, dashboards and quick looks at a shard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def mask_colours(count: int, seed: int = 0) -> np.ndarray:
    """count x 3 uint8 distinct-ish bright colours, the same for the same seed."""
    rng = np.random.default_rng(seed)
    hues = (np.arange(count) * 0.618033988749895 + rng.random()) % 1.0
    hsv = np.stack([hues * 255, np.full(count, 200), np.full(count, 255)], axis=1).astype(np.uint8)
    return np.asarray(Image.fromarray(hsv[None], mode="HSV").convert("RGB"))[0]


def overlay_masks(
    image: np.ndarray,
    masks: np.ndarray,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend coloured masks over an image, smaller masks on top, and mark the clicks.

    Arguments:
        image: H x W x 3 uint8.
        masks: N x H x W bool.
        points: K x 2 (x, y) clicks, or None; labels: K, 1 foreground (green), 0 background (red).
    Returns:
        H x W x 3 uint8.
    """
    out = image.astype(np.float32)
    if len(masks):
        order = np.argsort(-masks.reshape(len(masks), -1).sum(1))  # large first, so small stay visible
        colours = mask_colours(len(masks)).astype(np.float32)
        # Per pixel, the colour of the last (smallest) mask covering it: one vectorised argmax.
        stacked = masks[order]
        covered = stacked.any(0)
        top = len(stacked) - 1 - np.argmax(stacked[::-1], axis=0)
        out[covered] = (1 - alpha) * out[covered] + alpha * colours[order][top[covered]]
    result = Image.fromarray(out.round().astype(np.uint8))
    if points is not None:
        draw = ImageDraw.Draw(result)
        radius = max(2, round(max(image.shape[:2]) / 100))
        for (x, y), label in zip(points, labels if labels is not None else np.ones(len(points)), strict=True):
            colour = (40, 220, 40) if label == 1 else (230, 40, 40)
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline=(255, 255, 255))
    return np.asarray(result)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an H x W x 3 uint8 image as PNG, creating the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
