"""Rebuild one of our models with the official ``segment_anything`` classes.

This is how anyone with only Meta's code uses a model trained here: the classes take exactly the
hyper-parameters stored in ``sam_config.json``, and ``sam.pth`` loads into them strictly.
``segment_anything`` is not a dependency of sam_engine; install it (``pip install segment-anything``,
part of our ``dev`` extra) to use this module.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from sam_engine.model.build import EXPORT_CONFIG, EXPORT_WEIGHTS, check_export_checksum, read_state_dict
from sam_engine.model.config import SamConfig, resolve_config


def build_official_sam(config: SamConfig | str | Path, checkpoint: str | Path | None = None):
    """An official ``segment_anything.modeling.Sam`` with the architecture of ``config``.

    Arguments:
        config: a SamConfig, a variant name, or a ``sam_config.json`` / export directory.
        checkpoint: a bare state dict to load strictly (``sam.pth``), or None for random weights.
    """
    try:
        from segment_anything.modeling import (
            ImageEncoderViT,
            MaskDecoder,
            PromptEncoder,
            Sam,
            TwoWayTransformer,
        )
    except ImportError as e:
        raise ImportError("the official package is needed: pip install segment-anything") from e

    config = resolve_config(config)
    side = config.embedding_size
    model = Sam(
        image_encoder=ImageEncoderViT(
            img_size=config.img_size,
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            out_chans=config.prompt_embed_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=config.window_size,
            global_attn_indexes=tuple(config.global_attn_indexes),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(side, side),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=config.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(config.pixel_mean),
        pixel_std=list(config.pixel_std),
    )
    model.mask_threshold = config.mask_threshold
    if checkpoint is not None:
        model.load_state_dict(read_state_dict(checkpoint), strict=True)
    return model.eval()


def load_official_export(export_dir: str | Path):
    """The official model rebuilt from an export directory (``sam_config.json`` + ``sam.pth``)."""
    export_dir = Path(export_dir)
    check_export_checksum(export_dir)
    return build_official_sam(export_dir / EXPORT_CONFIG, export_dir / EXPORT_WEIGHTS)


def official_twin(model):
    """The official model holding exactly the weights of our ``model`` (for comparisons and benchmarks)."""
    twin = build_official_sam(model.config)
    twin.load_state_dict(model.state_dict(), strict=True)
    return twin.to(model.device)
