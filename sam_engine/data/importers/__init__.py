"""Importers: data from outside into SA-1B shards (``sam-import coco|sa1b|folder``).

- ``base``: what every importer shares: the import report, image checks, RLE checks, the shard sink.
- ``coco``: COCO instances (polygons, RLE, crowd regions) and their images.
- ``sa1b``: Meta's SA-1B release (tars or extracted files).
- ``folder``: a folder of unlabelled photos (empty annotation lists: the pool stage 3 labels).
"""
