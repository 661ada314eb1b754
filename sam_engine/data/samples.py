"""Samples of SA-1B shards as objects (key, encoded image, record), for the jobs that read shards whole:
the pseudo-labeller, the annotation rounds of the engine and the COCO bridge.

A bad sample (repeated key, no image, malformed record) is not an error: it comes as :class:`Skipped`,
naming where it is and why, so that a batch job can count it and go on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from sam_engine.data.loader import IMAGE_KEYS, tar_samples
from sam_engine.data.records import RecordError, validate_record
from sam_engine.data.shards import list_shards
from sam_engine.utils.json_input import parse_json


@dataclass(frozen=True)
class Sample:
    """An image of a shard (or a folder): key, encoded bytes, extension (``jpg``/``png``), its validated
    SA-1B record (None for a bare image), and where it comes from (``<url>:<key>`` or a path)."""

    key: str
    data: bytes
    ext: str
    record: dict | None
    source: str


class Skipped(NamedTuple):
    """A sample left out: where it is, the kind of problem (``duplicate_key``, ``no_image``,
    ``bad_record``, ``bad_image``, ``unreadable_shard``) and the reason, for a person."""

    source: str
    kind: str
    reason: str


class UnreadableShard(Exception):
    """A shard that cannot be read to its end (missing, truncated, corrupt, empty)."""


def shard_samples(url: str) -> Iterator[Sample | Skipped]:
    """The samples of one shard, in order; a bad one comes as :class:`Skipped`.

    Raises:
        UnreadableShard: the tar cannot be read to its end (after yielding what came before).
    """
    for sample in tar_samples([url]):
        where = f"{url}:{sample['__key__']}"
        if "__error__" in sample:
            raise UnreadableShard(f"{url}: {sample['__error__']}")
        if sample.get("__duplicate__"):
            yield Skipped(where, "duplicate_key", f"{where}: duplicate key in the shard")
            continue
        ext = next((e for e in IMAGE_KEYS if e in sample), None)
        if ext is None:
            yield Skipped(where, "no_image", f"{where}: no image (expected one of {IMAGE_KEYS})")
            continue
        record = None
        if "json" in sample:
            try:
                record = validate_record(parse_json(sample["json"].decode("utf-8")), where=where)
            except (UnicodeDecodeError, json.JSONDecodeError, RecordError) as exc:
                yield Skipped(where, "bad_record", f"{where}: json: {exc}")
                continue
        yield Sample(sample["__key__"], sample[ext], "jpg" if ext == "jpeg" else ext, record, where)


def good_samples(source: str | Path | Sequence[str | Path], on_skip: Callable[[Skipped], None]) -> Iterator[Sample]:
    """The good samples of every shard of ``source`` (anything ``list_shards`` takes), in order.

    Each bad sample, and each shard that cannot be read to its end (after its readable samples), goes to
    ``on_skip`` instead.
    """
    for url in list_shards(source):
        try:
            for sample in shard_samples(url):
                if isinstance(sample, Skipped):
                    on_skip(sample)
                else:
                    yield sample
        except UnreadableShard as exc:
            on_skip(Skipped(url, "unreadable_shard", str(exc)))
