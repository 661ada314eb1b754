"""``python -m sam_engine.predict`` (``sam-predict``): one image, a few clicks, masks saved as a PNG overlay.

    python -m sam_engine.predict                                  # tiny model, synthetic scene
    python -m sam_engine.predict model=vit_b checkpoint=sam_vit_b_01ec64.pth image=photo.jpg
    python -m sam_engine.predict checkpoint=outputs/run/export points='[[120,80],[300,200]]'

Each click is a single-point prompt; of SAM's three outputs the one with the highest predicted IoU
is kept. On a synthetic scene the clicks go to the centres of the largest objects and the mIoU
against their ground truth is printed.
"""

from __future__ import annotations

from omegaconf import DictConfig

from sam_engine.cli import run_command
from sam_engine.utils.config_checks import check_values


def predict(cfg: DictConfig) -> None:
    """Check the values of the ``predict`` config, then segment (:mod:`sam_engine.predict.run`)."""
    check_values(cfg, integers={"scene_seed": 0, "num_clicks": 1}, strings=("out", "image"), nullable=("image",))
    from sam_engine.predict.run import predict as run  # torch and the model: seconds that --help and a bad value skip

    run(cfg)


def main() -> None:
    run_command(predict, "predict")


if __name__ == "__main__":
    main()
