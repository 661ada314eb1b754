"""The SAM architecture (timm image encoder, prompt encoder, mask decoder), builders and export."""

from sam_engine.model.build import CheckpointError, build_sam, export_sam, load_checkpoint, load_export, load_model
from sam_engine.model.config import SamConfig, load_variant, variant_names
from sam_engine.model.sam import Sam

__all__ = [
    "CheckpointError",
    "Sam",
    "SamConfig",
    "build_sam",
    "export_sam",
    "load_checkpoint",
    "load_export",
    "load_model",
    "load_variant",
    "variant_names",
]
