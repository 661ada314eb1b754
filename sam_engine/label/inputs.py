"""Input shards of a labelling job: listing them, splitting them among array tasks, checking their output.

The unit of work is an *input shard*: a tar of a shard directory, or a group of ``images_per_shard``
files of an image folder (in path order, named ``images-NNNNNN``); input shard ``NAME`` becomes output
shard ``NAME-000000.tar``. Nothing here needs torch or the model: ``sam-label verify=true`` answers
in a second.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from sam_engine.data.importers.folder import IMAGE_SUFFIXES
from sam_engine.data.shards import MANIFEST, list_shards, read_manifest, shard_name, shard_sample_counts
from sam_engine.utils.config_checks import check_values
from sam_engine.utils.paths import check_output_is_not_input

SUMMARY_DIR = "summaries"
FOLDER_SHARD_PREFIX = "images"


@dataclass(frozen=True)
class InputShard:
    """One unit of work: ``name`` (output prefix) and either a tar ``url`` or a list of image ``files``."""

    name: str
    url: str | None = None
    files: tuple[Path, ...] = ()

    @property
    def output_name(self) -> str:
        return shard_name(self.name, 0)


def list_input_shards(source: str | Path, images_per_shard: int = 1000) -> list[InputShard]:
    """The input shards of a shard directory / pattern / tar, or of a folder of images.

    Raises:
        FileNotFoundError / ValueError: naming the input.
    """
    path = Path(source)
    if path.is_dir() and not (path / MANIFEST).exists():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{source}: no shard manifest and no image ({', '.join(IMAGE_SUFFIXES)})")
        groups = range(0, len(files), images_per_shard)
        return [InputShard(shard_name(FOLDER_SHARD_PREFIX, i)[:-4], files=tuple(files[start:start + images_per_shard]))
                for i, start in enumerate(groups)]
    shards = []
    for url in list_shards(str(source)):
        name = os.path.basename(url)
        shards.append(InputShard(name[:-4] if name.endswith(".tar") else name, url=url))
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: two input shards share a name; output shard names derive from them")
    return shards


def images_in(shards: list[InputShard]) -> int | None:
    """How many images ``shards`` hold, from their manifests (or tar headers, or file lists); None for remote
    shards without a manifest."""
    try:
        counts = shard_sample_counts([s.url for s in shards if s.url is not None])
    except ValueError:
        return None
    return sum(counts) + sum(len(s.files) for s in shards if s.url is None)


def task_block(shards: list, task_index: int, num_tasks: int) -> list:
    """Task ``task_index`` of ``num_tasks``'s contiguous block of ``shards`` (sizes differ by at most one)."""
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise ValueError(f"task_index must be in [0, num_tasks), got task_index={task_index}, num_tasks={num_tasks}")
    bounds = np.linspace(0, len(shards), num_tasks + 1).round().astype(int)
    return shards[bounds[task_index] : bounds[task_index + 1]]


def verify_output(shards: list[InputShard], output: str | Path) -> dict:
    """Whether every input shard has its output shard, and what the tasks' summaries add up to.

    Returns:
        ``{"input_shards", "done", "missing": [names], "images", "masks", "duplicate_keys",
        "skipped_images", "unreadable_shards"}``.
    """
    output = Path(output)
    listed = read_manifest(output)["shards"] if (output / MANIFEST).exists() else {}
    missing = [s.name for s in shards if s.output_name not in listed]
    keys = [key for entry in listed.values() for key in entry["keys"]]
    summaries = [json.loads(p.read_text()) for p in sorted((output / SUMMARY_DIR).glob("task-*.json"))]
    return {
        "input_shards": len(shards),
        "done": len(shards) - len(missing),
        "missing": missing,
        "images": len(keys),
        "masks": sum(entry["annotations"] for entry in listed.values()),
        "duplicate_keys": len(keys) - len(set(keys)),
        "skipped_images": sum(len(s["skipped_images"]) for s in summaries),
        "unreadable_shards": sorted({u["shard"] for s in summaries for u in s["unreadable_shards"]}),
    }


def check_label_config(cfg: DictConfig) -> None:
    """Refuse a wrong value of the ``label`` config's own keys, or an output inside the input, naming the key."""
    check_values(cfg, integers={"images_per_shard": 1}, booleans=("progress", "verify"))
    check_output_is_not_input(cfg.input, cfg.output)


def verify(cfg: DictConfig) -> dict:
    """``sam-label verify=true``: print :func:`verify_output`'s report on ``cfg.output``; exit 1 when an input
    shard has no output or an image was written twice."""
    check_label_config(cfg)
    report = verify_output(list_input_shards(cfg.input, cfg.images_per_shard), cfg.output)
    print(json.dumps(report, indent=1))
    if report["missing"] or report["duplicate_keys"]:
        sys.exit(1)
    return report
