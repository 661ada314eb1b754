"""``python -m sam_engine.annotate stage=1``: stage 1 (or 2) of the engine, in its run directory.

    python -m sam_engine.annotate stage=1 run_dir=outputs/engine   # K rounds: annotate a chunk, retrain
    python -m sam_engine.annotate stage=2 annotator.kind=people     # pauses for people's corrections

The same steps as ``python -m sam_engine.engine`` runs for that stage (``conf/annotate.yaml`` extends
``conf/engine.yaml``): finished rounds are skipped, the previous stage's model must exist.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from sam_engine.cli import alias_stage_numbers
from sam_engine.engine.__main__ import PAUSED_EXIT_CODE
from sam_engine.engine.session import run_engine

ANNOTATED_STAGES = (1, 2)


@hydra.main(version_base=None, config_path="../../conf", config_name="annotate")
def main(cfg: DictConfig) -> list[dict]:
    if cfg.stage.number not in ANNOTATED_STAGES:
        raise ValueError(f"stage={cfg.stage.name}: annotation stages are 1 (assisted_manual) and 2 (semi_automatic)")
    rows = run_engine(cfg, stages=(cfg.stage.number,))
    if rows is None:
        sys.exit(PAUSED_EXIT_CODE)
    return rows


if __name__ == "__main__":
    sys.argv = alias_stage_numbers(sys.argv)
    main()
