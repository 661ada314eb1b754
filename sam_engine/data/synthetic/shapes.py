"""Filled 2-D shapes and textures, rasterised with numpy on pixel grids (no per-pixel loops).

A :class:`Shape` is a region around a centre that lies inside a disc of ``radius`` pixels, so it
is rasterised only on that disc's bounding window. Pixel ``(row, col)`` is sampled at its centre
``(x, y) = (col + 0.5, row + 0.5)``. Textures fill a window with colour: flat shading, stripes,
checks, gradients or smooth noise between two colours.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Window = tuple[slice, slice]

SHAPE_KINDS = ("ellipse", "rect", "polygon", "star", "blob", "ring", "crescent")


@dataclass(frozen=True)
class Shape:
    """A filled region: ``kind`` (one of :data:`SHAPE_KINDS`) centred at ``(cx, cy)`` pixels.

    ``radius`` bounds the shape (it lies inside the disc), ``angle`` rotates it (radians) and
    ``params`` are the kind's proportions, all relative to ``radius`` (see :func:`random_shape`).
    """

    kind: str
    cx: float
    cy: float
    radius: float
    angle: float = 0.0
    params: tuple[float, ...] = ()


def window_of(cx: float, cy: float, radius: float, size: int) -> Window | None:
    """Pixel window ``(rows, cols)`` covering the disc, clipped to a ``size`` x ``size`` image, or None."""
    x0, x1 = max(int(np.floor(cx - radius)), 0), min(int(np.ceil(cx + radius)) + 1, size)
    y0, y1 = max(int(np.floor(cy - radius)), 0), min(int(np.ceil(cy + radius)) + 1, size)
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _local_grid(shape: Shape, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of ``window`` in the shape's frame: two (h, w) float32, rotated by -angle."""
    rows, cols = window
    y = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] + 0.5 - shape.cy
    x = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] + 0.5 - shape.cx
    cos, sin = np.float32(np.cos(shape.angle)), np.float32(np.sin(shape.angle))
    return x * cos + y * sin, y * cos - x * sin


def _ellipse(x: np.ndarray, y: np.ndarray, a: float, b: float) -> np.ndarray:
    return (x / a) ** 2 + (y / b) ** 2 <= 1.0


def _radial(x: np.ndarray, y: np.ndarray, radius_at) -> np.ndarray:
    """Star-shaped region ``rho <= radius_at(theta)`` (polar form)."""
    return np.hypot(x, y) <= radius_at(np.arctan2(y, x))


def _mask_ellipse(x, y, r, p):  # p = (aspect,)
    return _ellipse(x, y, r, r * p[0])


def _mask_rect(x, y, r, p):  # p = (aspect,): half sides r*cos(phi), r*sin(phi), tan(phi) = aspect
    phi = np.arctan(p[0])
    return (np.abs(x) <= r * np.cos(phi)) & (np.abs(y) <= r * np.sin(phi))


def _mask_polygon(x, y, r, p):  # p = (sides,): regular polygon with circumradius r
    sector = 2 * np.pi / p[0]
    return _radial(x, y, lambda t: r * np.cos(sector / 2) / np.cos(np.mod(t, sector) - sector / 2))


def _mask_star(x, y, r, p):  # p = (points, inner ratio)
    points, inner = p
    return _radial(x, y, lambda t: r * (inner + (1 - inner) * np.abs(np.cos(t * points / 2))))


def _mask_blob(x, y, r, p):  # p = (a2, phase2, a3, phase3, ...): harmonics of the boundary
    amps, phases = np.asarray(p[0::2]), np.asarray(p[1::2])
    orders = np.arange(2, 2 + len(amps))

    def radius_at(t):
        wobble = sum(a * np.sin(k * t + f) for a, k, f in zip(amps, orders, phases, strict=True))
        return r * (1 + wobble) / (1 + np.abs(amps).sum())

    return _radial(x, y, radius_at)


def _mask_ring(x, y, r, p):  # p = (aspect, hole ratio): an ellipse with an elliptic hole
    aspect, hole = p
    return _ellipse(x, y, r, r * aspect) & ~_ellipse(x, y, r * hole, r * aspect * hole)


def _mask_crescent(x, y, r, p):  # p = (offset ratio,): a disc minus a shifted disc
    return _ellipse(x, y, r, r) & ~_ellipse(x - r * p[0], y, r * 0.9, r * 0.9)


_RASTERIZERS = {
    "ellipse": _mask_ellipse,
    "rect": _mask_rect,
    "polygon": _mask_polygon,
    "star": _mask_star,
    "blob": _mask_blob,
    "ring": _mask_ring,
    "crescent": _mask_crescent,
}


