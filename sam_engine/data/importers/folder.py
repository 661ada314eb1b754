"""A folder of unlabelled images -> shards with empty annotation lists (the pool stage 3 labels).

    python -m sam_engine.data.importers folder input=photos/ out_dir=shards/pool

Images are found recursively (jpg, jpeg, png, bmp, tif, tiff, webp; other files are skipped and
reported). JPEG and PNG bytes are kept as they are, EXIF orientation included; other formats and
unusual modes are stored as RGB PNG (see :func:`~sam_engine.data.importers.base.prepare_image`). The
record's width and height are the upright (EXIF-applied) size, which is what every reader decodes.
The key and ``image_id`` are the relative path without extension, ``/`` and odd characters turned
into ``_`` (``2024/beach 01.jpg`` -> ``2024_beach_01``); ``file_name`` is the relative path.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sam_engine.data.importers.base import (
    DEFAULT_MAX_PIXELS,
    ImportReport,
    ImportSink,
    key_from_path,
    prepare_image,
    read_file,
)
from sam_engine.data.records import make_record
from sam_engine.utils.paths import check_output_is_not_input
from sam_engine.utils.progress import progress_of

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def import_folder(
    input_dir: str | Path,
    out_dir: str | Path,
    *,
    shard_size: int = 1000,
    prefix: str = "shard",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImportReport:
    """Import every image under ``input_dir`` (recursively, in path order) with no annotations.

    Arguments:
        input_dir: the folder.
        out_dir: the shard directory (resumed if it has shards already), not ``input_dir`` itself; if it
            lies inside ``input_dir``, its files are not imported.
        shard_size, prefix: see :class:`~sam_engine.data.importers.base.ImportSink`.
        max_pixels: larger images are skipped.
    Returns:
        The report (also in ``<out_dir>/import_report.json``).
    Raises:
        NotADirectoryError: ``input_dir`` is not a directory; ValueError: ``out_dir`` is ``input_dir``.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise NotADirectoryError(f"{input_dir}: not a directory")
    check_output_is_not_input(input_dir, out_dir, output_key="out_dir")
    output = Path(out_dir).resolve()
    files = sorted(p for p in input_dir.rglob("*") if p.is_file() and output not in p.resolve().parents)
    with ImportSink(out_dir, shard_size=shard_size, prefix=prefix) as sink:
        for path in progress_of(files, "imported images"):
            relative = path.relative_to(input_dir)
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                sink.report.skip(
                    str(path), "unsupported_type", f"{path}: not one of {', '.join(IMAGE_SUFFIXES)}"
                )
                continue
            key = key_from_path(relative)
            if sink.is_done(key):
                continue
            with sink.guard(str(path)):
                image = prepare_image(read_file(path, inside=input_dir), str(path), max_pixels)
                sink.write(key, image, make_record(key, image.width, image.height, relative.as_posix(), []))
    return sink.report
