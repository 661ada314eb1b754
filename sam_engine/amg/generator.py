"""SamAutomaticMaskGenerator: SAM's fully automatic mask generation (stage 3 of the data engine), batched.

The algorithm and every default are the official ``segment_anything.SamAutomaticMaskGenerator``'s, so
the two return the same masks on the same weights:

1. for the whole image and, with ``crop_n_layers`` > 0, for overlapping crops: encode the crop, prompt
   the model with a regular grid of points (one foreground click each, three masks per click);
2. keep masks whose predicted IoU exceeds ``pred_iou_thresh`` and whose stability score (IoU of the
   mask cut at logit +offset and -offset) reaches ``stability_score_thresh``; drop masks touching a crop
   edge that is not an image edge;
3. box NMS within a crop (score: predicted IoU), then across crops (smaller crops preferred);
4. optionally (``min_mask_region_area`` > 0) fill small holes, remove small islands, and NMS again
   preferring masks that needed no change.

What differs is the cost: the image side of the decoder's first block is computed once per crop, not
once per click; each batch of clicks is filtered by predicted IoU *before* any mask is computed (the
decoder's up-scaling runs only for clicks with an output kept) and long before any is up-sampled to
the image; survivors are up-sampled in chunks of bounded memory, cut, boxed and filtered on the device,
then run-length encoded in one pycocotools call per batch. NMS works on boxes, so masks are uncropped
and post-processed only once they have survived it. On a CPU, batches are decoded side by side, each by a
single-threaded worker (``cpu_workers``), rather than one at a time with every operation split over the
threads.

Two documented differences: ``bbox`` is COCO's (``toBbox`` of the RLE, width = number of columns), where
the official writes the inclusive pixel box (one less); and with ``stability_score_thresh=0`` a mask empty
even at the low cut (stability 0/0 = NaN) is dropped, where the official keeps it: a record cannot hold NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import batched_nms, box_area

from sam_engine.amg.grids import crop_boxes, layer_point_grids
from sam_engine.amg.mask_ops import above, masks_to_boxes, near_crop_edge, stability_scores, uncrop_rles
from sam_engine.amg.small_regions import remove_small_regions
from sam_engine.data.records import annotations_from_rles, decode_masks, encode_rles
from sam_engine.model.sam import Sam
from sam_engine.predict.predictor import SamPredictor, as_rgb_uint8
from sam_engine.utils.cpu_threads import parallel_map
from sam_engine.utils.malloc import reuse_freed_memory

UPSAMPLE_BUDGET_BYTES = 2**28
"""Bytes of float32 logits up-sampled at once (a chunk holds at least one mask)."""


@dataclass
class Proposals:
    """Masks that survived the filters so far, in one frame (a crop's or the image's).

    Attributes:
        rles: K pycocotools RLEs (``counts`` bytes).
        boxes: K x 4 int64 XYXY, inclusive pixel indices.
        iou_preds, stability: K float32.
        points: K x 2 float64 (x, y), the click that produced each mask.
        crop_boxes: K x 4 int64 XYXY, the crop each mask was found in (image frame).
    """

    rles: list[dict]
    boxes: torch.Tensor
    iou_preds: torch.Tensor
    stability: torch.Tensor
    points: torch.Tensor
    crop_boxes: torch.Tensor

    def __len__(self) -> int:
        return len(self.rles)

    def select(self, index: torch.Tensor) -> Proposals:
        """The proposals at ``index`` (K' int64 indices, in that order)."""
        rows = index.tolist()
        return Proposals(
            [self.rles[i] for i in rows],
            self.boxes[index],
            self.iou_preds[index],
            self.stability[index],
            self.points[index],
            self.crop_boxes[index],
        )

    @staticmethod
    def empty(device: torch.device) -> Proposals:
        """No proposal (what a batch whose masks all fail the filters gives)."""
        integers, floats = {"dtype": torch.long, "device": device}, {"dtype": torch.float32, "device": device}
        return Proposals([], torch.zeros(0, 4, **integers), torch.zeros(0, **floats), torch.zeros(0, **floats),
                         torch.zeros(0, 2, dtype=torch.float64, device=device), torch.zeros(0, 4, **integers))

    @staticmethod
    def concatenate(parts: list[Proposals]) -> Proposals:
        return Proposals(
            [rle for part in parts for rle in part.rles],
            torch.cat([p.boxes for p in parts]),
            torch.cat([p.iou_preds for p in parts]),
            torch.cat([p.stability for p in parts]),
            torch.cat([p.points for p in parts]),
            torch.cat([p.crop_boxes for p in parts]),
        )


def _nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices kept by box NMS, by decreasing score (the official call, so ties break the same way).

    Boxes are SAM's inclusive XYXY (N x 4), so a mask one pixel wide or high has a box of zero area, whose
    IoU with its own copy is 0 / 0 for torchvision: on a 1 x 1 or a one-row image every grid point's mask
    survived. Such boxes are widened by one pixel; every other box is the official one, so the generators'
    masks stay the same on ordinary images.
    """
    boxes = boxes.float()
    flat = (boxes[:, 2:] == boxes[:, :2]).any(1, keepdim=True)
    boxes = torch.where(flat, boxes + torch.tensor([0.0, 0.0, 1.0, 1.0], device=boxes.device), boxes)
    return batched_nms(boxes, scores, torch.zeros(len(boxes), device=boxes.device), threshold)


class SamAutomaticMaskGenerator:
    """Generates masks for a whole image with no prompt, as SAM's automatic mask generator.

    Arguments (the official names and defaults, chosen by SAM for ViT-H):
        model: the SAM model.
        points_per_side: points per side of the grid of layer 0 (32: 1024 clicks).
        points_per_batch: clicks decoded together (memory, not results, depends on it).
        pred_iou_thresh: keep masks with predicted IoU > this (0 disables).
        stability_score_thresh: keep masks with stability >= this (0 disables).
        stability_score_offset: logit offset of the stability score's two cuts.
        box_nms_thresh: box IoU above which NMS removes a duplicate within a crop.
        crop_n_layers: crop layers beyond the whole image; layer i has 2^i x 2^i crops.
        crop_nms_thresh: box IoU of the NMS across crops.
        crop_overlap_ratio: overlap of layer 1's crops, as a fraction of the image's short side.
        crop_n_points_downscale_factor: layer i samples points_per_side / factor^i points per side.
        min_mask_region_area: fill holes and remove islands smaller than this (pixels); 0 disables.
        precision: the predictor's ("auto": bf16 autocast on CUDA, float32 elsewhere).
        cpu_workers: on a CPU, batches of clicks decoded at the same time, each by a single-threaded worker
            (``cpu_threads``); None: ``torch.get_num_threads()``; 1: one batch at a time, each operation
            spread over PyTorch's threads. The workers share the memory budget of ``UPSAMPLE_BUDGET_BYTES``.

    Creating one sets the process's glibc malloc to keep freed memory for reuse (``malloc.reuse_freed_memory``):
    without it much of the generator's time on a CPU goes to page faults (docs/performance.md).
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        min_mask_region_area: int = 0,
        precision: str = "auto",
        cpu_workers: int | None = None,
    ) -> None:
        cpu_workers = torch.get_num_threads() if cpu_workers is None else cpu_workers
        _check_positive_int(points_per_side=points_per_side, points_per_batch=points_per_batch,
                            crop_n_points_downscale_factor=crop_n_points_downscale_factor, cpu_workers=cpu_workers)
        _check_non_negative_int(crop_n_layers=crop_n_layers, min_mask_region_area=min_mask_region_area)
        for name, value in (("pred_iou_thresh", pred_iou_thresh), ("stability_score_thresh", stability_score_thresh),
                            ("box_nms_thresh", box_nms_thresh), ("crop_nms_thresh", crop_nms_thresh),
                            ("crop_overlap_ratio", crop_overlap_ratio)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if int(points_per_side / crop_n_points_downscale_factor**crop_n_layers) < 1:
            raise ValueError(
                f"points_per_side={points_per_side} / crop_n_points_downscale_factor="
                f"{crop_n_points_downscale_factor}^{crop_n_layers} leaves no point in the last crop layer"
            )
        reuse_freed_memory()
        self.predictor = SamPredictor(model, precision=precision)
        self.point_grids = layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.cpu_workers = cpu_workers

    @property
    def model(self) -> Sam:
        return self.predictor.model

    @property
    def _workers(self) -> int:
        """Batches decoded at the same time: ``cpu_workers`` on a CPU, 1 elsewhere."""
        return self.cpu_workers if self.model.device.type == "cpu" else 1

    @torch.no_grad()
    def generate(self, image: np.ndarray, provenance: Mapping | None = None) -> list[dict]:
        """SA-1B annotations of every mask found in an image.

        Arguments:
            image: H x W x 3 uint8 RGB (gray, RGBA and 16-bit are converted, see ``SamPredictor``).
            provenance: fields added to every annotation (``source``, ``stage``, ``model``...).
        Returns:
            annotation dicts (``segmentation`` COCO RLE, ``bbox`` COCO XYWH, ``area``, ``predicted_iou``,
            ``stability_score``, ``point_coords``, ``crop_box`` XYWH, ids 0..K-1); empty if nothing passes.
        """
        proposals = self.generate_proposals(image)
        crop_xywh = proposals.crop_boxes.clone()
        crop_xywh[:, 2:] -= crop_xywh[:, :2]
        return annotations_from_rles(
            proposals.rles,
            predicted_iou=proposals.iou_preds.cpu().numpy(),
            stability_score=proposals.stability.cpu().numpy(),
            point_coords=proposals.points.cpu().numpy(),
            crop_box=crop_xywh.cpu().numpy(),
            provenance=provenance,
        )

    @torch.no_grad()
    def generate_proposals(self, image: np.ndarray) -> Proposals:
        """The masks of an image as :class:`Proposals` in the image's frame, best first."""
        image = as_rgb_uint8(image)
        image_size = image.shape[:2]
        boxes, layers = crop_boxes(image_size, self.crop_n_layers, self.crop_overlap_ratio)
        proposals = Proposals.concatenate(
            [self._crop_proposals(image, box, layer) for box, layer in zip(boxes, layers, strict=True)]
        )
        if len(boxes) > 1:
            keep = _nms(proposals.boxes, 1 / box_area(proposals.crop_boxes), self.crop_nms_thresh)
            proposals = proposals.select(keep)
        if self.min_mask_region_area > 0 and len(proposals):
            proposals = self._remove_small_regions(proposals, image_size)
        return proposals

    def _crop_proposals(self, image: np.ndarray, crop_box: list[int], layer: int) -> Proposals:
        """Masks of one crop that pass the filters and NMS, in the image's frame."""
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        self.predictor.set_image(crop)
        points = self.point_grids[layer] * np.array(crop.shape[:2])[None, ::-1]  # P x 2 (x, y) in the crop
        model_points = self.predictor.transform_coords(points)
        batches = parallel_map(
            lambda i: self._batch_proposals(model_points[i : i + self.points_per_batch],
                                            points[i : i + self.points_per_batch], crop_box, image.shape[:2]),
            range(0, len(points), self.points_per_batch),
            self._workers,
        )
        self.predictor.reset_image()
        proposals = Proposals.concatenate(batches)
        proposals = proposals.select(_nms(proposals.boxes, proposals.iou_preds, self.box_nms_thresh))
        offset = torch.tensor([x0, y0, x0, y0], device=proposals.boxes.device)
        proposals.rles = uncrop_rles(proposals.rles, crop_box, image.shape[:2])
        proposals.boxes = proposals.boxes + offset
        proposals.points = proposals.points + offset[:2]
        return proposals

    def _batch_proposals(
        self, model_points: torch.Tensor, points: np.ndarray, crop_box: list[int], image_size: tuple[int, int]
    ) -> Proposals:
        """Decode a batch of clicks and filter the masks; survivors stay in the crop's frame.

        Arguments:
            model_points: B x 2 clicks in the model's input frame; points: B x 2 the same in the crop.
        """
        device = self.model.device
        labels = torch.ones(len(model_points), 1, dtype=torch.int, device=device)
        min_iou = self.pred_iou_thresh if self.pred_iou_thresh > 0 else -math.inf  # 0: no filter, as SAM
        point_rows, _, low_res, iou_preds = self.predictor.predict_confident_masks(
            model_points[:, None], labels, min_iou
        )

        height, width = self.predictor.original_size
        size = self.model.img_size
        chunk = max(1, UPSAMPLE_BUDGET_BYTES // self._workers // (4 * (size * size + height * width)))
        points = torch.as_tensor(points, device=device)
        crop = torch.tensor([crop_box], device=device)
        image_box = [0, 0, image_size[1], image_size[0]]
        parts = [Proposals.empty(device)]
        for start in range(0, len(low_res), chunk):
            rows = torch.arange(start, min(start + chunk, len(low_res)), device=device)
            logits = self.predictor.upscale_masks(low_res[rows, None])[:, 0]  # K x h x w
            stability = stability_scores(logits, self.model.mask_threshold, self.stability_score_offset)
            keep = stability >= self.stability_score_thresh if self.stability_score_thresh > 0 else ~stability.isnan()
            masks = above(logits, self.model.mask_threshold, buffer=logits)[keep]  # (the logits are spent)
            rows, stability = rows[keep], stability[keep]
            del logits
            boxes = masks_to_boxes(masks)
            inside = ~near_crop_edge(boxes, crop_box, image_box)
            masks, boxes, rows, stability = masks[inside], boxes[inside], rows[inside], stability[inside]
            rles = encode_rles(masks.cpu().numpy())
            parts.append(Proposals(rles, boxes, iou_preds[rows], stability, points[point_rows[rows]],
                                   crop.expand(len(rows), 4)))
        return Proposals.concatenate(parts)

    def _remove_small_regions(self, proposals: Proposals, image_size: tuple[int, int]) -> Proposals:
        """Fill small holes, remove small islands, recompute changed masks' boxes and NMS again,
        preferring unchanged masks (the official post-processing)."""
        height, width = image_size
        chunk = max(1, UPSAMPLE_BUDGET_BYTES // (height * width))
        rles, boxes, changed = list(proposals.rles), proposals.boxes.clone(), []
        for start in range(0, len(rles), chunk):
            masks = np.ascontiguousarray(decode_masks(rles[start : start + chunk]))
            cleaned, chunk_changed = remove_small_regions(masks, self.min_mask_region_area)
            rows = np.flatnonzero(chunk_changed)
            for row, rle in zip(rows.tolist(), encode_rles(cleaned[rows]), strict=True):
                rles[start + row] = rle
            boxes[start:start + chunk] = masks_to_boxes(torch.from_numpy(cleaned)).to(boxes.device)
            changed.append(chunk_changed)
        unchanged = torch.from_numpy(~np.concatenate(changed)).float().to(boxes.device)
        proposals = Proposals(rles, boxes, proposals.iou_preds, proposals.stability, proposals.points,
                              proposals.crop_boxes)
        return proposals.select(_nms(boxes, unchanged, max(self.box_nms_thresh, self.crop_nms_thresh)))


def _check_positive_int(**values) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_non_negative_int(**values) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
