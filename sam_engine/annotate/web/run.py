"""The work of ``sam-annotate-web`` (:mod:`sam_engine.annotate.web.__main__`): serve one round of images."""

from __future__ import annotations

import itertools
import json

from omegaconf import DictConfig, OmegaConf

from sam_engine.amg import SamAutomaticMaskGenerator
from sam_engine.annotate.session import pool_samples
from sam_engine.annotate.web.options import ServeOptions
from sam_engine.annotate.web.round import WebRound
from sam_engine.annotate.web.segmenter import Segmenter
from sam_engine.annotate.web.server import serve
from sam_engine.label.labeller import model_id
from sam_engine.model import load_model
from sam_engine.utils.config_checks import typed_config
from sam_engine.utils.device import pick_device


def annotate(cfg: DictConfig) -> dict:
    """Serve one round (the ``annotate_web`` config, its values checked by ``__main__``) until it is published
    or stopped; returns its progress."""
    stage = cfg.stage.number
    options = typed_config(ServeOptions, cfg.serve, "serve")  # checked by ``__main__``, and again by ``serve``
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
