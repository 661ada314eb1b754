"""Helpers for tests that compare our model with the official one on identical random weights."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sam_engine.model import Sam, build_sam
from sam_engine.model.official import official_twin


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give the parameters that SAM initialises to constants (positions, norms) random values too.

    With zero relative positions or unit norms, a parity test would not exercise those paths.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "pos_embed" in name or "rel_pos" in name:
                param.copy_(0.1 * noise)
            elif "norm" in name or "neck.1" in name or "neck.3" in name:
                param.add_(0.1 * noise)
    return model


def model_pair(variant: str, seed: int = 0) -> tuple[Sam, torch.nn.Module]:
    """Our model with random weights, and the official model holding the very same weights."""
    torch.manual_seed(seed)
    ours = randomize(build_sam(variant), seed)
    return ours, official_twin(ours)


def photograph() -> np.ndarray:
    """A real photograph shipped inside matplotlib (Grace Hopper, 600 x 512 RGB)."""
    import matplotlib.cbook

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as image:
        return np.array(image.convert("RGB"))


def train_disk_model(variant: str = "tiny", steps: int = 200, seed: int = 0, clicks: int = 32) -> Sam:
    """:func:`train_disk_models` at one step count."""
    return train_disk_models(variant, (steps,), seed, clicks)[0]


def train_disk_models(
    variant: str = "tiny", steps: Sequence[int] = (200,), seed: int = 0, clicks: int = 32
) -> list[Sam]:
    """A model trained for a few seconds to answer a click with disks around it (radii 3/64, 6/64 and 10/64
    of the image side for the three multimask outputs) and to predict their IoU, whatever the image.

    Random weights answer every click with the same image-wide blob, which no filter of the automatic mask
    generator lets through; this model gives many distinct, localised masks with varied scores, so the
    generator's filters, NMS and crops all have work to do. The tiny model trains whole; larger variants
    train their prompt encoder and decoder only (their random encoder costs seconds per step on a CPU,
    and the disks do not depend on the image).

    One run gives the model after each of ``steps`` (copies, in eval mode): the same weights as separate runs of
    that many steps, for the cost of the longest.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_sam(variant).train()
    train_encoder = variant == "tiny"
    parameters = model.parameters() if train_encoder else [
        *model.prompt_encoder.parameters(), *model.mask_decoder.parameters()
    ]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0)
    side = model.config.embedding_size * 4  # low-res mask side
    centres = torch.arange(side).float() + 0.5
    radii = torch.tensor([3.0, 6.0, 10.0]) * side / 64  # in low-res pixels
    image = torch.zeros(1, 3, model.img_size, model.img_size)
    with torch.set_grad_enabled(train_encoder):
        embedding = model.encode_images(image)
    models = []
    for step in range(1, max(steps) + 1):
        points = torch.rand(clicks, 1, 2, generator=generator) * model.img_size
        low = points[:, 0] * side / model.img_size
        dx2 = (centres[None, None, :] - low[:, 0, None, None]) ** 2  # clicks x 1 x side
        dy2 = (centres[None, :, None] - low[:, 1, None, None]) ** 2  # clicks x side x 1
        targets = (dx2 + dy2)[:, None] <= radii[None, :, None, None] ** 2  # clicks x 3 x side x side
        if train_encoder:
            embedding = model.encode_images(image)
        logits, iou_pred = model.predict_masks(embedding, points=(points, torch.ones(clicks, 1)))
        predicted = logits.detach() > 0
        iou = (predicted & targets).sum((2, 3)) / (predicted | targets).sum((2, 3)).clamp(min=1)
        loss = F.binary_cross_entropy_with_logits(logits, targets.float()) + F.mse_loss(iou_pred, iou)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in steps:
            models.append(copy.deepcopy(model).eval())
    return models


def amg_thresholds(model: Sam, image: np.ndarray, pass_fraction: float = 0.3) -> dict:
    """``pred_iou_thresh`` and ``stability_score_thresh`` fitted to a model: about ``pass_fraction`` of its
    masks on ``image`` (16 x 16 clicks) pass the IoU filter, and about half of those the stability filter.

    A model trained for seconds (``train_disk_model``) lands on a different plateau with every change of
    floating-point order; fixed thresholds would make tests that need masks depend on that luck.
    """
    from sam_engine.amg.grids import point_grid
    from sam_engine.amg.mask_ops import stability_scores
    from sam_engine.predict.predictor import SamPredictor

    predictor = SamPredictor(model, precision="fp32")
    predictor.set_image(image)
    points = point_grid(16) * np.array(image.shape[:2])[None, ::-1]
    labels = torch.ones(len(points), 1, dtype=torch.int)
    low_res, iou = predictor.predict_low_res_torch(predictor.transform_coords(points)[:, None], labels)
    iou_thresh = float(torch.quantile(iou.flatten(), 1 - pass_fraction))
    kept = low_res.flatten(0, 1)[iou.flatten() > iou_thresh]
    stability = stability_scores(predictor.upscale_masks(kept[:, None])[:, 0], model.mask_threshold, 1.0)
    return {"pred_iou_thresh": round(iou_thresh, 4), "stability_score_thresh": round(float(stability.nanmedian()), 4)}
