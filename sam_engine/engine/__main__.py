"""``python -m sam_engine.engine``: the whole data engine, resumable (see ``conf/engine.yaml``).

    python -m sam_engine.engine                          # tiny model, synthetic data, CPU, < 10 min
    python -m sam_engine.engine run_dir=outputs/run2 stage1.rounds=6 stage2.rounds=5
    python -m sam_engine.engine annotator.kind=people    # pauses for people at each annotation round

A rerun skips the steps finished before and completes the one that was interrupted. Summary:
``<run_dir>/engine_summary.csv``, ``engine_summary.json``, ``stages.png``; wandb with ``logger.wandb=true``.
Exit status 3: paused, waiting for people's corrections (the message says where they go).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from sam_engine.engine.session import run_engine

PAUSED_EXIT_CODE = 3


@hydra.main(version_base=None, config_path="../../conf", config_name="engine")
def main(cfg: DictConfig) -> list[dict]:
    rows = run_engine(cfg)
    if rows is None:
        sys.exit(PAUSED_EXIT_CODE)
    return rows


if __name__ == "__main__":
    main()
