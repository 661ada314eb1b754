"""``python -m sam_engine.onnx_export`` (``sam-onnx-export``): a model's decoder as ONNX for CVAT and browser tools.

    python -m sam_engine.onnx_export checkpoint=outputs/engine/stage1/train/export out=decoder.onnx
    python -m sam_engine.onnx_export model=vit_b checkpoint=sam_vit_b_01ec64.pth out=vit_b_decoder.onnx
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from sam_engine.cli import run_command
from sam_engine.utils.config_checks import check_values

log = logging.getLogger(__name__)


def export(cfg: DictConfig) -> str:
    """Write ``cfg.out`` from ``cfg.checkpoint`` (the ``onnx_export`` config); returns its path."""
    check_values(cfg, integers={"opset": 17}, booleans=("return_single_mask",), strings=("checkpoint", "out"))
    from sam_engine.model import load_model  # torch and onnx: seconds that --help and a bad value skip
    from sam_engine.onnx_export.decoder import export_decoder

    model = load_model(cfg.checkpoint, cfg.get("model"))
    path = export_decoder(model, cfg.out, return_single_mask=cfg.return_single_mask, opset=cfg.opset)
    log.info("wrote %s: the %s decoder of %s (image embeddings %s)", path, model.config.name, cfg.checkpoint,
             "x".join(map(str, (model.config.prompt_embed_dim, *model.prompt_encoder.image_embedding_size))))
    return str(path)


def main() -> None:
    run_command(export, "onnx_export")


if __name__ == "__main__":
    main()
