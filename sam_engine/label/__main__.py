"""``python -m sam_engine.label`` (``sam-label``): pseudo-label input shards (or an image folder) into output shards.

    python -m sam_engine.label input=shards/pool output=shards/stage3 checkpoint=outputs/engine/stage2/train/export
    python -m sam_engine.label input=photos/ output=shards/auto checkpoint=sam_vit_b_01ec64.pth model=vit_b
    python -m sam_engine.label ... amg.points_per_side=16 amg.crop_n_layers=1
    python -m sam_engine.label input=shards/pool output=shards/stage3 verify=true

In a SLURM array (``slurm/label_array.sbatch``) each task takes its block of the input shards from
``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``. See :mod:`sam_engine.label.labeller` for what is written.
"""

from __future__ import annotations

from omegaconf import DictConfig

from sam_engine.cli import run_command
from sam_engine.label.inputs import verify


def label(cfg: DictConfig) -> dict:
    if cfg.get("verify") is True:  # reads manifests and summaries only: no torch, no model
        return verify(cfg)
    from sam_engine.label.run import label as run  # torch and the model load once the config is composed

    return run(cfg)


def main() -> None:
    run_command(label, "label")


if __name__ == "__main__":
    main()
