"""Annotators for the data engine's human-in-the-loop stages (SAM's stage 1 and stage 2).

- ``AnnotationTimeModel``: seconds per mask, click and brush stroke (an unassisted mask: 34 s).
- ``SimulatedAnnotator``: a person played by the ground truth, clicking with the model's help,
  all objects of an image at once; returns ``AnnotatedMasks``.
- ``uncovered``: the objects no pre-filled (stage 2) mask covers, which the annotator still draws.
- ``session``: one annotation round of the engine (pre-fill, annotate, a shard) and its statistics.
- ``coco_bridge``: people instead of the simulator: proposals out to COCO, corrections back in.
"""

from sam_engine.annotate.cost import AnnotationTimeModel
from sam_engine.annotate.simulated import AnnotatedMasks, SimulatedAnnotator, uncovered

__all__ = ["AnnotatedMasks", "AnnotationTimeModel", "SimulatedAnnotator", "uncovered"]
