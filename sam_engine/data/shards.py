"""WebDataset shard directories: writing them safely, listing them, describing them.

A shard directory holds ``<prefix>-NNNNNN.tar`` files and a ``manifest.json``::

    {"format": "sam_engine.shards/1",
     "shards": {"shard-000000.tar": {"samples": 1000, "annotations": 61234, "bytes": 523190272,
                                     "sha256": "9f2c...", "keys": ["sa_1", "sa_2", ...]}, ...}}

Each tar holds one sample per image: ``<key>.jpg`` (or ``.png``) and ``<key>.json`` (the SA-1B
record, see :mod:`sam_engine.data.records`).

Guarantees of :class:`ShardWriter`:

- A reader never sees a partial shard: a shard is written as ``<name>.tmp-<pid>``, fsynced and
  renamed to ``<name>`` only when complete; the manifest is then updated (temporary file, fsync,
  rename). A write that fails (a full disk) deletes the temporary shard; completed shards stay.
  A shard renamed but not yet in the manifest (a crash between the two) is found and added by the
  next writer with that prefix.
- No empty shard: a shard is opened by its first sample.
- Resuming: a writer opened on a directory continues its prefix's numbering after the shards
  already there, and :meth:`ShardWriter.completed_keys` tells the producer which images to skip.
- Concurrent writers (SLURM array tasks) share a directory by using **distinct prefixes**, one live
  writer per prefix; they update the shared manifest under an exclusive ``fcntl.lockf`` lock on
  ``manifest.json.lock`` (POSIX record locks, which NFS supports), re-reading it inside the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import io
import json
import logging
import os
import re
import tarfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import braceexpand

from sam_engine.data.images import image_size
from sam_engine.data.records import RecordError, validate_record
from sam_engine.utils.atomic_files import file_sha256, write_json_atomic
from sam_engine.utils.config_checks import is_int
from sam_engine.utils.json_input import parse_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "sam_engine.shards/1"
IMAGE_EXTS = ("jpg", "png")
_SHARD_NAME = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{6})\.tar$")
_BAD_KEY = re.compile(r"[./\\\s]|^__|^$")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_valid_key(key: object) -> bool:
    """Whether ``key`` may name a sample in a shard: a non-empty string without ``.``, ``/``, ``\\``,
    whitespace or a leading ``__`` (webdataset splits names at the first dot; ``__`` names its fields)."""
    return isinstance(key, str) and not _BAD_KEY.search(key)


def shard_name(prefix: str, index: int) -> str:
    """``<prefix>-NNNNNN.tar``."""
    return f"{prefix}-{index:06d}.tar"


# ---------------------------------------------------------------------------------------------------------
# The manifest
# ---------------------------------------------------------------------------------------------------------


def _empty_manifest() -> dict:
    return {"format": MANIFEST_FORMAT, "shards": {}}


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a shard directory.

    Raises:
        FileNotFoundError: the directory has no ``manifest.json``.
        ValueError: the manifest does not parse or has no ``shards`` mapping.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {MANIFEST} (not a shard directory written by ShardWriter?)")
    try:
        manifest = parse_json(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable manifest: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), dict):
        raise ValueError(f"{path}: expected an object with a 'shards' mapping")
    for name, entry in manifest["shards"].items():  # a name is a file of this directory: never ../x or /etc/passwd
        if not name.endswith(".tar") or name != os.path.basename(name) or "\\" in name or name.startswith("."):
            raise ValueError(f"{path}: shard {name!r} is not a .tar file name of this directory")
        problem = _entry_problem(entry)
        if problem is not None:
            raise ValueError(f"{path}: shards.{name}: {problem}")
    return manifest


def _entry_problem(entry: object) -> str | None:
    """What is wrong with a manifest entry's type (fields may be absent: each reader needs only some)."""
    if not isinstance(entry, dict):
        return f"expected an object, got {type(entry).__name__}"
    for field in ("samples", "annotations", "bytes"):
        if field in entry and not (is_int(entry[field]) and entry[field] >= 0):
            return f"{field}: expected a non-negative integer, got {entry[field]!r}"
    if "sha256" in entry and not (isinstance(entry["sha256"], str) and _SHA256.fullmatch(entry["sha256"])):
        return f"sha256: expected 64 hex digits, got {entry['sha256']!r}"
    if "keys" in entry and not (isinstance(entry["keys"], list) and all(isinstance(k, str) for k in entry["keys"])):
        return "keys: expected a list of strings"
    return None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, obj: dict) -> None:
    """Write JSON whole (``atomic_files``), then fsync its directory so that the rename lasts."""
    write_json_atomic(path, obj, ensure_ascii=False)
    _fsync_dir(path.parent)


_THREAD_LOCK = threading.Lock()  # POSIX record locks exclude processes, not threads of one process


