"""JSON nested deeper than Python's parser goes (``[`` x 100,000): every reader of outside JSON treats it as a
malformed document (skipped and counted where a batch job goes on, an error naming the file otherwise),
never a ``RecursionError`` that stops the job."""

from __future__ import annotations

import json

import numpy as np
import pytest
from shard_helpers import encode_image, write_raw_tar

from sam_engine.annotate.label_studio import import_label_studio
from sam_engine.data.importers.coco import load_coco_json
from sam_engine.data.importers.sa1b import import_sa1b
from sam_engine.data.loader import _parse_record
from sam_engine.data.records import make_record
from sam_engine.data.samples import good_samples
from sam_engine.data.shards import MANIFEST, read_manifest
from sam_engine.model.config import resolve_config
from sam_engine.utils.json_input import parse_json

DEEP = b"[" * 100_000


def test_parse_json_reports_deep_nesting_as_a_decode_error():
    with pytest.raises(RecursionError):
        json.loads(DEEP)  # the reason: Python's own parser
    for document in (DEEP, DEEP.decode(), b'{"a": ' * 100_000):
        with pytest.raises(json.JSONDecodeError, match="nested too deeply"):
            parse_json(document)
    assert parse_json(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}


def _shard_with_a_deep_record(path):
    image = encode_image(np.zeros((8, 8, 3), np.uint8))
    good = json.dumps(make_record("good", 8, 8, "good.png", [])).encode()
    return write_raw_tar(path, [("bad.png", image), ("bad.json", DEEP), ("good.png", image), ("good.json", good)])


def test_a_deep_record_is_skipped_by_the_shard_reader_the_loader_and_the_sa1b_import(tmp_path):
    shard = _shard_with_a_deep_record(tmp_path / "shard-000000.tar")
    skipped = []
    assert [s.key for s in good_samples(shard, skipped.append)] == ["good"]  # labeller, exports, engine
    assert len(skipped) == 1 and "bad" in str(skipped[0])
    with pytest.raises(Exception, match="nested too deeply") as error:  # training: the sample's error
        _parse_record({"json": DEEP, "__key__": "bad"}, "shard-000000.tar: bad")
    assert not isinstance(error.value, RecursionError)
    report = import_sa1b(shard, tmp_path / "imported")
    assert report.imported == 1 and [s.kind for s in report.skipped] == ["bad_json"]


def test_deep_manifest_coco_label_studio_and_model_config_are_errors_naming_the_file(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / MANIFEST).write_bytes(DEEP)
    with pytest.raises(ValueError, match=f"{MANIFEST}: unreadable manifest"):
        read_manifest(tmp_path / "shards")
    (tmp_path / "coco.json").write_bytes(DEEP)
    with pytest.raises(ValueError, match="coco.json"):
        load_coco_json(tmp_path / "coco.json")
    (tmp_path / "ls.json").write_bytes(DEEP)
    with pytest.raises(ValueError, match="ls.json"):
        import_label_studio(tmp_path / "ls.json", tmp_path / "shards", tmp_path / "out", stage=1)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "sam_config.json").write_bytes(DEEP)
    with pytest.raises(ValueError, match="sam_config.json: not valid JSON"):
        resolve_config(tmp_path / "model")  # what loading an export reads first
