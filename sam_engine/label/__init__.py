"""Pseudo-labelling (``python -m sam_engine.label``, ``sam-label``): SAM's stage 3 over shards.

- ``inputs``: the input shards (a shard set, or an image folder in groups), their split over SLURM array
  tasks, and the check that each has its output (``verify=true``), without torch.
- ``labeller``: the automatic mask generator over input shards into output shards named after them,
  resumable, with a summary per task.
- ``run``: one task of the command, from its config.
"""
