"""The SA-1B release layout -> our shards, or read in place.

    python -m sam_engine.data.importers sa1b input=/data/sa1b out_dir=shards/sa1b
    python -m sam_engine.data.importers sa1b 'input=/data/sa1b/sa_{000000..000009}.tar' out_dir=shards/sa1b

The release is tars of ``sa_<N>.jpg`` + ``sa_<N>.json`` pairs, or those files extracted into a
directory. ``input`` is a directory (every ``*.tar`` below it is read, and every loose jpg/json
pair), a tar, a brace pattern of tars, or a list of these. JPEGs pass through byte for byte
(unless not 8-bit RGB or grey, see :func:`~sam_engine.data.importers.base.prepare_image`); each record
is parsed (strict UTF-8), validated against the SA-1B schema, its RLEs checked to cover exactly
the image; the key is the file stem (``sa_1``).

Reading in place: the release's sample format is ours, so its tars need no import to be read:
``list_shards('/data/sa1b/sa_{000000..000999}.tar')`` lists them (no manifest needed) and the
training loader and ``sam-stats`` read them directly; :func:`iter_sa1b` yields checked
``(key, image bytes, record)`` from tars or extracted directories.

Skipped and reported: unreadable or truncated tars (the samples before the damage are kept), an
image (jpg, or png as in our shards) without its json or a json without its image, other members,
undecodable images, json that is not UTF-8, does not parse or is not a valid record, RLEs of
another size or malformed, duplicate keys. Empty (area-0) masks are dropped from their record and
reported.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import braceexpand

from sam_engine.data.importers.base import (
    DEFAULT_MAX_PIXELS,
    KNOWN_PROBLEMS,
    ImportReport,
    ImportSink,
    PreparedImage,
    Skip,
    SkipSample,
    check_rle,
    prepare_image,
    problem_kind,
    read_file,
)
from sam_engine.data.records import mask_areas, validate_record
from sam_engine.data.shards import is_valid_key
from sam_engine.utils.json_input import parse_json
from sam_engine.utils.paths import check_output_is_not_input
from sam_engine.utils.progress import progress_of

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png")  # the release has jpg; our own shards may hold png

OnSkip = Callable[[Skip], None]


@dataclass(frozen=True)
class Pair:
    """One sample of the release: its key, where it came from, and the raw image and json bytes."""

    key: str
    source: str
    image: bytes
    json: bytes


def expand_inputs(inputs: str | Path | Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """The tars and the loose-file directories named by ``inputs`` (see the module docstring).

    Raises:
        FileNotFoundError: an input that does not exist.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    tars, directories = [], []
    for item in inputs:
        for path in map(Path, braceexpand.braceexpand(str(item))):
            if path.is_dir():
                directories.append(path)
                tars.extend(sorted(path.rglob("*.tar")))
            elif path.is_file():
                tars.append(path)
            else:
                raise FileNotFoundError(f"{path}: no such SA-1B tar or directory")
    return tars, directories


def _split_name(name: str) -> tuple[str, str]:
    """('sa_1', 'jpg') from 'sa_1.jpg' or './dir/sa_1.jpg' (the key is the stem, the extension lower-case)."""
    stem, _, ext = Path(name).name.partition(".")
    return stem, ext.lower()


def _pair_up(parts: dict[str, dict[str, bytes]], key: str, source: str) -> Pair:
    """The Pair of ``key`` from its files by extension, or SkipSample if the image or the json is missing."""
    files = parts.pop(key)
    image = next((files[ext] for ext in IMAGE_EXTS if ext in files), None)
    if image is None or "json" not in files:
        missing = "json" if image is not None else "image"
        raise SkipSample("unpaired", f"{source}: sample {key!r} has no {missing}")
    return Pair(key, source, image, files["json"])


def _tar_pairs(path: Path, on_skip: OnSkip) -> Iterator[Pair]:
    """Pairs of a tar, streamed; a pair is yielded once both its files are read."""
    parts: dict[str, dict[str, bytes]] = {}
    members = 0
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                members += 1
                key, ext = _split_name(member.name)
                if ext not in (*IMAGE_EXTS, "json"):
                    reason = f"{path}: {member.name} is not {'/'.join(IMAGE_EXTS)}/json"
                    on_skip(Skip(f"{path}:{member.name}", "unexpected_member", reason))
                    continue
                parts.setdefault(key, {})[ext] = tar.extractfile(member).read()
                if "json" in parts[key] and len(parts[key]) > 1:
                    yield _pair_up(parts, key, f"{path}:{key}")
    except (tarfile.TarError, OSError, EOFError) as exc:
        on_skip(Skip(str(path), "bad_tar", f"{path}: unreadable after {members} members: {exc}"))
    for key in list(parts):
        try:
            _pair_up(parts, key, f"{path}:{key}")
        except SkipSample as exc:
            on_skip(Skip(f"{path}:{key}", exc.kind, str(exc)))


def _directory_pairs(directory: Path, on_skip: OnSkip) -> Iterator[Pair]:
    """Loose jpg/json pairs under ``directory`` (recursively), in name order, read one pair at a time."""
    files: dict[str, dict[str, Path]] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() != ".tar"):
        key, ext = _split_name(path.name)
        if ext in (*IMAGE_EXTS, "json"):
            files.setdefault(key, {})[ext] = path
    for key, paths in files.items():
        source = str(paths.get("json") or next(iter(paths.values())))
        try:
            parts = {key: {ext: read_file(path, inside=directory) for ext, path in paths.items()}}
            yield _pair_up(parts, key, source)
        except SkipSample as exc:
            on_skip(Skip(source, exc.kind, str(exc)))