def rasterize(shape: Shape, size: int) -> tuple[Window, np.ndarray] | None:
    """Rasterise ``shape`` on a ``size`` x ``size`` image.

    Returns:
        ``(window, mask)``: the pixel window (a pair of slices) and an (h, w) bool mask inside it,
        or None when the shape misses the image or covers no pixel centre.
    """
    window = window_of(shape.cx, shape.cy, shape.radius, size)
    if window is None:
        return None
    x, y = _local_grid(shape, window)
    mask = _RASTERIZERS[shape.kind](x, y, shape.radius, shape.params)
    return (window, mask) if mask.any() else None


def random_shape(
    rng: np.random.Generator, cx: float, cy: float, radius: float, kinds: tuple[str, ...] = SHAPE_KINDS
) -> Shape:
    """A shape of a random kind from ``kinds``, orientation and proportions inside the given disc."""
    kind = kinds[rng.integers(len(kinds))]
    if kind in ("ellipse", "rect"):
        params = (rng.uniform(0.35, 1.0),)
    elif kind == "polygon":
        params = (float(rng.integers(3, 9)),)
    elif kind == "star":
        params = (float(rng.integers(4, 9)), rng.uniform(0.35, 0.65))
    elif kind == "blob":
        params = tuple(v for _ in range(4) for v in (rng.uniform(-0.2, 0.2), rng.uniform(0, 2 * np.pi)))
    elif kind == "ring":
        params = (rng.uniform(0.6, 1.0), rng.uniform(0.35, 0.65))
    else:
        params = (rng.uniform(0.4, 0.8),)
    return Shape(kind, cx, cy, radius, rng.uniform(0, 2 * np.pi), tuple(float(v) for v in params))


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """(height, width) float32 noise in about [0, 1]: a ``cells`` x ``cells`` random grid, upsampled."""
    grid = rng.random((cells, cells), dtype=np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def random_colour(rng: np.random.Generator, away_from: np.ndarray | None = None) -> np.ndarray:
    """A (3,) float32 RGB colour in [0, 255]; of 6 candidates, the farthest from ``away_from``."""
    candidates = rng.uniform(0, 255, size=(6, 3)).astype(np.float32)
    if away_from is None:
        return candidates[0]
    return candidates[np.argmax(np.abs(candidates - away_from).sum(axis=1))]


def _stripes(rng, height, width):
    period = rng.uniform(4, 16)
    return np.sin(_along(rng, height, width) * np.float32(2 * np.pi / period)) > 0


def _checker(rng, height, width):
    period = np.float32(rng.uniform(4, 16))
    angle = rng.uniform(0, np.pi)
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return (np.floor((x * cos + y * sin) / period) + np.floor((y * cos - x * sin) / period)) % 2


def _gradient(rng, height, width):
    along = _along(rng, height, width)
    return (along - along.min()) / max(float(np.ptp(along)), 1.0)


def _along(rng, height, width):
    """(height, width) float32 coordinate along a random direction."""
    angle = rng.uniform(0, np.pi)
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    return x * np.float32(np.cos(angle)) + y * np.float32(np.sin(angle))


_PATTERNS = {
    "flat": lambda rng, h, w: 0.3 * smooth_noise(rng, h, w, 3),
    "stripes": _stripes,
    "checker": _checker,
    "gradient": _gradient,
    "noise": lambda rng, h, w: smooth_noise(rng, h, w, int(rng.integers(3, 9))),
}
TEXTURE_KINDS = tuple(_PATTERNS)


def texture(
    rng: np.random.Generator,
    height: int,
    width: int,
    colour: np.ndarray,
    contrast: float,
    where: np.ndarray | None = None,
) -> np.ndarray:
    """A (height, width, 3) float32 texture around ``colour``, of a random kind from :data:`TEXTURE_KINDS`.

    The pattern's weight in [0, 1] mixes ``colour`` with a second colour up to ``contrast``
    (0-255 units per channel) away. With ``where`` ((height, width) bool), only those pixels are
    returned, as (n, 3).
    """
    kind = TEXTURE_KINDS[rng.integers(len(TEXTURE_KINDS))]
    second = np.clip(colour + rng.uniform(-contrast, contrast, size=3), 0, 255).astype(np.float32)
    weight = np.broadcast_to(
        np.asarray(_PATTERNS[kind](rng, height, width), dtype=np.float32), (height, width)
    )
    if where is not None:
        weight = weight[where]
    return colour + (second - colour) * weight[..., None]
