"""JSON from outside (records, manifests, COCO and Label Studio files, model configs), parsed so that every
malformed document fails the same way.

Python's parser raises ``RecursionError``, not ``JSONDecodeError``, on nesting deeper than its recursion limit
(``[`` repeated 100,000 times): one hostile record would then stop a reader that skips malformed ones.
"""

from __future__ import annotations

import json
from typing import Any


def parse_json(document: str | bytes) -> Any:
    """``json.loads``, with nesting too deep to parse reported as :class:`json.JSONDecodeError`.

    Raises:
        json.JSONDecodeError: the document does not parse, or nests too deeply.
        UnicodeDecodeError: bytes that are not UTF-8 (or UTF-16/32, as ``json.loads`` detects).
    """
    try:
        return json.loads(document)
    except RecursionError:
        text = document if isinstance(document, str) else document[:1000].decode("utf-8", "replace")
        raise json.JSONDecodeError("nested too deeply to parse", text, 0) from None
