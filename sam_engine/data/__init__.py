"""The data layer: SA-1B records, WebDataset shards (writing, listing, reading) and the datamodule.

One sample per image: ``__key__`` = image id, the image bytes (``jpg``/``png``) and ``json`` = the
SA-1B record. :class:`~sam_engine.data.shards.ShardWriter` writes shard directories,
:func:`~sam_engine.data.loader.make_dataset` reads them as model-frame batches,
:class:`~sam_engine.data.datamodule.SamDataModule` serves them to Lightning.

Nothing is imported here: the shard, record and importer modules do not need torch, and a command that
only reads or writes shards (``sam-import``, ``sam-synthetic``, ``sam-label verify=true``) should not pay
for the loader's imports.
"""
