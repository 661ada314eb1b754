"""Procedural scenes with exact, nested ground truth: the embedded default dataset's geometry.

A scene is a textured background with 5-40 objects drawn back to front. An object is a tree of
elements, up to three levels deep: the whole object (level 0), its parts (level 1: a figure's
head, body and limbs, or the panes of a panel) and their sub-parts (level 2: eyes, buttons, inner
panes). Every element's ground-truth mask is its VISIBLE region, including its descendants, so a
click on a sub-part is ambiguous among three nested masks (sub-part within part within whole), as
in SA-1B. Object sizes run from a few pixels to about half the image.

Drawing works like a painter on a label map: each element paints its id where it is visible,
over whatever lies behind it; element ids are numbered in drawing (pre-)order, so the region of an
element together with its descendants is the id range ``[first, last)``, and occlusion needs no
mask arithmetic. Everything is numpy on pixel windows, so an element costs in proportion to its own size.

Scene ``index`` of a dataset with ``seed`` depends on nothing else (see :func:`scene_rng`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sam_engine.data.synthetic.shapes import Shape, random_colour, random_shape, rasterize, texture

LEVEL_WHOLE, LEVEL_PART, LEVEL_SUBPART = 0, 1, 2
FILL_UP_ATTEMPTS = 200  # extra objects a scene may paint to reach its minimum count


@dataclass(frozen=True)
class SceneSpec:
    """What scenes look like. Sizes are fractions of the image area unless named otherwise.

    Attributes:
        image_size: side of the square RGB image in pixels.
        min_objects, max_objects: visible whole objects per image (inclusive).
        object_area: (low, high) area fraction of ordinary objects, drawn log-uniformly.
        large_area: (low, high) area fraction of the large object at the back of some scenes.
        large_probability: chance that a scene has such a large object.
        min_mask_area: masks with fewer visible pixels are dropped; None: 2.5e-4 of the image, at least 4.
    """

    image_size: int = 256
    min_objects: int = 5
    max_objects: int = 40
    object_area: tuple[float, float] = (4e-4, 0.12)
    large_area: tuple[float, float] = (0.35, 0.65)
    large_probability: float = 0.5
    min_mask_area: int | None = None

    @property
    def min_area(self) -> int:
        if self.min_mask_area is not None:
            return self.min_mask_area
        return max(4, round(2.5e-4 * self.image_size**2))


@dataclass(frozen=True)
class Scene:
    """One generated image and its ground truth.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        masks: (N, H, W) bool, the visible region of each element (never empty, never duplicated
            within an object), objects in drawing order (back to front), each whole before its parts.
            A transposed view of (N, W, H) storage, as pycocotools' decoder returns masks.
        levels: (N,) int64, 0 whole object, 1 part, 2 sub-part.
        objects: (N,) int64, the object each mask belongs to, 0..M-1 in drawing order.
    """

    image: np.ndarray
    masks: np.ndarray
    levels: np.ndarray
    objects: np.ndarray


@dataclass
class Element:
    """A node of an object's part tree: a shape (None: only the union of its children) and its parts.

    ``clip`` keeps the element inside its parent's region (a pane inside a panel); unclipped parts
    may stick out (a figure's limbs), extending the whole.
    """

    shape: Shape | None
    children: list[Element] = field(default_factory=list)
    clip: bool = False


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of scene ``index`` in the dataset with ``seed``, independent of other scenes."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def generate_scene(seed: int, index: int, spec: SceneSpec = SceneSpec()) -> Scene:
    """Scene ``index`` of the dataset with ``seed``: the same arrays every time, whatever else is made."""
    rng = scene_rng(seed, index)
    size = spec.image_size
    canvas = Canvas(size, texture(rng, size, size, random_colour(rng), contrast=rng.uniform(30, 90)))
    for element in _sample_objects(rng, spec):
        canvas.paint_object(rng, element)
    _fill_up(rng, canvas, spec)
    return canvas.to_scene(spec.min_area)


def _fill_up(rng: np.random.Generator, canvas: Canvas, spec: SceneSpec) -> None:
    """Paint plain shapes on top until ``spec.min_objects`` objects keep a mask: each of the spec's object
    sizes but never smaller than twice the smallest mask kept, so that each can count."""
    size = spec.image_size
    low, high = spec.object_area
    low = min(high, max(low, 2 * spec.min_area / size**2))
    for _ in range(FILL_UP_ATTEMPTS):
        if _count_visible_objects(canvas, spec.min_area) >= spec.min_objects:
            return
        radius = size * np.sqrt(np.exp(rng.uniform(np.log(low), np.log(high))) / np.pi)
        canvas.paint_object(rng, _nested(rng, *rng.uniform(0, size, 2), radius, depth=1))
    raise ValueError(f"scene spec {spec}: no {spec.min_objects} visible objects of at least {spec.min_area} px "
                     f"after {FILL_UP_ATTEMPTS} extra objects; lower min_objects or min_mask_area, "
                     "or raise object_area")


# --- objects ----------------------------------------------------------------------------------


def _sample_objects(rng: np.random.Generator, spec: SceneSpec) -> list[Element]:
    """Objects back to front: a log-uniform count and sizes, bigger objects mostly behind smaller ones."""
    size = spec.image_size
    count = int(np.exp(rng.uniform(np.log(spec.min_objects), np.log(spec.max_objects + 1))))
    low, high = np.log(spec.object_area)
    areas = np.exp(rng.uniform(low, high, count))
    depth = np.argsort(-(np.log(areas) + rng.normal(0, 0.7, count)))
    centres = rng.uniform(0, size, (count, 2))
    if rng.random() < spec.large_probability:
        areas[depth[0]] = rng.uniform(*spec.large_area)
        centres[depth[0]] = rng.uniform(0.3 * size, 0.7 * size, 2)
    radii = size * np.sqrt(areas / np.pi)
    return [_random_object(rng, *centres[i], radii[i], size) for i in depth]


def _random_object(rng: np.random.Generator, cx: float, cy: float, radius: float, size: int) -> Element:
    """An object of about ``radius``: a figure, a 3- or 2-level panel, or a plain shape (small ones)."""
    roll = rng.random()
    if radius >= 0.09 * size and roll < 0.3:
        return _figure(rng, cx, cy, radius)
    if radius >= 0.09 * size and roll < 0.65:
        return _nested(rng, cx, cy, radius * 1.15, depth=3)
    if radius >= 0.05 * size and roll < 0.8:
        return _nested(rng, cx, cy, radius * 1.15, depth=2)
    return _nested(rng, cx, cy, radius * 1.15, depth=1)


def _nested(rng: np.random.Generator, cx: float, cy: float, radius: float, depth: int) -> Element:
    """A random shape holding 2-4 (top level) or 1-3 smaller shapes, recursively ``depth`` levels deep."""
    element = Element(random_shape(rng, cx, cy, radius))
    if depth > 1:
        count = rng.integers(2, 5) if depth == 3 else rng.integers(1, 4)
        for _ in range(count):
            offset = radius * rng.uniform(0, 0.55) * _unit(rng.uniform(0, 2 * np.pi))
            child = _nested(rng, cx + offset[0], cy + offset[1], radius * rng.uniform(0.25, 0.5), depth - 1)
            child.clip = True
            element.children.append(child)
    return element


def _figure(rng: np.random.Generator, cx: float, cy: float, radius: float) -> Element:
    """A figure with a body (buttons or a belt), a head (eyes) and limbs, rotated at random.

    The whole is the union of the parts: its region is that of its children.
    """
    s = radius * 0.85
    turn = rng.uniform(-0.6, 0.6)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])

    def at(dx: float, dy: float) -> tuple[float, float]:
        x, y = rotation @ np.array([dx, dy]) * s
        return cx + x, cy + y

    def part(kind: str, dx: float, dy: float, size: float, angle: float, params: tuple, clip=False):
        return Element(Shape(kind, *at(dx, dy), size * s, angle + turn, params), clip=clip)

    body = part(("ellipse", "rect")[rng.integers(2)], 0, 0.1, 0.55, np.pi / 2, (rng.uniform(0.55, 0.8),))
    if rng.random() < 0.5:
        body.children = [part("ellipse", 0, y, 0.08, 0, (1.0,), clip=True) for y in (-0.1, 0.1, 0.3)]
    else:
        body.children = [part("rect", 0, 0.15, 0.7, 0, (0.25,), clip=True)]
    head = part("ellipse", 0, -0.72, 0.3, 0, (rng.uniform(0.85, 1.0),))
    head.children = [part("ellipse", dx, -0.77, 0.075, 0, (1.0,), clip=True) for dx in (-0.11, 0.11)]
    arm_angle = rng.uniform(0.2, 0.9)
    limbs = [
        part("rect", -0.5, -0.05, 0.38, np.pi / 2 + arm_angle, (0.22,)),
        part("rect", 0.5, -0.05, 0.38, np.pi / 2 - arm_angle, (0.22,)),
        part("rect", -0.2, 0.75, 0.38, np.pi / 2, (0.25,)),
        part("rect", 0.2, 0.75, 0.38, np.pi / 2, (0.25,)),
    ]
    return Element(None, children=[*limbs, body, head])


def _unit(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


# --- drawing and ground truth -----------------------------------------------------------------


class Canvas:
    """A label map and an image painted back to front, with each element's id range and level.

    ``Canvas(size, background)`` starts from a (size, size, 3) float32 background;
    :meth:`paint_object` draws objects in depth order and :meth:`to_scene` extracts the ground truth.
    ``label`` is (H, W) int32: 0 background, else the id of the element visible at the pixel.
    Element ``k`` (id ``k + 1``) covers ids ``[first[k], stop[k])``: itself and its descendants.
    """

    def __init__(self, size: int, background: np.ndarray):
        self.size = size
        self.image = background
        self.label = np.zeros((size, size), dtype=np.int32)
        self.first: list[int] = []
        self.stop: list[int] = []
        self.levels: list[int] = []
        self.objects: list[int] = []
        self.parents: list[int] = []
        self.boxes: list[list[int]] = []  # [y0, y1, x0, x1] around the element and its descendants

    def paint_object(self, rng: np.random.Generator, element: Element) -> None:
        """Draw one object (in front of everything so far)."""
        self._paint(rng, element, level=0, parent=-1, colour=random_colour(rng), obj=self._num_objects())

    def _num_objects(self) -> int:
        return self.objects[-1] + 1 if self.objects else 0

    def _paint(self, rng, element: Element, level: int, parent: int, colour: np.ndarray, obj: int) -> None:
        index = len(self.first)
        own_id = index + 1
        self.first.append(own_id)
        self.stop.append(own_id)
        self.levels.append(level)
        self.objects.append(obj)
        self.parents.append(parent)
        self.boxes.append([self.size, 0, self.size, 0])
        if element.shape is not None:
            self._fill(rng, element, index, colour)
        for child in element.children:
            self._paint(rng, child, level + 1, index, random_colour(rng, away_from=colour), obj)
        self.stop[index] = len(self.first) + 1
        if parent >= 0:
            self._grow_box(parent, self.boxes[index])

    def _grow_box(self, index: int, box: list[int]) -> None:
        mine = self.boxes[index]
        mine[:] = [min(mine[0], box[0]), max(mine[1], box[1]), min(mine[2], box[2]), max(mine[3], box[3])]

    def _fill(self, rng, element: Element, index: int, colour: np.ndarray) -> None:
        """Paint element ``index``'s shape with a texture; a clipped element only over its parent's region."""
        drawn = rasterize(element.shape, self.size)
        if drawn is None:
            return
        window, mask = drawn
        own_id, parent = self.first[index], self.parents[index]
        if element.clip and parent >= 0:
            behind = self.label[window]
            mask &= (behind >= self.first[parent]) & (behind < own_id)
        height, width = mask.shape
        self._grow_box(index, [window[0].start, window[0].stop, window[1].start, window[1].stop])
        self.label[window][mask] = own_id
        self.image[window][mask] = texture(rng, height, width, colour, rng.uniform(25, 70), where=mask)

    def areas(self) -> np.ndarray:
        """(num_elements,) int64 visible area of each element with its descendants, from one histogram."""
        counts = np.bincount(self.label.ravel(), minlength=len(self.first) + 1)
        cumulative = np.concatenate([[0], np.cumsum(counts)])
        return cumulative[np.array(self.stop)] - cumulative[np.array(self.first)]

    def kept(self, min_area: int) -> np.ndarray:
        """Indices of the elements whose mask is kept: at least ``min_area`` pixels and not the same
        mask as its nearest kept ancestor (fewer than ``min_area`` pixels apart)."""
        areas = self.areas()
        keep = np.zeros(len(areas), dtype=bool)
        kept_ancestor = np.full(len(areas), -1)
        for k, parent in enumerate(self.parents):
            ancestor = -1 if parent < 0 else (parent if keep[parent] else kept_ancestor[parent])
            kept_ancestor[k] = ancestor
            duplicate = ancestor >= 0 and areas[ancestor] - areas[k] < min_area
            keep[k] = areas[k] >= min_area and not duplicate
        return np.flatnonzero(keep)

    def to_scene(self, min_area: int) -> Scene:
        """The image and the masks of the elements :meth:`kept` (see :class:`Scene`)."""
        keep = self.kept(min_area)
        # Stored column-major per mask ((N, W, H) in memory): the layout pycocotools encodes without a copy.
        masks = np.zeros((len(keep), self.size, self.size), dtype=bool).transpose(0, 2, 1)
        for mask, k in zip(masks, keep, strict=True):
            y0, y1, x0, x1 = self.boxes[k]
            inside = self.label[y0:y1, x0:x1]
            mask[y0:y1, x0:x1] = (inside >= self.first[k]) & (inside < self.stop[k])
        _, objects = np.unique(np.array(self.objects)[keep], return_inverse=True)
        image = np.clip(np.rint(self.image), 0, 255).astype(np.uint8)
        return Scene(image, masks, np.array(self.levels)[keep].astype(np.int64), objects.astype(np.int64))


def _count_visible_objects(canvas: Canvas, min_area: int) -> int:
    wholes = np.array(canvas.levels) == LEVEL_WHOLE
    return int((canvas.areas()[wholes] >= min_area).sum()) if wholes.any() else 0
