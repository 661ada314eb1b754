"""Training SAM by simulated interaction (``python -m sam_engine.train``, ``sam-train``).

- ``run``: the training a command or the engine asks for (Lightning, Hydra config in, export out).
- ``settings``: the ``simulation`` and ``optim`` dataclasses and the config's checks, without torch.
- ``module``: the LightningModule; ``interactive``: the 11 simulated rounds of prompts per mask.
- ``prompts``: clicks and boxes drawn from masks and from the model's errors.
- ``losses``: focal + dice (20:1) over the best of the three outputs, plus IoU regression.
- ``optim``: AdamW with layer decay and SAM's step schedule; ``distributed``: DDP, FSDP and SLURM.
"""
