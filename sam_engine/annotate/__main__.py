"""``python -m sam_engine.annotate {export,import} key=value ...`` (``sam-annotate``): people's tools and shards.

    sam-annotate export shards=shards/auto out_dir=for_cvat layout=cvat          # for_cvat/cvat_coco.zip: CVAT
    sam-annotate export shards=shards/auto out_dir=for_ls layout=label_studio    # tasks.json + label_config.xml
    sam-annotate export shards=shards/val out_dir=val_coco evaluation=true       # ground truth for COCOeval
    sam-annotate export shards=shards/val out_dir=val_poly segmentation=polygons # the same as COCO polygons
    sam-annotate import input=corrected.zip pool=shards/photos out_dir=shards/corrected stage=1

``export`` writes shards as COCO (``layout=coco``), CVAT's COCO 1.0 layout and zip (``cvat``) or Label
Studio tasks with brush masks (``label_studio``), images beside them (``conf/annotate_export.yaml``).
``import`` reads people's corrections back as shards of manual masks (``conf/annotate_import.yaml``): a COCO
JSON, CVAT's COCO 1.0 zip or directory, or Label Studio's JSON export (a list of tasks), matched to the
images of ``pool``; every skip is in ``<out_dir>/import_report.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sam_engine.cli import run_subcommand
from sam_engine.utils.config_checks import check_values
from sam_engine.utils.paths import check_output_is_not_input

USAGE = """usage: sam-annotate {export,import} key=value ...   (or python -m sam_engine.annotate ...)

export: shards -> COCO, CVAT (COCO 1.0 zip) or Label Studio files for people to correct, or COCO ground truth.
import: people's corrections (COCO JSON, CVAT zip, Label Studio JSON) -> shards of manual masks.
`sam-annotate export --help` and `sam-annotate import --help` list the options.
"""


# The readers and writers import webdataset (and with it torch): each command imports them once it has work,
# so that --help answers at once.


def export(cfg: DictConfig) -> None:
    from sam_engine.annotate.coco_bridge import LAYOUTS, export_coco
    from sam_engine.annotate.label_studio import export_label_studio

    check_values(cfg, booleans=("evaluation",), strings=("out_dir", "layout", "image_prefix", "segmentation"))
    layouts = (*LAYOUTS, "label_studio")
    if cfg.layout not in layouts:
        raise ValueError(f"layout={cfg.layout!r}: expected one of {', '.join(layouts)}")
    sources = (cfg.sources,) if isinstance(cfg.sources, str) else None if cfg.sources is None else tuple(cfg.sources)
    if sources is not None and not all(isinstance(source, str) for source in sources):
        raise ValueError(f"sources={cfg.sources!r}: expected null, a provenance (auto, manual) or a list of them")
    if cfg.layout == "label_studio":
        if cfg.segmentation != "rle":
            raise ValueError(f"segmentation={cfg.segmentation!r}: layout=label_studio writes brush masks (RLE)")
        print(export_label_studio(cfg.shards, cfg.out_dir, sources=sources, image_prefix=cfg.image_prefix))
    else:
        print(export_coco(cfg.shards, cfg.out_dir, sources=sources, evaluation=cfg.evaluation, layout=cfg.layout,
                          segmentation=cfg.segmentation))


def is_label_studio_export(path: Path) -> bool:
    """Label Studio's JSON export is a list of tasks; COCO files are objects, CVAT's zips and folders not JSON."""
    if not path.is_file() or path.suffix.lower() != ".json":
        return False
    with open(path, "rb") as file:
        head = file.read(4096).lstrip()
    return head.startswith(b"[")


def import_(cfg: DictConfig) -> None:
    from sam_engine.annotate.coco_bridge import import_coco_corrections
    from sam_engine.annotate.label_studio import import_label_studio

    check_values(cfg, integers={"stage.number": 1}, strings=("input", "out_dir", "prefix"))
    if not OmegaConf.is_list(cfg.pool):  # the pool's own directory would take the masks as a second copy of its images
        check_output_is_not_input(cfg.pool, cfg.out_dir, input_key="pool", output_key="out_dir")
    path = Path(cfg.input)
    read = import_label_studio if is_label_studio_export(path) else import_coco_corrections
    report = read(path, cfg.pool, cfg.out_dir, stage=int(cfg.stage.number), prefix=cfg.prefix)
    print(json.dumps({k: v for k, v in report.items() if not k.endswith("_list") and k != "skipped_files"}))


COMMANDS = {"export": (export, "annotate_export"), "import": (import_, "annotate_import")}


def main() -> None:
    run_subcommand(COMMANDS, USAGE)


if __name__ == "__main__":
    main()
