"""The automatic mask generator (SAM's stage-3 pseudo-labeller), batched end to end."""

from sam_engine.amg.generator import Proposals, SamAutomaticMaskGenerator

__all__ = ["Proposals", "SamAutomaticMaskGenerator"]
