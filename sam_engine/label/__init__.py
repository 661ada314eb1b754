"""Pseudo-labelling (``python -m sam_engine.label``, ``sam-label``): SAM's stage 3 over shards.

- ``labeller``: the automatic mask generator over input shards (or an image folder) into output
  shards named after them, resumable, split over SLURM array tasks, with a summary per task.
"""
