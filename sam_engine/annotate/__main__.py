"""``python -m sam_engine.annotate`` (``sam-export``): shards -> COCO, CVAT or Label Studio files + images
(``conf/export.yaml``).

    sam-export shards=outputs/engine/stage3/shards out_dir=to_people sources=[auto]
    sam-export shards=shards/val out_dir=val_coco evaluation=true     # ground truth for COCOeval
    sam-export shards=shards/pool out_dir=for_cvat layout=cvat        # for_cvat/cvat_coco.zip: CVAT's COCO 1.0
    sam-export shards=shards/pool out_dir=for_ls layout=label_studio  # tasks.json + label_config.xml
"""

from __future__ import annotations

from omegaconf import DictConfig

from sam_engine.annotate.coco_bridge import LAYOUTS, export_coco
from sam_engine.annotate.label_studio import export_label_studio
from sam_engine.cli import run_command


def export(cfg: DictConfig) -> None:
    if not isinstance(cfg.evaluation, bool):
        raise ValueError(f"evaluation={cfg.evaluation!r}: expected true or false")
    if cfg.layout not in (*LAYOUTS, "label_studio"):
        raise ValueError(f"layout={cfg.layout!r}: expected one of {', '.join((*LAYOUTS, 'label_studio'))}")
    sources = (cfg.sources,) if isinstance(cfg.sources, str) else None if cfg.sources is None else tuple(cfg.sources)
    if cfg.layout == "label_studio":
        print(export_label_studio(cfg.shards, cfg.out_dir, sources=sources, image_prefix=cfg.image_prefix))
    else:
        print(export_coco(cfg.shards, cfg.out_dir, sources=sources, evaluation=cfg.evaluation, layout=cfg.layout))


def main() -> None:
    run_command(export, "export")


if __name__ == "__main__":
    main()
