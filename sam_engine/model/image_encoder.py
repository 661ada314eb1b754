"""SAM's image encoder, built on timm's ``VisionTransformerSAM``.

timm implements SAM's ViT (windowed attention, decomposed relative positions, the conv neck) with
attention through ``scaled_dot_product_attention``. Two details make its parameters carry the official
names, so an official checkpoint loads with ``strict=True`` and ours loads into the official code:
the MLP's linear layers are called ``lin1``/``lin2`` (timm calls them ``fc1``/``fc2``), and the
classification head is disabled (it has no parameters).
"""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer_sam import VisionTransformerSAM
from torch import nn

from sam_engine.model.common import MLPBlock, mimetic_keys_
from sam_engine.model.config import SamConfig


class ImageEncoder(VisionTransformerSAM):
    """ViT image encoder + neck. ``forward``: B x 3 x S x S normalised images -> B x C x S/p x S/p.

    C is ``prompt_embed_dim`` (256 for the released models), S ``img_size``, p ``patch_size``.
    ``drop_path_rate`` (stochastic depth) is a training option, not part of the architecture.
    """

    def __init__(self, config: SamConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__(
            img_size=config.img_size,
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            mlp_layer=MLPBlock,
            use_abs_pos=True,
            use_rel_pos=True,
            window_size=config.window_size,
            global_attn_indexes=tuple(config.global_attn_indexes),
            neck_chans=config.prompt_embed_dim,
            num_classes=0,
            global_pool="",
            drop_path_rate=drop_path_rate,
        )
        self.img_size = config.img_size
        for block in self.blocks:  # fused qkv: rows [0, C) are the queries, [C, 2C) the keys
            query, key, _ = block.attn.qkv.weight.chunk(3, dim=0)
            mimetic_keys_(query, key)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
