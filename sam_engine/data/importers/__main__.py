"""``python -m sam_engine.data.importers FORMAT key=value ...`` (``sam-import``): data into SA-1B shards.

    sam-import coco annotations=instances.json images=DIR out_dir=shards/coco
    sam-import sa1b input='/data/sa1b/sa_{000000..000009}.tar' out_dir=shards/sa1b
    sam-import folder input=photos/ out_dir=shards/photos
    sam-import coco --help

FORMAT picks the config (``conf/import_<FORMAT>.yaml``); every skipped image or annotation is listed
in ``<out_dir>/import_report.json``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from sam_engine.cli import run_subcommand
from sam_engine.data.importers.coco import import_coco
from sam_engine.data.importers.folder import import_folder
from sam_engine.data.importers.sa1b import import_sa1b
from sam_engine.utils.config_checks import check_values

USAGE = """usage: sam-import {coco,sa1b,folder} key=value ...   (or python -m sam_engine.data.importers ...)

Imports data into SA-1B shards: COCO instances with their images (coco), the SA-1B release (sa1b),
or a folder of unlabelled photos (folder). `sam-import FORMAT --help` lists a format's options.
"""


SIZES = {"shard_size": 1, "max_pixels": 1}
"""What every importer's config counts."""


def coco(cfg: DictConfig) -> None:
    check_values(cfg, integers=SIZES)
    report = import_coco(cfg.annotations, cfg.images, cfg.out_dir, crowd=cfg.crowd, shard_size=cfg.shard_size,
                         prefix=cfg.prefix, max_pixels=cfg.max_pixels)
    print(report.summary())


def sa1b(cfg: DictConfig) -> None:
    check_values(cfg, integers=SIZES)
    inputs = cfg.input if isinstance(cfg.input, str) else list(cfg.input)
    report = import_sa1b(inputs, cfg.out_dir, shard_size=cfg.shard_size, prefix=cfg.prefix, max_pixels=cfg.max_pixels)
    print(report.summary())


def folder(cfg: DictConfig) -> None:
    check_values(cfg, integers=SIZES)
    report = import_folder(cfg.input, cfg.out_dir, shard_size=cfg.shard_size, prefix=cfg.prefix,
                           max_pixels=cfg.max_pixels)
    print(report.summary())


IMPORTERS = {"coco": (coco, "import_coco"), "sa1b": (sa1b, "import_sa1b"), "folder": (folder, "import_folder")}


def main() -> None:
    run_subcommand(IMPORTERS, USAGE)


if __name__ == "__main__":
    main()