def sa1b_pairs(inputs: str | Path | Sequence[str | Path], on_skip: OnSkip) -> Iterator[Pair]:
    """Every image/json pair of the inputs: tars first, then loose files; problems go to ``on_skip``."""
    tars, directories = expand_inputs(inputs)
    for path in tars:
        yield from _tar_pairs(path, on_skip)
    for directory in directories:
        yield from _directory_pairs(directory, on_skip)


def parse_record(data: bytes, source: str) -> dict:
    """Parse and check an SA-1B json: strict UTF-8, JSON, the record schema, every RLE well-formed.

    Raises:
        SkipSample: ``not_utf8``, ``bad_json``, ``rle_size`` or ``bad_rle``.
        RecordError: the record does not follow the schema.
    """
    try:
        record = parse_json(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SkipSample("not_utf8", f"{source}: json is not UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SkipSample("bad_json", f"{source}: json does not parse: {exc}") from None
    validate_record(record, where=source)
    height, width = record["image"]["height"], record["image"]["width"]
    for i, annotation in enumerate(record["annotations"]):
        check_rle(annotation["segmentation"], height, width, f"{source}: annotations[{i}]")
    return record


def _drop_empty(record: dict, source: str, drop: Callable[[str, str, str], None]) -> dict:
    """The record without its empty masks (area counted on the RLE; each reported through ``drop``)."""
    annotations = record["annotations"]
    areas = mask_areas([a["segmentation"] for a in annotations])
    for annotation in (a for a, area in zip(annotations, areas, strict=True) if area == 0):
        where = f"{source}: annotation {annotation['id']!r}"
        drop(where, "empty_mask", f"{where}: the mask has no pixel")
    return {**record, "annotations": [a for a, area in zip(annotations, areas, strict=True) if area > 0]}


def iter_sa1b(
    inputs: str | Path | Sequence[str | Path], on_skip: OnSkip | None = None
) -> Iterator[tuple[str, bytes, dict]]:
    """Read the release in place: checked ``(key, image bytes, record)`` for every good sample.

    Bad samples and empty masks are passed to ``on_skip`` (default: logged as warnings) and left
    out; the image is checked to decode at the record's size.
    """
    on_skip = on_skip or (
        lambda skip: log.warning("skipped %s [%s]: %s", skip.source, skip.kind, skip.reason)
    )
    for pair in sa1b_pairs(inputs, on_skip):
        try:
            record, _ = check_pair(pair, DEFAULT_MAX_PIXELS, lambda *skip: on_skip(Skip(*skip)))
        except KNOWN_PROBLEMS as exc:
            on_skip(Skip(pair.source, problem_kind(exc), str(exc)))
        else:
            yield pair.key, pair.image, record


def check_pair(
    pair: Pair, max_pixels: int, drop: Callable[[str, str, str], None]
) -> tuple[dict, PreparedImage]:
    """The checked record (empty masks dropped through ``drop(source, kind, reason)``) and image of a pair.

    Raises:
        SkipSample, RecordError, ImageDecodeError: see :func:`parse_record` and
            :func:`~sam_engine.data.importers.base.prepare_image`; ``size_mismatch`` when the image is not
            of the record's size.
    """
    record = _drop_empty(parse_record(pair.json, pair.source), pair.source, drop)
    image = prepare_image(pair.image, pair.source, max_pixels)
    declared = record["image"]["height"], record["image"]["width"]
    if (image.height, image.width) != declared:
        raise SkipSample(
            "size_mismatch",
            f"{pair.source}: the image is {image.width}x{image.height}, "
            f"the json says {declared[1]}x{declared[0]}",
        )
    return record, image


def import_sa1b(
    inputs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    shard_size: int = 1000,
    prefix: str = "shard",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImportReport:
    """Copy SA-1B samples into a shard directory (images unchanged, records checked).

    Arguments:
        inputs: directories, tars or brace patterns of tars (see the module docstring).
        out_dir: the shard directory (resumed if it has shards already).
        shard_size, prefix: see :class:`~sam_engine.data.importers.base.ImportSink`.
        max_pixels: larger images are skipped.
    Returns:
        The report (also in ``<out_dir>/import_report.json``).
    Raises:
        ValueError: ``out_dir`` is the folder of an input (a rerun would read its shards back as SA-1B tars).
    """
    for source in [inputs] if isinstance(inputs, (str, Path)) else inputs:
        check_output_is_not_input(source, out_dir, input_key="inputs", output_key="out_dir")
    with ImportSink(out_dir, shard_size=shard_size, prefix=prefix) as sink:
        report = sink.report
        pairs = sa1b_pairs(inputs, lambda skip: report.skip(skip.source, skip.kind, skip.reason))
        for pair in progress_of(pairs, "imported images"):  # SA-1B tars: no count before reading them
            with sink.guard(pair.source):
                if not is_valid_key(pair.key):
                    raise SkipSample("bad_key", f"{pair.source}: the file stem {pair.key!r} cannot name a sample "
                                     "(whitespace, '.', '/' or a leading '__')")
                if sink.is_done(pair.key):
                    continue
                record, image = check_pair(pair, max_pixels, report.skip_annotation)
                sink.write(pair.key, image, record)
    return report
