"""The data layer: SA-1B records, WebDataset shards (writing, listing, reading) and the datamodule.

One sample per image: ``__key__`` = image id, the image bytes (``jpg``/``png``) and ``json`` = the
SA-1B record. :class:`ShardWriter` writes shard directories, :func:`make_dataset` reads them as
model-frame :class:`Batch` objects, :class:`SamDataModule` serves them to Lightning.
"""

from sam_engine.data.images import ImageDecodeError, decode_image, open_image
from sam_engine.data.loader import (
    Batch,
    Example,
    SampleDecoder,
    TooManyBadSamples,
    collate,
    make_dataset,
    make_loader,
)
from sam_engine.data.records import (
    RecordError,
    decode_masks,
    encode_masks,
    make_annotations,
    make_record,
    validate_record,
)
from sam_engine.data.shards import ShardWriter, list_shards, read_manifest

__all__ = [
    "Batch",
    "Example",
    "ImageDecodeError",
    "RecordError",
    "SampleDecoder",
    "ShardWriter",
    "TooManyBadSamples",
    "collate",
    "decode_image",
    "decode_masks",
    "encode_masks",
    "list_shards",
    "make_annotations",
    "make_dataset",
    "make_loader",
    "make_record",
    "open_image",
    "read_manifest",
    "validate_record",
]
