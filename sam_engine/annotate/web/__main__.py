"""``python -m sam_engine.annotate.web`` (``sam-annotate-web``): people annotate a round of images in the browser.

    sam-annotate-web pool=shards/photos checkpoint=outputs/engine/stage1/round2/train/export out_dir=shards/manual
    sam-annotate-web pool=shards/photos checkpoint=export out_dir=shards/manual stage=2 prefix=round03 start=40

Prints the page's address, serves until every image of the round is finished (the round's shard is then
published) and prints the round's progress; stopped before, the same command resumes the round.
"""

from __future__ import annotations

from omegaconf import DictConfig

from sam_engine.annotate.web.options import ServeOptions
from sam_engine.cli import run_command
from sam_engine.utils.config_checks import check_values, typed_config
from sam_engine.utils.paths import check_output_is_not_input


def annotate(cfg: DictConfig) -> dict:
    """Check the values of the ``annotate_web`` config, then serve the round (:mod:`sam_engine.annotate.web.run`)."""
    check_values(cfg, integers={"start": 0, "images": 1}, strings=("pool", "checkpoint", "out_dir", "prefix", "device"))
    if cfg.stage.number not in (1, 2):
        raise ValueError(f"stage={cfg.stage.number}: people annotate in stage 1 or 2 (stage 3's masks come from "
                         "sam-label)")
    check_output_is_not_input(cfg.pool, cfg.out_dir, input_key="pool", output_key="out_dir")
    typed_config(ServeOptions, cfg.serve, "serve").check()
    from sam_engine.annotate.web.run import annotate as run  # torch, the model, the server: not for --help

    return run(cfg)


def main() -> None:
    run_command(annotate, "annotate_web")


if __name__ == "__main__":
    main()
