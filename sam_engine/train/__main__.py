"""``python -m sam_engine.train stage=1`` (``sam-train``): train SAM by simulated interaction.

The work is :func:`sam_engine.train.run.train`, imported once the config is composed and its values
checked: ``--help``, ``--cfg job``, a wrong config name or a wrong value answer in a second, without
loading torch and Lightning.
"""

from __future__ import annotations

from omegaconf import DictConfig

from sam_engine.cli import run_command
from sam_engine.train.settings import check_train_config


def train(cfg: DictConfig) -> dict:
    check_train_config(cfg)
    from sam_engine.train.run import train as run  # seconds of imports, which a config error never needs

    return run(cfg)


def main() -> None:
    run_command(train, "train")


if __name__ == "__main__":
    main()
