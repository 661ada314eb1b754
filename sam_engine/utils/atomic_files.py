"""Files written whole or not at all: a temporary file beside the target, fsynced, renamed over it.

Readers see the old file or the whole new one; a failure or a kill leaves no partial target (and no
temporary file, unless the process is killed between the write and the rename). ``file_sha256`` checks what
was written (shard manifests, exports' ``sam.pth.sha256``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomic(path: str | Path, write: Callable[[IO], None], binary: bool = False) -> None:
    """Call ``write`` on a temporary file beside ``path`` (text: UTF-8, newlines untranslated), then rename it
    over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    text = {} if binary else {"encoding": "utf-8", "newline": ""}
    try:
        with open(tmp, "wb" if binary else "w", **text) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data), binary=True)


def write_json_atomic(path: str | Path, obj, **dump_options) -> None:
    """``obj`` as JSON (``json.dump`` options: indent 1 unless given)."""
    write_atomic(path, lambda f: json.dump(obj, f, **{"indent": 1, **dump_options}))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
