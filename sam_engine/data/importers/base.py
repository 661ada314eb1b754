"""What every importer shares: the import report, image preparation, RLE checks and the shard sink.

An importer (:mod:`~sam_engine.data.importers.coco`, :mod:`~sam_engine.data.importers.sa1b`,
:mod:`~sam_engine.data.importers.folder`) walks its input and, for each image, runs inside :meth:`ImportSink.guard`::

    with ImportSink(out_dir, shard_size=1000) as sink:
        for key, source, path in found:
            if sink.is_done(key):          # already in a completed shard (a rerun resumes)
                continue
            with sink.guard(source):       # a known problem skips this image, reported with its reason
                image = prepare_image(read_file(path, inside=folder), source)   # only files under it
                sink.write(key, image, make_record(key, image.width, image.height, path.name, []))
    sink.report                            # also written to <out_dir>/import_report.json

Every skipped file or annotation is logged as a warning and listed in the report with a ``kind``
(a short code, counted) and a reason naming the file and the key or field.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from sam_engine.data.images import ImageDecodeError, ImageTooLarge, image_size, open_image
from sam_engine.data.records import RecordError, rle_problem
from sam_engine.data.shards import ShardWriter
from sam_engine.utils.atomic_files import write_json_atomic

log = logging.getLogger(__name__)

REPORT_FILE = "import_report.json"
DEFAULT_MAX_PIXELS = 10_000 * 10_000
"""Images with more pixels are skipped (``too_large``) before decoding."""

_KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png"}
_KEPT_MODES = {"RGB", "L"}  # 8-bit modes every SA-1B reader decodes the same way
_NOT_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


class SkipSample(Exception):
    """A problem that skips one image or annotation: ``kind`` is a short code, the message names the file."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


KNOWN_PROBLEMS = (SkipSample, ImageDecodeError, RecordError)
"""What skips one sample of an import; any other exception stops the import."""


def problem_kind(exc: Exception) -> str:
    """The report's ``kind`` of one of :data:`KNOWN_PROBLEMS`."""
    if isinstance(exc, SkipSample):
        return exc.kind
    if isinstance(exc, ImageTooLarge):
        return "too_large"
    return "undecodable_image" if isinstance(exc, ImageDecodeError) else "invalid_record"


@dataclass(frozen=True)
class Skip:
    """One skipped file, sample or annotation: where it was, the kind of problem, and why."""

    source: str
    kind: str
    reason: str


@dataclass
class ImportReport:
    """Counts of what an import wrote, resumed past and skipped, with every skip's reason."""

    imported: int = 0
    annotations: int = 0
    already_present: int = 0
    skipped: list[Skip] = field(default_factory=list)
    skipped_annotations: list[Skip] = field(default_factory=list)
    stopped_by: str | None = None
    """The error that stopped the import before its end (a full disk...); None when it ran to the end."""

    def skip(self, source: str, kind: str, reason: str) -> None:
        """Record a skipped file or sample (and log it)."""
        log.warning("skipped %s [%s]: %s", source, kind, reason)
        self.skipped.append(Skip(source, kind, reason))

    def skip_annotation(self, source: str, kind: str, reason: str) -> None:
        """Record an annotation dropped from an imported sample (and log it)."""
        log.warning("dropped annotation %s [%s]: %s", source, kind, reason)
        self.skipped_annotations.append(Skip(source, kind, reason))

    def to_dict(self) -> dict:
        """The JSON form: counts, counts per kind, then every skip as ``{source, kind, reason}``."""
        return {
            "complete": self.stopped_by is None,
            "stopped_by": self.stopped_by,
            "imported": self.imported,
            "annotations": self.annotations,
            "already_present": self.already_present,
            "skipped": len(self.skipped),
            "skipped_by_kind": dict(Counter(s.kind for s in self.skipped)),
            "skipped_annotations": len(self.skipped_annotations),
            "skipped_annotations_by_kind": dict(Counter(s.kind for s in self.skipped_annotations)),
            "skipped_files": [vars(s) for s in self.skipped],
            "skipped_annotation_list": [vars(s) for s in self.skipped_annotations],
        }

    def summary(self) -> str:
        """One line: the counts and the skips per kind."""
        kinds = ", ".join(f"{k} {n}" for k, n in Counter(s.kind for s in self.skipped).items())
        dropped = ", ".join(f"{k} {n}" for k, n in Counter(s.kind for s in self.skipped_annotations).items())
        return (
            ("" if self.stopped_by is None else f"STOPPED by {self.stopped_by}: ")
            + f"imported {self.imported} images ({self.annotations} masks), "
            f"{self.already_present} already present, skipped {len(self.skipped)} ({kinds or 'none'}), "
            f"dropped {len(self.skipped_annotations)} annotations ({dropped or 'none'})"
        )


# --- images -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedImage:
    """Image bytes ready for a shard: ``ext`` is ``jpg`` or ``png``; (height, width) is the upright size."""

    data: bytes
    ext: str
    height: int
    width: int


MAX_FILE_BYTES = 1 << 30
"""Image files larger than this (1 GiB) are skipped (``too_large``) unread."""


