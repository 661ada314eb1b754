"""The embedded default dataset: procedural scenes (:mod:`sam_engine.data.synthetic.scenes`) written as shards.

    python -m sam_engine.data.synthetic out_dir=data/synthetic/train num_images=512 seed=0 image_size=256
    python -m sam_engine.data.synthetic out_dir=data/synthetic/val num_images=64 seed=1 image_size=256

One call writes one directory; a train and a validation split are two calls with different seeds
(the scenes of two seeds are independent, and their keys differ: ``syn<seed>_<index>``).
Generation resumes: a killed run is completed by the next call, which writes only the images not
yet in a completed shard. Every annotation is exact ground truth (``source: seed``,
``predicted_iou`` and ``stability_score`` 1.0) and carries two extra keys, ``level`` (0 whole
object, 1 part, 2 sub-part) and ``object`` (the object's index in the image, back to front).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from sam_engine.data.records import make_annotations, make_record
from sam_engine.data.shards import ShardWriter
from sam_engine.data.synthetic.scenes import Scene, SceneSpec, generate_scene

log = logging.getLogger(__name__)

PARAMETERS_FILE = "synthetic.json"
"""Written in the output directory: the parameters of the dataset it holds, checked on every call."""

SHARD_PREFIX = "synthetic"
_SAVE_ARGS = {"png": {"format": "PNG", "compress_level": 1}, "jpg": {"format": "JPEG", "quality": 95}}
IMAGE_FORMATS = tuple(_SAVE_ARGS)


def sample_key(seed: int, index: int) -> str:
    """The sample key (and ``image_id``) of scene ``index`` of the dataset with ``seed``."""
    return f"syn{seed}_{index:07d}"


def encode_image(image: np.ndarray, image_format: str) -> bytes:
    """Encode an (H, W, 3) uint8 image as ``png`` (lossless, fast zlib level) or ``jpg`` (quality 95)."""
    if image_format not in _SAVE_ARGS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, **_SAVE_ARGS[image_format])
    return buffer.getvalue()


def scene_record(scene: Scene, key: str, file_name: str) -> dict:
    """The SA-1B record of a scene: one ``seed`` annotation per mask, with its ``level`` and ``object``."""
    annotations = make_annotations(scene.masks, provenance={"source": "seed"})
    for annotation, level, obj in zip(
        annotations, scene.levels.tolist(), scene.objects.tolist(), strict=True
    ):
        annotation["level"] = level
        annotation["object"] = obj
    height, width = scene.image.shape[:2]
    return make_record(key, width, height, file_name, annotations)


def scene_spec(image_size: int, scene: Mapping | None) -> SceneSpec:
    """The :class:`SceneSpec` of ``image_size`` with the fields given in ``scene`` (a Hydra node or dict).

    Raises:
        ValueError: ``scene`` names a field SceneSpec does not have.
    """
    fields = {f.name for f in dataclasses.fields(SceneSpec)} - {"image_size"}
    scene = OmegaConf.to_container(scene) if isinstance(scene, DictConfig) else dict(scene or {})
    unknown = sorted(set(scene) - fields)
    if unknown:
        raise ValueError(f"scene: unknown field(s) {unknown}; known: {sorted(fields)}")
    return SceneSpec(image_size=image_size, **{k: tuple(v) if isinstance(v, list) else v for k, v in scene.items()})


def _check_parameters(out_dir: Path, parameters: dict) -> None:
    """Record the dataset's parameters in ``out_dir``, or check that they match those already there.

    Raises:
        ValueError: ``out_dir`` holds a dataset generated with another seed, image size or format.
    """
    path = out_dir / PARAMETERS_FILE
    existing = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    if existing is not None:
        fixed = ("seed", "image_size", "image_format", "scene")
        if any(existing.get(name) != parameters[name] for name in fixed):
            raise ValueError(
                f"{out_dir} holds a synthetic dataset made with {existing}, not {parameters}: "
                "use another out_dir or delete it"
            )
        if existing["num_images"] >= parameters["num_images"]:
            return
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(parameters, indent=1), encoding="utf-8")


def ensure_synthetic_dataset(
    out_dir: str | Path,
    *,
    num_images: int,
    seed: int,
    image_size: int,
    shard_size: int = 100,
    image_format: str = "png",
    scene: Mapping | None = None,
) -> Path:
    """Generate the synthetic dataset in ``out_dir`` unless it is already there; return ``out_dir``.

    Safe to call on every start: images already in completed shards are not generated again, so a
    killed generation is completed by the next call, without duplicates. Calling again with a larger
    ``num_images`` adds the missing images.

    Arguments:
        out_dir: the shard directory (``<prefix>-NNNNNN.tar`` + ``manifest.json``).
        num_images: scenes ``0 .. num_images - 1`` of the dataset.
        seed: the dataset's seed (>= 0); use distinct seeds for distinct splits.
        image_size: side of the square images, pixels.
        shard_size: samples per shard.
        image_format: ``png`` (exact) or ``jpg``.
        scene: :class:`SceneSpec` fields other than ``image_size`` (object counts and sizes); None: its defaults.
    Raises:
        ValueError: bad arguments, or ``out_dir`` holds a dataset made with other parameters.
    """
    if num_images < 0 or seed < 0 or image_size < 16 or image_format not in IMAGE_FORMATS:
        raise ValueError(
            f"need num_images >= 0, seed >= 0, image_size >= 16, image_format in {IMAGE_FORMATS}; "
            f"got {num_images}, {seed}, {image_size}, {image_format!r}"
        )
    out_dir = Path(out_dir)
    spec = scene_spec(image_size, scene)
    parameters = dict(
        num_images=num_images, seed=seed, image_size=image_size, image_format=image_format,
        scene=json.loads(json.dumps(dataclasses.asdict(spec))),
    )
    _check_parameters(out_dir, parameters)
    with ShardWriter(out_dir, prefix=SHARD_PREFIX, max_samples=shard_size) as writer:
        done = writer.completed_keys()
        todo = [i for i in range(num_images) if sample_key(seed, i) not in done]
        if todo:
            log.info("%s: generating %d of %d synthetic images", out_dir, len(todo), num_images)
        for index in todo:
            key = sample_key(seed, index)
            scene = generate_scene(seed, index, spec)
            record = scene_record(scene, key, f"{key}.{image_format}")
            writer.write(key, encode_image(scene.image, image_format), image_format, record)
    return out_dir