@contextlib.contextmanager
def _manifest_lock(directory: Path) -> Iterator[None]:
    with _THREAD_LOCK, open(directory / f"{MANIFEST}.lock", "a") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)


def _add_to_manifest(directory: Path, entries: dict[str, dict]) -> None:
    """Add shard entries to the directory's manifest (read-modify-write under the lock)."""
    with _manifest_lock(directory):
        manifest = read_manifest(directory) if (directory / MANIFEST).exists() else _empty_manifest()
        manifest["shards"].update(entries)
        manifest["shards"] = dict(sorted(manifest["shards"].items()))
        _write_json_atomic(directory / MANIFEST, manifest)


# ---------------------------------------------------------------------------------------------------------
# Describing and listing shards
# ---------------------------------------------------------------------------------------------------------


def tar_keys(path: str | Path, *, partial: bool = False) -> list[str]:
    """Distinct sample keys of a local tar, in order, from its headers only.

    With ``partial``, a missing, truncated or corrupt tar gives the keys readable before the damage
    instead of raising.
    """
    keys: dict[str, None] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile():
                    keys[member.name.partition(".")[0]] = None
    except (OSError, tarfile.TarError):
        if not partial:
            raise
    return list(keys)


def describe_shard(path: str | Path) -> dict:
    """The manifest entry of a complete shard on disk: samples, annotations, bytes, sha256, keys."""
    path = Path(path)
    annotations = 0
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".json"):
                annotations += len(json.load(tar.extractfile(member))["annotations"])
    keys = tar_keys(path)
    return {
        "samples": len(keys),
        "annotations": annotations,
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "keys": keys,
    }


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def _expand_pattern(pattern: str) -> list[str]:
    urls = list(braceexpand.braceexpand(pattern))
    missing = [u for u in urls if not _is_remote(u) and not os.path.isfile(u)]
    if missing:
        raise FileNotFoundError(
            f"{pattern}: {len(missing)} of {len(urls)} shards do not exist, e.g. {missing[0]}"
        )
    return urls


def _directory_shards(directory: str) -> list[str]:
    names = read_manifest(directory)["shards"]
    if not names:
        raise ValueError(f"{directory}: {MANIFEST} lists no shards")
    return [os.path.join(directory, name) for name in names]


def _deduplicated(urls: list[str]) -> list[str]:
    """``urls`` without repeats (local paths compared once resolved), first occurrence kept, the repeats
    logged."""
    seen, kept = set(), []
    for url in urls:
        identity = url if _is_remote(url) else os.path.realpath(url)
        if identity in seen:
            log.warning("%s: listed again by the sources; read once", url)
            continue
        seen.add(identity)
        kept.append(url)
    return kept


