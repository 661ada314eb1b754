"""Helpers for tests that compare our model with the official one on identical random weights."""

from __future__ import annotations

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


def train_disk_model(steps: int = 200, seed: int = 0) -> Sam:
    """The tiny model trained for a few seconds to answer a click with disks around it (radii 12, 24 and
    40 px for the three multimask outputs) and to predict their IoU, whatever the image.

    Random weights answer every click with the same image-wide blob, which no filter of the automatic mask
    generator lets through; this model gives many distinct, localised masks with varied scores, so the
    generator's filters, NMS and crops all have work to do.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_sam("tiny").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0)
    side = model.config.embedding_size * 4  # low-res mask side
    centres = torch.arange(side).float() + 0.5
    radii = torch.tensor([3.0, 6.0, 10.0])  # in low-res pixels
    image = torch.zeros(1, 3, model.img_size, model.img_size)
    for _ in range(steps):
        points = torch.rand(32, 1, 2, generator=generator) * model.img_size
        low = points[:, 0] * side / model.img_size
        dx2 = (centres[None, None, :] - low[:, 0, None, None]) ** 2  # 32 x 1 x side
        dy2 = (centres[None, :, None] - low[:, 1, None, None]) ** 2  # 32 x side x 1
        distance2 = dx2 + dy2
        targets = distance2[:, None] <= radii[None, :, None, None] ** 2  # 32 x 3 x side x side
        logits, iou_pred = model.predict_masks(model.encode_images(image), points=(points, torch.ones(32, 1)))
        predicted = logits.detach() > 0
        iou = (predicted & targets).sum((2, 3)) / (predicted | targets).sum((2, 3)).clamp(min=1)
        loss = F.binary_cross_entropy_with_logits(logits, targets.float()) + F.mse_loss(iou_pred, iou)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
