"""The work of ``sam-predict`` (:mod:`sam_engine.predict.__main__`): one image, a few clicks, an overlay PNG."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sam_engine.data.images import decode_image
from sam_engine.data.synthetic.scenes import SceneSpec, generate_scene
from sam_engine.model import load_model
from sam_engine.predict.predictor import SamPredictor
from sam_engine.train.prompts import farthest_from_boundary_points
from sam_engine.utils.visualize import overlay_masks, save_png

log = logging.getLogger(__name__)


def synthetic_prompts(seed: int, image_size: int, num_clicks: int):
    """A synthetic scene, a click at the centre of each of its largest objects, and their masks.

    Returns: image H x W x 3 uint8, points K x 2, ground-truth masks K x H x W bool.
    """
    scene = generate_scene(seed, 0, SceneSpec(image_size=image_size))
    wholes = scene.masks[scene.levels == 0]
    largest = wholes[np.argsort(-wholes.reshape(len(wholes), -1).sum(1))[:num_clicks]]
    points = farthest_from_boundary_points(torch.from_numpy(largest)).points.numpy()
    return scene.image, points, largest


def grid_points(height: int, width: int, per_side: int = 3) -> np.ndarray:
    """per_side^2 x 2 points on a regular grid inside the image."""
    xs = (np.arange(per_side) + 0.5) * width / per_side
    ys = (np.arange(per_side) + 0.5) * height / per_side
    return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)


def predict(cfg: DictConfig) -> None:
    """Segment ``cfg.image`` (or a synthetic scene) from its clicks; save the overlay to ``cfg.out``."""
    model = load_model(cfg.checkpoint, OmegaConf.to_container(cfg.model)).to(cfg.device)
    truth = None
    if cfg.image is None:
        image, points, truth = synthetic_prompts(cfg.scene_seed, model.img_size, cfg.num_clicks)
    else:
        image = decode_image(Path(cfg.image).read_bytes(), source=str(cfg.image))
        points = np.asarray(cfg.points, dtype=np.float64) if cfg.points else grid_points(*image.shape[:2])

    predictor = SamPredictor(model, precision=cfg.precision)
    predictor.set_image(image)
    predictor.check_points(points, np.ones(len(points)))  # inside the image, finite: named if not
    coords = predictor.transform_coords(points)
    labels = torch.ones(len(points), 1, dtype=torch.int, device=model.device)
    masks, scores, _ = predictor.predict_torch(coords[:, None], labels, multimask_output=True)
    best = scores.argmax(dim=1)
    rows = torch.arange(len(points), device=model.device)
    masks, scores = masks[rows, best].cpu().numpy(), scores[rows, best].cpu().numpy()

    out = save_png(overlay_masks(image, masks, points, np.ones(len(points))), cfg.out)
    log.info("%d masks, mean predicted IoU %.3f -> %s", len(masks), scores.mean(), out)
    if truth is not None:
        inter = (masks & truth).reshape(len(masks), -1).sum(1)
        union = (masks | truth).reshape(len(masks), -1).sum(1)
        log.info("mIoU against the scene's ground truth: %.3f", float(np.mean(inter / np.maximum(union, 1))))