def list_shards(source: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard URLs of a source.

    Arguments:
        source: a shard directory (its manifest lists the shards), a brace pattern such as
            ``dir/shard-{000000..000009}.tar``, a single ``.tar``, a remote URL (``pipe:...``,
            ``http://...``), or a list of these.
    Returns:
        The URLs, in order.
    Raises:
        FileNotFoundError / ValueError: naming the directory or pattern.
    """
    if isinstance(source, Sequence) and not isinstance(source, str):  # list, tuple, OmegaConf ListConfig
        return _deduplicated([url for item in source for url in list_shards(item)])  # a shard named twice: once
    source = str(source)
    if os.path.isdir(source):
        return _directory_shards(source)
    if "{" in source:
        return _expand_pattern(source)
    if _is_remote(source) or os.path.isfile(source):
        return [source]
    raise FileNotFoundError(f"{source}: no such shard directory or file")


def shard_sample_counts(urls: Sequence[str]) -> list[int]:
    """Number of samples in each shard: from its directory's manifest, else from the tar's headers
    (the readable part of a damaged tar; the reader reports the damage)."""
    counts = []
    for url in urls:
        entry = None if _is_remote(url) else _manifest_entry(url)
        if entry is None and _is_remote(url):
            raise ValueError(f"{url}: cannot count the samples of a remote shard without a manifest")
        counts.append(entry["samples"] if entry and "samples" in entry else len(tar_keys(url, partial=True)))
    return counts


_MANIFESTS: dict[str, tuple[tuple[int, ...], dict]] = {}  # directory -> (its manifest's stat, entries without keys)
_VERIFIED: dict[str, tuple[int, int]] = {}  # shard path -> (size, mtime_ns) when it last matched its manifest


def _manifest_entry(path: str) -> dict | None:
    """The manifest entry of the local shard ``path`` without its ``keys`` (None without a manifest or entry).
    Each manifest is read once per process while its file stays the same; what is kept is a few numbers per
    shard, not the keys of millions of images."""
    directory, name = os.path.split(path)
    try:
        info = os.stat(os.path.join(directory, MANIFEST))
    except FileNotFoundError:
        return None
    stamp = (info.st_ino, info.st_mtime_ns, info.st_size)  # replaced by rename: a new inode
    if _MANIFESTS.get(directory, (None,))[0] != stamp:
        entries = read_manifest(directory)["shards"]
        _MANIFESTS[directory] = (stamp, {shard: {k: v for k, v in entry.items() if k != "keys"}
                                         for shard, entry in entries.items()})
    return _MANIFESTS[directory][1].get(name)


def integrity_problem(url: str) -> str | None:
    """Why the local shard ``url`` is not the file its manifest describes (byte count, then SHA-256), naming
    both; None when it is, or when nothing is recorded (a remote URL, a tar outside a shard directory).

    Each shard is hashed once per process while its size and mtime stay the same, so a job pays one extra
    read of each shard it opens (usually from the page cache) to never read bit-rotted or replaced bytes.

    Raises:
        ValueError: the directory's manifest is unreadable (naming it).
    """
    if _is_remote(url):
        return None
    entry = _manifest_entry(url)
    if entry is None:
        return None
    info = os.stat(url)
    stamp = (info.st_size, info.st_mtime_ns)
    if _VERIFIED.get(url) == stamp:
        return None
    if "bytes" in entry and info.st_size != entry["bytes"]:
        return f"{url}: {info.st_size} bytes, but its {MANIFEST} records {entry['bytes']} (truncated or replaced)"
    if "sha256" in entry:
        digest = file_sha256(url)
        if digest != entry["sha256"]:
            return (f"{url}: sha256 {digest}, but its {MANIFEST} records {entry['sha256']} "
                    "(its bytes changed after it was written)")
    _VERIFIED[url] = stamp
    return None


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------


def _tar_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o444
    return info, io.BytesIO(data)


def _member_bytes(size: int) -> int:
    """Bytes a member of ``size`` takes in a tar: a 512-byte header plus data padded to 512."""
    return 512 + -(-size // 512) * 512


def _closed_tar_bytes(offset: int) -> int:
    """Size of a tar closed at ``offset``: two zero blocks, padded to tar's 10 KiB record."""
    return -(-(offset + 1024) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


class _OpenShard:
    """The shard being written: a tar under a temporary name and what the manifest will say."""

    def __init__(self, directory: Path, name: str):
        self.path = directory / name
        self.tmp = directory / f"{name}.tmp-{os.getpid()}"
        self.file = open(self.tmp, "wb")
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.PAX_FORMAT)
        self.keys: list[str] = []
        self.annotations = 0

    def add(self, key: str, members: list[tuple[str, bytes]], num_annotations: int) -> None:
        for name, data in members:
            self.tar.addfile(*_tar_member(name, data))
        self.keys.append(key)
        self.annotations += num_annotations

    def publish(self) -> dict:
        """Complete the tar, rename it to its final name and return its manifest entry. If that fails (a full
        disk), the temporary tar is deleted."""
        try:
            self.tar.close()
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            entry = {
                "samples": len(self.keys),
                "annotations": self.annotations,
                "bytes": self.tmp.stat().st_size,
                "sha256": file_sha256(self.tmp),
                "keys": self.keys,
            }
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        _fsync_dir(self.path.parent)
        return entry

    def discard(self) -> None:
        """Delete the temporary tar, also when closing it fails (a full disk cannot take its last blocks)."""
        with contextlib.suppress(OSError):
            self.tar.close()
        with contextlib.suppress(OSError):
            self.file.close()
        self.tmp.unlink(missing_ok=True)


class ShardWriter:
    """Writes SA-1B samples into ``<out_dir>/<prefix>-NNNNNN.tar`` shards with a manifest.

    Usage::

        with ShardWriter("shards/stage1", prefix="task0003", max_samples=1000) as writer:
            done = writer.completed_keys()
            for key, jpg, record in produce():
                if key not in done:
                    writer.write(key, jpg, "jpg", record)

    Arguments:
        out_dir: the shard directory (created if needed).
        prefix: shard name prefix; concurrent writers into one directory need distinct prefixes.
        max_samples: samples per shard at most.
        max_bytes: a shard is closed before a sample would take it past this size (a single sample
            larger than it gets a shard of its own).
        start_index: the first shard number, unless this prefix already has shards there, in which
            case numbering continues after the last one.

    On construction, leftover temporary shards of this prefix (from a killed run) are deleted and complete
    shards missing from the manifest are added to it. If the ``with`` block raises, the shard in
    progress is discarded; shards already completed stay.
    """

    def __init__(
        self,
        out_dir: str | Path,
        prefix: str = "shard",
        max_samples: int = 1000,
        max_bytes: int = 2**30,
        start_index: int = 0,
    ):
        if _BAD_KEY.search(prefix):
            raise ValueError(f"bad shard prefix {prefix!r}: no '.', '/', whitespace or leading '__'")
        if max_samples < 1 or max_bytes < 1:
            raise ValueError("max_samples and max_bytes must be positive")
        self.directory = Path(out_dir)
        self.prefix = prefix
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_temporaries()
        self._recover_unlisted_shards()
        self._done_keys = self.completed_keys()
        self._next_index = max([start_index, *(i + 1 for i in self._existing_indices())])
        self._shard: _OpenShard | None = None
        self.shards_written: list[Path] = []

    # -- resuming --------------------------------------------------------------------------------------

    def _own_files(self, pattern: str) -> list[Path]:
        return sorted(
            self.directory.glob(f"{glob.escape(self.prefix)}-[0-9][0-9][0-9][0-9][0-9][0-9]{pattern}")
        )

    def _existing_indices(self) -> list[int]:
        return [int(_SHARD_NAME.match(p.name)["index"]) for p in self._own_files(".tar")]

    def _remove_temporaries(self) -> None:
        for path in self._own_files(".tar.tmp-*"):
            path.unlink(missing_ok=True)

    def _recover_unlisted_shards(self) -> None:
        manifest = (
            read_manifest(self.directory) if (self.directory / MANIFEST).exists() else _empty_manifest()
        )
        unlisted = [p for p in self._own_files(".tar") if p.name not in manifest["shards"]]
        if unlisted:
            _add_to_manifest(self.directory, {p.name: describe_shard(p) for p in unlisted})

    def completed_keys(self) -> set[str]:
        """Keys of every sample in the directory's completed shards (all prefixes), per the manifest."""
        if not (self.directory / MANIFEST).exists():
            return set()
        shards = read_manifest(self.directory)["shards"].values()
        return {key for entry in shards for key in entry["keys"]}

    # -- writing ---------------------------------------------------------------------------------------

    def _check_sample(self, key: str, image_bytes: bytes, image_ext: str, record: dict) -> None:
        where = f"{self.directory}/{self.prefix}:{key}"
        if not is_valid_key(key):
            raise ValueError(
                f"{where}: bad key {key!r}: it must be non-empty, without '.', '/', whitespace, '__'"
            )
        if image_ext not in IMAGE_EXTS:
            raise ValueError(f"{where}: image_ext {image_ext!r} is not one of {IMAGE_EXTS}")
        if key in self._done_keys:
            raise ValueError(f"{where}: key {key!r} is already in a shard of {self.directory}")
        validate_record(record, where=where)
        size = image_size(image_bytes, source=where)
        declared = (record["image"]["height"], record["image"]["width"])
        if size != declared:
            raise RecordError(
                f"{where}: image {record['image']['image_id']!r} image.height/width: "
                f"the record says {declared[0]}x{declared[1]} but the image is {size[0]}x{size[1]}"
            )

    def write(self, key: str, image_bytes: bytes, image_ext: str, record: dict) -> None:
        """Validate a sample and append it to the current shard.

        Arguments:
            key: the sample key (``__key__``), usually the image id; unique in the directory.
            image_bytes: the encoded image.
            image_ext: ``"jpg"`` or ``"png"``.
            record: the SA-1B record (validated; its width/height must match the image).
        Raises:
            RecordError / ValueError / ImageDecodeError: naming the directory, key and field.
        """
        self._check_sample(key, image_bytes, image_ext, record)
        record_bytes = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        size = _member_bytes(len(image_bytes)) + _member_bytes(len(record_bytes))
        if self._shard is not None and _closed_tar_bytes(self._shard.tar.offset + size) > self.max_bytes:
            self._publish()
        if self._shard is None:
            self._open_next_shard()
        members = [(f"{key}.{image_ext}", image_bytes), (f"{key}.json", record_bytes)]
        self._shard.add(key, members, len(record["annotations"]))
        self._done_keys.add(key)
        if len(self._shard.keys) >= self.max_samples:
            self._publish()

    def _open_next_shard(self) -> None:
        name = shard_name(self.prefix, self._next_index)
        if (self.directory / name).exists():
            raise FileExistsError(
                f"{self.directory / name} exists: is another writer using prefix {self.prefix!r}?"
            )
        self._shard = _OpenShard(self.directory, name)
        self._next_index += 1

    def _publish(self) -> None:
        shard, self._shard = self._shard, None  # published or (on failure) deleted: nothing left to abort
        entry = shard.publish()
        _add_to_manifest(self.directory, {shard.path.name: entry})
        self.shards_written.append(shard.path)

    def finish_shard(self) -> None:
        """Complete the current shard now, if it has any sample; the next sample opens a new one."""
        if self._shard is not None:
            self._publish()

    def close(self) -> None:
        """Complete the last shard (if it has any sample)."""
        self.finish_shard()

    def abort(self) -> None:
        """Discard the shard in progress; completed shards stay."""
        if self._shard is not None:
            self._shard.discard()
            self._shard = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
