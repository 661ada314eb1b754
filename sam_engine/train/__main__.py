"""``python -m sam_engine.train stage=1`` (``sam-train``): train SAM by simulated interaction.

The work is :func:`sam_engine.train.run.train`, imported once the config is composed: ``--help``,
``--cfg job`` and a wrong config name answer in a second, without loading torch and Lightning.
"""

from __future__ import annotations

from omegaconf import DictConfig

from sam_engine.cli import run_command


def train(cfg: DictConfig) -> dict:
    from sam_engine.train.run import train as run  # seconds of imports, which a config error never needs

    return run(cfg)


def main() -> None:
    run_command(train, "train")


if __name__ == "__main__":
    main()
