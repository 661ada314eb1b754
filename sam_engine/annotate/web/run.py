"""``python -m sam_engine.annotate.web`` (``sam-annotate-web``): people annotate a round of images in the browser.

    sam-annotate-web pool=shards/photos checkpoint=outputs/engine/stage1/round2/train/export out_dir=shards/manual
    sam-annotate-web pool=shards/photos checkpoint=export out_dir=shards/manual stage=2 prefix=round03 start=40

Prints the page's address, serves until every image of the round is finished (the round's shard is then
published) and prints the round's progress; stopped before, the same command resumes the round.
"""

from __future__ import annotations

import itertools
import json

from omegaconf import DictConfig, OmegaConf

from sam_engine.amg import SamAutomaticMaskGenerator
from sam_engine.annotate.session import pool_samples
from sam_engine.annotate.web.round import WebRound
from sam_engine.annotate.web.segmenter import Segmenter
from sam_engine.annotate.web.server import ServeOptions, serve
from sam_engine.cli import run_command
from sam_engine.label.labeller import model_id
from sam_engine.model import load_model
from sam_engine.utils.config_checks import check_values, typed_config
from sam_engine.utils.device import pick_device
from sam_engine.utils.paths import check_output_is_not_input


def annotate(cfg: DictConfig) -> dict:
    """Serve one round (the ``annotate_web`` config) until it is published or stopped; returns its progress."""
    check_values(cfg, integers={"start": 0, "images": 1}, strings=("pool", "checkpoint", "out_dir", "prefix", "device"))
    stage = cfg.stage.number
    if stage not in (1, 2):
        raise ValueError(f"stage={stage}: people annotate in stage 1 or 2 (stage 3's masks come from sam-label)")
    options = typed_config(ServeOptions, cfg.serve, "serve")
    options.check()
    check_output_is_not_input(cfg.pool, cfg.out_dir, input_key="pool", output_key="out_dir")
    samples = list(itertools.islice(pool_samples(cfg.pool), cfg.start, cfg.start + cfg.images))
    if not samples:
        raise ValueError(f"pool={cfg.pool}: no readable image from start={cfg.start}")
    model = load_model(cfg.checkpoint, cfg.get("model")).to(pick_device(cfg.device)).eval()
    prefill = None
    if stage == 2:
        prefill = SamAutomaticMaskGenerator(model, **OmegaConf.to_container(cfg.prefill, resolve=True))
    round_ = WebRound(samples, cfg.out_dir, cfg.prefix, stage, model_id(cfg.checkpoint), prefill,
                      claim_seconds=options.claim_minutes * 60)
    serve(round_, Segmenter(model), options, on_ready=lambda url: print(f"annotate at {url}", flush=True))
    progress = round_.progress()
    print(json.dumps(progress), flush=True)
    return progress


def main() -> None:
    run_command(annotate, "annotate_web")


if __name__ == "__main__":
    main()
