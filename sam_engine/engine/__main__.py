"""``python -m sam_engine.engine`` (``sam-engine``): the whole data engine, resumable (``conf/engine.yaml``).

    python -m sam_engine.engine                          # tiny model, synthetic data, CPU (docs/performance.md)
    python -m sam_engine.engine run_dir=outputs/run2 stage1.rounds=6 stage2.rounds=5
    python -m sam_engine.engine annotator.kind=people    # pauses for people at each annotation round
    python -m sam_engine.engine stage=1                  # stage 1's rounds only (the seed model must exist)
    python -m sam_engine.engine data=folder data.images=photos/ init=sam_vit_b_01ec64.pth model=vit_b \
        annotator.kind=people                            # your own photos (docs/quickstart.md)

A rerun skips the steps finished before and completes the one that was interrupted. Summary:
``<run_dir>/engine_summary.csv``, ``engine_summary.json``, ``stages.png``; wandb with ``logger.wandb=true``.
Exit status 3: paused, waiting for people's corrections (the message says where they go).
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from sam_engine.cli import run_command
from sam_engine.stages import ALL_STEPS

PAUSED_EXIT_CODE = 3
GROUP_ALIASES = {"data": "engine_data@data"}
"""``data=folder`` picks ``conf/engine_data/folder.yaml`` (``conf/data/`` holds the train command's group)."""


def engine(cfg: DictConfig) -> list[dict]:
    """Run the engine's steps (those of ``cfg.stage`` alone when one is given); exit 3 when paused."""
    from sam_engine.engine.session import run_engine  # torch, Lightning, the model: seconds that --help skips

    rows = run_engine(cfg, stages=ALL_STEPS if cfg.get("stage") is None else (cfg.stage.number,))
    if rows is None:
        sys.exit(PAUSED_EXIT_CODE)
    return rows


def main() -> None:
    run_command(engine, "engine", GROUP_ALIASES)


if __name__ == "__main__":
    main()
