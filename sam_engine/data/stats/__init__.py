"""Dataset statistics as in the SA-1B paper (``python -m sam_engine.data.stats``, ``sam-stats``).

- ``dataset_stats``: masks per image, relative mask size, mask-centre heat map and concavity,
  streamed over shards' records in bounded memory; ``stats.json`` and PNG plots.
"""
