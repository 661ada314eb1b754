"""Helpers for tests that compare our model with the official one on identical random weights."""

from __future__ import annotations

import numpy as np
import torch
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
