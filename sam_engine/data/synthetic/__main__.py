"""``python -m sam_engine.data.synthetic`` (``sam-synthetic``): write (or complete) a synthetic dataset.

    python -m sam_engine.data.synthetic out_dir=data/synthetic/train num_images=512 seed=0 image_size=256
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from sam_engine.cli import run_command
from sam_engine.data.synthetic.dataset import ensure_synthetic_dataset
from sam_engine.data.synthetic.scenes import SceneSpec
from sam_engine.utils.config_checks import check_values, typed_config

log = logging.getLogger(__name__)


def synthetic(cfg: DictConfig) -> None:
    check_values(cfg, integers={"num_images": 0, "seed": 0, "image_size": 8, "shard_size": 1},
                 strings=("out_dir", "image_format"))
    typed_config(SceneSpec, cfg.scene, "scene")
    out_dir = ensure_synthetic_dataset(
        cfg.out_dir,
        num_images=cfg.num_images,
        seed=cfg.seed,
        image_size=cfg.image_size,
        shard_size=cfg.shard_size,
        image_format=cfg.image_format,
        scene=OmegaConf.to_container(cfg.scene),
    )
    log.info("synthetic dataset ready: %s", out_dir)


def main() -> None:
    run_command(synthetic, "synthetic")


if __name__ == "__main__":
    main()
