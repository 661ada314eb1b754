"""``python -m sam_engine.train stage=1``: train SAM by simulated interaction (Hydra, Lightning).

The work is :func:`sam_engine.training.train`, imported once the config is composed: ``--help``,
``--cfg job`` and a wrong config name answer in a second, without loading torch and Lightning.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from sam_engine.cli import alias_stage_numbers


@hydra.main(version_base=None, config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> dict:
    from sam_engine.training import train  # seconds of imports, which a config error never needs

    return train(cfg)


if __name__ == "__main__":
    sys.argv = alias_stage_numbers(sys.argv)
    main()
