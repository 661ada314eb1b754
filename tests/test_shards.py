"""ShardWriter, manifests and shard listing: no partial shard is ever visible, resumes complete the set."""

import hashlib
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from shard_helpers import encode_image, make_sample, tar_keys_in, write_shard_set

from sam_engine.data.records import RecordError
from sam_engine.data.shards import (
    MANIFEST,
    ShardWriter,
    describe_shard,
    list_shards,
    read_manifest,
    shard_sample_counts,
)


def _visible_tars(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.tar"))


def _write(writer: ShardWriter, keys) -> None:
    for i, key in enumerate(keys):
        data, record, _ = make_sample(key, seed=i)
        writer.write(key, data, "png", record)


def test_shards_roll_over_and_the_manifest_describes_them(tmp_path):
    keys = [f"img{i}" for i in range(12)]
    with ShardWriter(tmp_path, max_samples=5) as writer:
        _write(writer, keys)
    tars = _visible_tars(tmp_path)
    assert [p.name for p in tars] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert writer.shards_written == tars
    shards = read_manifest(tmp_path)["shards"]
    assert [shards[p.name]["samples"] for p in tars] == [5, 5, 2]
    assert [shards[p.name]["annotations"] for p in tars] == [15, 15, 6]
    for path in tars:
        entry = shards[path.name]
        assert entry["bytes"] == path.stat().st_size
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry == describe_shard(path)
    assert [key for p in tars for key in shards[p.name]["keys"]] == keys
    assert tar_keys_in(tars) == keys
    assert list_shards(tmp_path) == [str(p) for p in tars]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_samples_are_the_image_bytes_and_the_record(tmp_path):
    data, record, _ = make_sample("sa_1")
    with ShardWriter(tmp_path) as writer:
        writer.write("sa_1", data, "png", record)
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        assert tar.getnames() == ["sa_1.png", "sa_1.json"]
        assert tar.extractfile("sa_1.png").read() == data
        assert json.loads(tar.extractfile("sa_1.json").read()) == record


def test_max_bytes_bounds_shards(tmp_path):
    with ShardWriter(tmp_path, max_bytes=40_000) as writer:
        _write(writer, [f"k{i}" for i in range(20)])
    sizes = [p.stat().st_size for p in _visible_tars(tmp_path)]
    assert len(sizes) > 1 and max(sizes) <= 40_000


def test_no_empty_shards(tmp_path):
    with ShardWriter(tmp_path, max_samples=2) as writer:
        _write(writer, ["a", "b"])  # fills the shard exactly: nothing is left for close()
    with ShardWriter(tmp_path / "none"):
        pass
    assert [p.name for p in _visible_tars(tmp_path)] == ["shard-000000.tar"]
    assert list((tmp_path / "none").iterdir()) == []


def test_an_exception_discards_the_shard_in_progress_and_a_rerun_completes_the_set(tmp_path):
    keys = [f"img{i}" for i in range(11)]
    with pytest.raises(RuntimeError, match="producer failed"):
        with ShardWriter(tmp_path, max_samples=4) as writer:
            _write(writer, keys[:6])
            raise RuntimeError("producer failed")
    assert [p.name for p in _visible_tars(tmp_path)] == ["shard-000000.tar"]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]

    with ShardWriter(tmp_path, max_samples=4) as writer:
        done = writer.completed_keys()
        assert done == set(keys[:4])
        _write(writer, [k for k in keys if k not in done])
    assert sorted(tar_keys_in(_visible_tars(tmp_path))) == sorted(keys)
    assert [p.name for p in _visible_tars(tmp_path)] == [f"shard-00000{i}.tar" for i in range(3)]


_SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from shard_helpers import make_sample
    from sam_engine.data.shards import ShardWriter
    with ShardWriter(sys.argv[1], max_samples=3) as writer:
        done = writer.completed_keys()
        for i in range(10):
            key = f"img{i}"
            if key not in done:
                data, record, _ = make_sample(key, seed=i)
                writer.write(key, data, "png", record)
                time.sleep(float(sys.argv[3]))
    """
)


def _run_writer(directory: Path, delay: float) -> subprocess.Popen:
    tests_dir = str(Path(__file__).parent)
    return subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(directory), tests_dir, str(delay)])


def test_a_writer_killed_mid_shard_leaves_no_partial_tar_and_the_rerun_completes(tmp_path):
    process = _run_writer(tmp_path, delay=0.05)
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob("shard-000001.tar.tmp-*")):  # the second shard is being written
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()

    listed = read_manifest(tmp_path)["shards"]
    assert [p.name for p in _visible_tars(tmp_path)] == list(listed) == ["shard-000000.tar"]
    assert list(
        tmp_path.glob("shard-000001.tar.tmp-*")
    )  # the partial shard exists, under a name no reader lists

    assert _run_writer(tmp_path, delay=0).wait() == 0
    keys = tar_keys_in(_visible_tars(tmp_path))
    assert sorted(keys) == sorted(f"img{i}" for i in range(10))  # no duplicate, none missing
    assert list(read_manifest(tmp_path)["shards"]) == [p.name for p in _visible_tars(tmp_path)]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_a_shard_renamed_but_not_in_the_manifest_is_recovered(tmp_path):
    write_shard_set(tmp_path, [2, 3])
    manifest = read_manifest(tmp_path)
    lost = manifest["shards"].pop("shard-000001.tar")
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))  # as if killed between rename and manifest update
    with ShardWriter(tmp_path) as writer:
        assert writer.completed_keys() == {"shard0_0", "shard0_1", "shard1_0", "shard1_1", "shard1_2"}
        _write(writer, ["new"])
    shards = read_manifest(tmp_path)["shards"]
    assert shards["shard-000001.tar"] == lost
    assert shards["shard-000002.tar"]["keys"] == ["new"]


def _write_prefix(directory, prefix):
    write_shard_set(Path(directory), [2, 2, 2], prefix=prefix)


def test_concurrent_writers_with_distinct_prefixes_share_the_manifest(tmp_path):
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_write_prefix, args=(tmp_path, p)) for p in ("taskA", "taskB")]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    shards = read_manifest(tmp_path)["shards"]
    assert sorted(shards) == sorted(f"task{t}-00000{i}.tar" for t in "AB" for i in range(3))
    assert sum(entry["samples"] for entry in shards.values()) == 12


def test_write_refuses_bad_samples_naming_key_and_field(tmp_path):
    data, record, _ = make_sample("sa_1")
    with ShardWriter(tmp_path) as writer:
        broken = json.loads(json.dumps(record))
        broken["annotations"][1]["bbox"] = [0, 0, 1]
        with pytest.raises(RecordError, match=r"sa_1: image 'sa_1' annotations\[1\]\.bbox"):
            writer.write("sa_1", data, "png", broken)
        other_size = encode_image(np.zeros((5, 5, 3), np.uint8))
        with pytest.raises(
            RecordError, match=r"sa_1: .*image.height/width: the record says 24x32 but the image is 5x5"
        ):
            writer.write("sa_1", other_size, "png", record)
        for bad_key in ["sa.1", "a/b", "__meta", ""]:
            with pytest.raises(ValueError, match="bad key"):
                writer.write(bad_key, data, "png", record)
        with pytest.raises(ValueError, match="image_ext 'gif'"):
            writer.write("sa_1", data, "gif", record)
        writer.write("sa_1", data, "png", record)
        with pytest.raises(ValueError, match="already in a shard"):
            writer.write("sa_1", data, "png", record)
    assert read_manifest(tmp_path)["shards"]["shard-000000.tar"]["keys"] == ["sa_1"]


def test_list_shards_accepts_directories_patterns_files_and_lists(tmp_path):
    write_shard_set(tmp_path / "a", [1, 1, 1])
    write_shard_set(tmp_path / "b", [1])
    a = [str(tmp_path / "a" / f"shard-00000{i}.tar") for i in range(3)]
    assert list_shards(tmp_path / "a") == a
    assert list_shards(str(tmp_path / "a" / "shard-{000000..000002}.tar")) == a
    b = str(tmp_path / "b" / "shard-000000.tar")
    # A shard named twice, however it is named, is read once (the first time).
    twice = str(tmp_path / "a" / ".." / "a" / "shard-000000.tar")
    assert list_shards([tmp_path / "a", a[0], twice, tmp_path / "b", b]) == [*a, b]
    assert shard_sample_counts(a) == [1, 1, 1]


def test_list_shards_errors_name_the_source(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'plain'}: no manifest.json"):
        list_shards(tmp_path / "plain")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / MANIFEST).write_text(json.dumps({"format": "x", "shards": {}}))
    with pytest.raises(ValueError, match="empty: manifest.json lists no shards"):
        list_shards(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="2 of 2 shards do not exist"):
        list_shards(str(tmp_path / "s-{0..1}.tar"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_shards(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["../x.tar", "/etc/passwd", "sub/shard.tar", "..\\x.tar", "notes.txt", ".tar"])
def test_a_manifest_entry_out_of_its_directory_is_an_error_naming_it(tmp_path, name):
    write_shard_set(tmp_path / "a", [1])
    manifest = json.loads((tmp_path / "a" / MANIFEST).read_text())
    manifest["shards"][name] = next(iter(manifest["shards"].values()))
    (tmp_path / "a" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"manifest.json: shard {re.escape(repr(name))} is not a .tar file name"):
        list_shards(tmp_path / "a")


def test_counts_come_from_tar_headers_without_a_manifest(tmp_path):
    write_shard_set(tmp_path / "a", [3, 2])
    (tmp_path / "copy").mkdir()
    for name in ["shard-000000.tar", "shard-000001.tar"]:
        os.link(tmp_path / "a" / name, tmp_path / "copy" / name)
    assert shard_sample_counts(list_shards(str(tmp_path / "copy" / "shard-{000000..000001}.tar"))) == [3, 2]
