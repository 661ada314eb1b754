"""SAM's optimiser and schedule (paper, appendix A): AdamW with layer-wise learning-rate decay for the
image encoder, linear warm-up, then step decay.

The paper's ViT-H recipe: lr 8e-4 after 250 warm-up steps, AdamW (0.9, 0.999), weight decay 0.1,
layer-wise decay 0.8, lr divided by 10 at 60k and 86,666 of 90k steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sam_engine.model import Sam
from sam_engine.train.settings import OptimConfig

NO_WEIGHT_DECAY = ("pos_embed", "rel_pos", "point_embeddings", "not_a_point_embed", "no_mask_embed",
                   "iou_token", "mask_tokens")


def encoder_layer_id(name: str, depth: int) -> int:
    """Depth of an image-encoder parameter: 0 for the patch and position embeddings, i + 1 for block i,
    depth + 1 for the neck."""
    if name.startswith(("patch_embed", "pos_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def decays(name: str, param: nn.Parameter) -> bool:
    """Weight decay applies to weight matrices and kernels, not to biases, norms or embeddings."""
    return param.ndim > 1 and not any(key in name for key in NO_WEIGHT_DECAY)


def param_groups(model: Sam, config: OptimConfig) -> list[dict]:
    """Parameter groups with their lr scale (layer-wise decay in the encoder) and weight decay.

    The prompt encoder and mask decoder get the full lr; encoder layer i of D gets
    lr * layer_decay ** (D + 1 - i). With ``freeze_image_encoder`` the encoder is left out entirely
    (its parameters get ``requires_grad=False``).
    """
    depth = model.config.depth
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}

    def add(name: str, param: nn.Parameter, scale: float) -> None:
        groups.setdefault((scale, decays(name, param)), []).append(param)

    for name, param in model.image_encoder.named_parameters():
        param.requires_grad_(not config.freeze_image_encoder)
        if not config.freeze_image_encoder:
            add(name, param, config.layer_decay ** (depth + 1 - encoder_layer_id(name, depth)))
    for module in (model.prompt_encoder, model.mask_decoder):
        for name, param in module.named_parameters():
            add(name, param, 1.0)
    return [
        {"params": params, "lr_scale": scale, "lr": config.lr * scale,
         "weight_decay": config.weight_decay if decay else 0.0}
        for (scale, decay), params in sorted(groups.items(), key=lambda item: item[0])
    ]


def lr_factor(step: int, warmup_steps: int, milestones: Sequence[int], gamma: float) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up from 1/warmup to 1, then gamma per milestone passed."""
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return warmup * gamma ** sum(step >= m for m in milestones)


def build_optimizer(model: Sam, config: OptimConfig) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``param_groups`` and its per-step schedule (call ``scheduler.step()`` every step).

    The update is PyTorch's fused kernel where every weight is a float tensor on the CPU or a CUDA device: one
    pass over the tensors instead of PyTorch's default on the CPU, a dozen small operations per tensor."""
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in model.parameters())
    optimizer = torch.optim.AdamW(param_groups(model, config), lr=config.lr, betas=tuple(config.betas),
                                  fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.warmup_steps, config.milestones, config.gamma)
    )
    return optimizer, scheduler
