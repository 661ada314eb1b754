"""``python -m sam_engine.data.stats`` (``sam-stats``): the SA-1B paper's dataset statistics.

    python -m sam_engine.data.stats sources=data/synthetic/train out=outputs/stats/synthetic
    python -m sam_engine.data.stats sources='/data/sa1b/sa_{000000..000009}.tar' out=outputs/stats/sa1b max_images=5000
"""

from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf

from sam_engine.cli import run_command
from sam_engine.utils.config_checks import check_values


def stats(cfg: DictConfig) -> None:
    check_values(cfg, integers={"max_images": 1, "size_bins": 1, "concavity_bins": 1, "heatmap_bins": 1},
                 strings=("out",), nullable=("max_images",))
    # Imported once there is work: its shard reader loads webdataset, and webdataset torch (--help need not).
    from sam_engine.data.stats.dataset_stats import compute_stats, write_stats

    sources = OmegaConf.to_container(cfg.sources) if OmegaConf.is_list(cfg.sources) else [cfg.sources]
    result = compute_stats(sources, max_images=cfg.max_images, size_bins=cfg.size_bins,
                           concavity_bins=cfg.concavity_bins, heatmap_bins=cfg.heatmap_bins)
    paths = write_stats(result, cfg.out)
    summary = {k: v for k, v in result.to_dict().items() if not isinstance(v, dict)}
    print(json.dumps(summary), *map(str, paths), sep="\n")


def main() -> None:
    run_command(stats, "stats")


if __name__ == "__main__":
    main()