def read_file(path: Path, inside: Path) -> bytes:
    """The bytes of the regular file ``path``, which must lie inside the folder ``inside`` once links are
    resolved: a file list from outside (COCO's ``file_name``) then reads nothing else.

    Raises:
        SkipSample: ``missing_file``, ``outside_folder`` (``../x``, an absolute path, a link out),
            ``not_a_file`` (a FIFO, a device such as ``/dev/zero``, a directory), ``too_large`` (over
            :data:`MAX_FILE_BYTES`) or ``unreadable_file``, naming ``path``.
    """
    path = Path(path)
    try:
        real = path.resolve(strict=True)
        if not real.is_relative_to(Path(inside).resolve()):
            raise SkipSample("outside_folder", f"{path}: resolves to {real}, outside {inside}")
        info = real.stat()
        if not stat.S_ISREG(info.st_mode):
            raise SkipSample("not_a_file", f"{path}: not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise SkipSample("too_large", f"{path}: {info.st_size} bytes, more than {MAX_FILE_BYTES}")
        return real.read_bytes()
    except FileNotFoundError:
        raise SkipSample("missing_file", f"{path}: no such file") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise SkipSample("unreadable_file", f"{path}: {exc}") from None


def prepare_image(data: bytes, source: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> PreparedImage:
    """Decode (so validate) image bytes and choose what the shard stores.

    JPEG and PNG bytes in 8-bit RGB or grey are kept exactly, EXIF orientation included (readers
    apply it, see :mod:`sam_engine.data.images`). Anything else (BMP, TIFF, WebP, 16-bit, RGBA,
    palette, CMYK...) is stored as an 8-bit RGB PNG of the decoded, upright image. Height and width
    are those of the upright image, as every reader sees it.

    Raises:
        SkipSample: ``empty_file``, or ``too_large`` beyond ``max_pixels`` (checked on the header).
        ImageDecodeError: the bytes do not decode (truncated, unknown format...), naming ``source``.
    """
    if not data:
        raise SkipSample("empty_file", f"{source}: zero-byte image")
    height, width = image_size(data, source=source)
    if height * width > max_pixels:
        raise SkipSample("too_large", f"{source}: {width}x{height} image has more than {max_pixels} pixels")
    rgb, (height, width) = open_image(data, source=source)
    with Image.open(io.BytesIO(data)) as header:
        ext = _KEPT_FORMATS.get(header.format) if header.mode in _KEPT_MODES else None
    if ext is None:
        buffer = io.BytesIO()
        rgb.save(buffer, format="PNG", compress_level=6)
        data, ext = buffer.getvalue(), "png"
    return PreparedImage(data, ext, height, width)


def key_from_path(relative_path: str | Path) -> str:
    """A shard key from a relative file path: directories and extension joined by ``_``, other
    characters than letters, digits, ``_`` and ``-`` replaced by ``_`` (``a/b c.jpg`` -> ``a_b_c``)."""
    path = Path(relative_path)
    key = _NOT_KEY_CHARS.sub("_", "_".join([*path.parent.parts, path.stem]))
    return key.lstrip("_") or "image"


# --- RLE checks -------------------------------------------------------------------------------


def check_rle(segmentation: dict, height: int, width: int, where: str) -> None:
    """Raise ``SkipSample`` (``rle_size`` or ``bad_rle``, naming ``where``) unless the RLE covers exactly an
    ``height`` x ``width`` image (see ``records.rle_problem``)."""
    problem = rle_problem(segmentation, height, width)
    if problem is not None:
        kind, message = problem
        raise SkipSample(kind, f"{where}: {message}")


# --- writing ----------------------------------------------------------------------------------


class ImportSink:
    """The shard directory an importer writes into: resumes, writes validated samples, keeps the report.

    Arguments:
        out_dir: the shard directory; the report goes to ``<out_dir>/import_report.json`` on exit.
        shard_size: samples per shard.
        prefix: shard name prefix (distinct prefixes let several imports share a directory).
    """

    def __init__(self, out_dir: str | Path, *, shard_size: int = 1000, prefix: str = "shard"):
        self.out_dir = Path(out_dir)
        self.writer = ShardWriter(self.out_dir, prefix=prefix, max_samples=shard_size)
        self.done = self.writer.completed_keys()
        self.written: set[str] = set()
        self.report = ImportReport()

    def is_done(self, key: str) -> bool:
        """Whether ``key`` is already in a completed shard of an earlier run (counted as already present)."""
        if key in self.done:
            self.report.already_present += 1
            return True
        return False

    @contextlib.contextmanager
    def guard(self, source: str) -> Iterator[None]:
        """Run one image's import; a known problem skips it and goes into the report under ``source``."""
        try:
            yield
        except KNOWN_PROBLEMS as exc:
            self.report.skip(source, problem_kind(exc), str(exc))

    def write(self, key: str, image: PreparedImage, record: dict) -> None:
        """Validate and write one sample (its record's size must be the image's upright size).

        Raises:
            SkipSample: ``duplicate_key`` when this run already wrote ``key``.
            RecordError: the record is malformed or disagrees with the image.
        """
        if key in self.written:
            raise SkipSample("duplicate_key", f"key {key!r} was already imported from another file")
        self.writer.write(key, image.data, image.ext, record)
        self.written.add(key)
        self.report.imported += 1
        self.report.annotations += len(record["annotations"])

    def __enter__(self) -> ImportSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Complete the last shard (or, after an error, discard it), then write the report, also when the import
        stopped: it then says what stopped it (``complete: false``) beside what was written before."""
        stopped_by = exc
        try:
            self.writer.__exit__(exc_type, exc, tb)
        except Exception as error:  # completing the last shard failed (a full disk)
            stopped_by = error
            raise
        finally:
            if stopped_by is not None:
                self.report.stopped_by = f"{type(stopped_by).__name__}: {stopped_by}"
            self._write_report()

    def _write_report(self) -> None:
        path = self.out_dir / REPORT_FILE
        try:
            write_json_atomic(path, self.report.to_dict(), ensure_ascii=False)
        except OSError as error:  # the disk that stopped the import may not take the report either
            log.error("%s; could not write %s: %s", self.report.summary(), path, error)
            return
        (log.info if self.report.stopped_by is None else log.error)("%s (report: %s)", self.report.summary(), path)
