"""Annotators for the data engine's human-in-the-loop stages (SAM's stage 1 and stage 2).

- ``cost.AnnotationTimeModel``: seconds per mask, click and brush stroke (an unassisted mask: 34 s).
- ``simulated.SimulatedAnnotator``: a person played by the ground truth, clicking with the model's help,
  all objects of an image at once; returns ``AnnotatedMasks``.
- ``simulated.review_prefilled``: the pre-filled (stage 2) masks the annotator keeps, and the objects they
  leave to draw.
- ``session``: one annotation round of the engine (pre-fill, annotate, a shard) and its statistics.
- ``coco_bridge``: people instead of the simulator: proposals out to COCO, corrections back in.

Nothing is imported here, so that ``sam-annotate`` and ``sam-annotate-web`` answer ``--help`` without torch.
"""
