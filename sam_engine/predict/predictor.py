"""SamPredictor: the official predictor's API and behaviour over our model.

Encode an image once with ``set_image``, then ask for masks with any prompts: ``predict`` for one
prompt set in numpy, ``predict_torch`` for a batch of prompts already in the model's input frame.
Pre- and post-processing are SAM's own (PIL bilinear resize of the longest side, normalisation,
zero padding; bilinear up-sampling of the low-res logits), so masks agree with the official code.

Unlike the official predictor, inputs are checked: a prompt that cannot mean what the caller
intended raises ``ValueError`` naming the problem instead of returning a silently wrong mask.
Documented conversions: a grayscale (H x W or H x W x 1) image is replicated to RGB, an RGBA image
loses its alpha channel, a 16-bit image is scaled to 8 bits (value // 257).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from sam_engine.model.sam import Sam
from sam_engine.transforms import resize_image, scale_coords

PRECISIONS = ("auto", "fp32", "bf16")


MAX_MASK_LOGIT = 1e4
"""Mask prompts are a previous call's low-res logits (tens at most); beyond this they overflow the decoder."""

def as_rgb_uint8(image: np.ndarray, image_format: str = "RGB") -> np.ndarray:
    """Check an image and convert it to H x W x 3 uint8 RGB (conversions in the module docstring)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array (H x W x 3 uint8), got {type(image).__name__}")
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image must be H x W x 3 (RGB), H x W x 4 (RGBA) or H x W (gray); got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(
            f"image dtype {image.dtype} is not supported: pass uint8 (0..255) or uint16; "
            "for a float image in [0, 1] use (image * 255).round().astype(np.uint8)"
        )
    image = image[..., :3]
    if image_format == "BGR":
        image = image[..., ::-1]
    return np.ascontiguousarray(image)


@dataclass(frozen=True)
class EmbeddedImage:
    """An image as the predictor holds it once encoded: kept to switch between images without re-encoding.

    Attributes:
        features: 1 x C x h x w, the image embedding.
        original_size: (H, W) of the image; input_size: (h, w) of the resized image before padding.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class SamPredictor:
    """Predicts masks for one image at a time, from points, a box and/or a previous mask.

    Arguments:
        sam_model: the model.
        precision: ``"auto"`` (bf16 autocast on CUDA, float32 elsewhere), ``"fp32"`` or ``"bf16"``.
    """

    def __init__(self, sam_model: Sam, precision: str = "auto") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.model = sam_model
        self.precision = precision
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _autocast(self):
        """bf16 autocast when asked (or on CUDA with "auto"), else nothing."""
        use_bf16 = self.precision == "bf16" or (self.precision == "auto" and self.device.type == "cuda")
        if not use_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an H x W x 3 uint8 image (conversions in the module docstring). The previous image is
        forgotten first: after a failed call no prediction answers for it."""
        self.reset_image()
        image = as_rgb_uint8(image, image_format)
        resized = resize_image(image, self.model.img_size)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        self.set_torch_image(tensor, image.shape[:2])

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Encode an already resized image: 1 x 3 x h x w, longest side == img_size, values 0..255."""
        self.reset_image()
        size = self.model.img_size
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[:2] != (1, 3) or max(shape[2:]) != size:
            raise ValueError(f"set_torch_image expects 1 x 3 x h x w with longest side {size}, got {shape}")
        self.original_size = (int(original_image_size[0]), int(original_image_size[1]))
        self.input_size = (int(transformed_image.shape[2]), int(transformed_image.shape[3]))
        with self._autocast():
            self.features = self.model.encode_images(self.model.preprocess(transformed_image))
        self.is_image_set = True

    def embedded_image(self) -> EmbeddedImage:
        """The current image's embedding and sizes (``use_embedded_image`` sets them back)."""
        self._require_image()
        return EmbeddedImage(self.features, self.original_size, self.input_size)

    def use_embedded_image(self, embedded: EmbeddedImage) -> None:
        """Make an image encoded before (``embedded_image``) the current one, without encoding it again."""
        self.features = embedded.features
        self.original_size = embedded.original_size
        self.input_size = embedded.input_size
        self.is_image_set = True

    def transform_coords(self, coords: np.ndarray | torch.Tensor) -> torch.Tensor:
        """... x 2 (x, y) points, or ... x 4 XYXY boxes, in pixels of the original image -> the model input
        frame, as float32 on the model's device (what ``predict_torch`` takes)."""
        self._require_image()
        scaled = scale_coords(coords, self.original_size, self.model.img_size)
        return torch.as_tensor(scaled, dtype=torch.float, device=self.device)

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    def check_points(self, point_coords: np.ndarray, point_labels: np.ndarray | None) -> None:
        """Points must be N x 2 inside the image (pixels of the original image), with N labels in {0, 1}."""
        if point_labels is None:
            raise ValueError("point_labels must be supplied if point_coords is supplied")
        coords, labels = np.asarray(point_coords), np.asarray(point_labels)
        if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
            raise ValueError(f"point_coords must be N x 2 (x, y) with N >= 1, got shape {coords.shape}")
        if labels.shape != (coords.shape[0],):
            raise ValueError(f"point_labels must have shape ({coords.shape[0]},), got {labels.shape}")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"point_labels must be 1 (foreground) or 0 (background), got {np.unique(labels).tolist()}")
        h, w = self.original_size
        outside = (coords[:, 0] < 0) | (coords[:, 0] > w) | (coords[:, 1] < 0) | (coords[:, 1] > h)
        if not np.isfinite(coords).all() or outside.any():
            i = int(np.flatnonzero(outside | ~np.isfinite(coords).all(1))[0])
            raise ValueError(f"point {i} at (x, y) = {tuple(coords[i].tolist())} lies outside the {w}x{h} image")

    def _check_box(self, box: np.ndarray) -> None:
        """A box is 4 numbers XYXY with x1 <= x2, y1 <= y2, inside the image."""
        box = np.asarray(box)
        if box.size != 4:
            raise ValueError(f"box must be 4 numbers (x1, y1, x2, y2), got shape {box.shape}")
        x1, y1, x2, y2 = box.reshape(4).tolist()
        if not (x1 <= x2 and y1 <= y2):
            raise ValueError(f"box {box.reshape(4).tolist()} must be XYXY with x1 <= x2 and y1 <= y2")
        h, w = self.original_size
        if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
            raise ValueError(f"box {box.reshape(4).tolist()} extends outside the {w}x{h} image")

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one set of prompts on the current image.

        Arguments:
            point_coords: N x 2 (x, y) in pixels of the original image; point_labels: N, 1 = foreground.
            box: 4 numbers XYXY in pixels of the original image.
            mask_input: 1 x 4h x 4w low-res logits from a previous call.
            multimask_output: three masks (for an ambiguous prompt) or one.
            return_logits: logits instead of boolean masks.
        Returns:
            masks: C x H x W (bool, or float logits); scores: C; low_res_logits: C x 4h x 4w.
        """
        self._require_image()
        if point_coords is None and box is None and mask_input is None:
            raise ValueError("no prompt given: pass point_coords/point_labels, box, or mask_input")
        coords_t = labels_t = box_t = mask_t = None
        if point_coords is not None:
            self.check_points(point_coords, point_labels)
            coords_t = self.transform_coords(np.asarray(point_coords))[None]
            labels_t = torch.as_tensor(np.asarray(point_labels), dtype=torch.int, device=self.device)[None]
        elif point_labels is not None:
            raise ValueError("point_labels given without point_coords")
        if box is not None:
            self._check_box(box)
            box_t = self.transform_coords(np.asarray(box).reshape(1, 4))
        if mask_input is not None:
            mask_t = torch.as_tensor(mask_input, dtype=torch.float, device=self.device)[None]
        masks, scores, low_res = self.predict_torch(coords_t, labels_t, box_t, mask_t, multimask_output, return_logits)
        return masks[0].cpu().numpy(), scores[0].float().cpu().numpy(), low_res[0].float().cpu().numpy()

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks for B prompt sets at once, prompts already in the model's input frame.

        Arguments:
            point_coords: B x N x 2 (map pixels with ``transform_coords``); point_labels: B x N
                (1 foreground, 0 background, -1 padding).
            boxes: B x 4 XYXY. mask_input: B x 1 x 4h x 4w logits.
        Returns:
            masks: B x C x H x W (bool, or float32 logits); scores: B x C; low_res_logits: B x C x 4h x 4w.
        """
        low_res, scores = self.predict_low_res_torch(point_coords, point_labels, boxes, mask_input, multimask_output)
        masks = self.upscale_masks(low_res)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, scores, low_res

    @torch.no_grad()
    def predict_low_res_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's output before up-sampling (arguments as ``predict_torch``).

        Returns:
            low_res_logits: B x C x 4h x 4w float32; scores: B x C float32 (predicted IoU).
        """
        self._require_image()
        if point_coords is None and boxes is None and mask_input is None:
            raise ValueError("no prompt given: pass point_coords/point_labels, boxes, or mask_input")
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        self._check_frame(point_coords, point_labels, boxes, mask_input)
        points = None if point_coords is None else (point_coords, point_labels)
        with self._autocast():
            low_res, scores = self.model.predict_masks(
                self.features, points=points, boxes=boxes, mask_inputs=mask_input, multimask_output=multimask_output
            )
        return low_res.float(), scores.float()

    def _check_frame(self, point_coords: torch.Tensor | None, point_labels: torch.Tensor | None,
                     boxes: torch.Tensor | None, mask_input: torch.Tensor | None) -> None:
        """Prompts in the model's input frame: points (but padding, label -1) and boxes finite and inside
        [0, img_size], mask logits within +-MAX_MASK_LOGIT; anything else would give NaN scores or empty masks
        silently."""
        size = self.model.img_size
        if point_coords is not None:
            real = point_labels[..., None] != -1
            inside = torch.isfinite(point_coords) & (point_coords >= 0) & (point_coords <= size)
            if not (inside | ~real).all():
                raise ValueError(f"a point lies outside the model's {size} x {size} input frame or is not finite "
                                 "(transform_coords maps pixels of the image into it)")
        if boxes is not None and not (torch.isfinite(boxes) & (boxes >= 0) & (boxes <= size)).all():
            raise ValueError(f"a box lies outside the model's {size} x {size} input frame or is not finite")
        if mask_input is not None and not (mask_input.abs() <= MAX_MASK_LOGIT).all():  # NaN fails too
            raise ValueError(f"mask_input holds NaN, infinite or implausible logits (beyond +-{MAX_MASK_LOGIT:g})")

    @torch.no_grad()
    def predict_confident_masks(
        self, point_coords: torch.Tensor, point_labels: torch.Tensor, min_iou: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The multimask outputs of B point prompts whose predicted IoU exceeds ``min_iou``, low-res
        (``Sam.predict_confident_masks``: only those prompts' masks are computed).

        Arguments:
            point_coords: B x N x 2 in the model input frame; point_labels: B x N.
        Returns:
            prompt, output: K int64; low_res_logits: K x 4h x 4w float32; iou_predictions: K float32.
        """
        self._require_image()
        with self._autocast():
            prompt, output, low_res, iou = self.model.predict_confident_masks(
                self.features, (point_coords, point_labels), min_iou
            )
        return prompt, output, low_res.float(), iou.float()

    def upscale_masks(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """Low-res logits (B x C x 4h x 4w) -> logits at the current image's size, B x C x H x W float32."""
        self._require_image()
        return self.model.postprocess_masks(low_res_logits, self.input_size, self.original_size)

    def get_image_embedding(self) -> torch.Tensor:
        """The current image's embedding: 1 x C x h x w (C = 256, h = w = 64 for the released models)."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) to generate an embedding.")
        return self.features
