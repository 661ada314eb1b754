"""Dataset statistics as in the SA-1B paper: masks per image, relative mask size, mask-centre heat map
and concavity, written as stats.json and PNG plots.

    python tools/stats.py data/synthetic/train --out outputs/stats/synthetic
    python tools/stats.py '/data/sa1b/sa_{000000..000009}.tar' --out outputs/stats/sa1b --max-images 5000

The computation lives in sam_engine.data.stats; this is its command line.
"""

from __future__ import annotations

import argparse
import json
import logging

from sam_engine.data.stats import compute_stats, write_stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sources", nargs="+", help="shard directories, tars or brace patterns of tars")
    parser.add_argument("--out", required=True, help="output directory for stats.json and the PNG plots")
    parser.add_argument("--max-images", type=int, default=None, help="read at most this many images")
    parser.add_argument("--size-bins", type=int, default=50, help="relative-size histogram bins")
    parser.add_argument("--concavity-bins", type=int, default=20, help="concavity histogram bins")
    parser.add_argument("--heatmap-bins", type=int, default=20, help="centre heat map cells per side")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    stats = compute_stats(
        args.sources,
        max_images=args.max_images,
        size_bins=args.size_bins,
        concavity_bins=args.concavity_bins,
        heatmap_bins=args.heatmap_bins,
    )
    paths = write_stats(stats, args.out)
    summary = {k: v for k, v in stats.to_dict().items() if not isinstance(v, dict)}
    print(json.dumps(summary), *map(str, paths), sep="\n")


if __name__ == "__main__":
    main()
