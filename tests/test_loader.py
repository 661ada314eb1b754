"""The reading pipeline: exact round trip, filtering, bad samples, equal steps on every DDP rank."""

import io
import json
import logging
import math
import re
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from shard_helpers import encode_image, make_sample, random_masks, write_raw_tar, write_shard_set

from sam_engine.data.datamodule import SamDataModule
from sam_engine.data.images import open_image
from sam_engine.data.loader import Batch, SampleDecoder, TooManyBadSamples, collate, make_dataset, make_loader
from sam_engine.data.records import make_annotations, make_record
from sam_engine.data.samples import good_samples
from sam_engine.data.shards import MANIFEST, ShardWriter
from sam_engine.transforms import PIXEL_MEAN, PIXEL_STD, resize_image

CONF = Path(__file__).resolve().parents[1] / "sam_engine" / "conf"
UNEVEN = [5, 7, 2]  # samples per shard


def _read_all(source, num_workers=0, **kwargs) -> list[Batch]:
    kwargs = {"img_size": 32, "batch_size": 4, **kwargs}
    return list(make_loader(make_dataset(source, **kwargs), num_workers=num_workers))


def _keys(batches) -> list[str]:
    return [key for batch in batches for key in batch.keys]


def _keys_with_masks(per_rank: list[list[Batch]]) -> list[str]:
    return [key for batches in per_rank for b in batches for key, n in zip(b.keys, b.num_masks, strict=True) if n > 0]


def _pixels(image: torch.Tensor, h: int, w: int) -> np.ndarray:
    """Undo the normalisation of a 3 x S x S image; h x w x 3 uint8."""
    mean, std = torch.tensor(PIXEL_MEAN).view(3, 1, 1), torch.tensor(PIXEL_STD).view(3, 1, 1)
    return (image[:, :h, :w] * std + mean).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _write_samples(directory: Path, samples: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """samples: key -> (H x W x 3 pixels, N x H x W masks), written as PNG with default annotations."""
    with ShardWriter(directory) as writer:
        for key, (pixels, masks) in samples.items():
            height, width = pixels.shape[:2]
            record = make_record(key, width, height, f"{key}.png", make_annotations(masks))
            writer.write(key, encode_image(pixels), "png", record)


# ---------------------------------------------------------------------------------------------------------
# What comes out
# ---------------------------------------------------------------------------------------------------------


def test_masks_and_pixels_read_back_identical(tmp_path):
    data, record, masks = make_sample("a", num_masks=5)
    with ShardWriter(tmp_path) as writer:
        writer.write("a", data, "png", record)
    [batch] = _read_all(tmp_path, img_size=32)  # 24 x 32 fits the 32 x 32 frame unscaled
    assert batch.keys == ["a"] and batch.num_masks.tolist() == [5]
    assert batch.image.shape == (1, 3, 32, 32) and batch.masks.shape == (1, 5, 32, 32)
    assert batch.original_size.tolist() == [[24, 32]] and batch.input_size.tolist() == [[24, 32]]
    np.testing.assert_array_equal(batch.masks[0, :, :24].numpy(), masks)
    assert not batch.masks[0, :, 24:].any() and (batch.image[0, :, 24:] == 0).all()
    np.testing.assert_array_equal(_pixels(batch.image[0], 24, 32), np.asarray(Image.open(io.BytesIO(data))))


def test_resizing_matches_sam_for_images_and_pil_nearest_for_masks(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
    masks = random_masks(4, 30, 41, rng)
    _write_samples(tmp_path, {"a": (pixels, masks)})
    [batch] = _read_all(tmp_path, img_size=64)
    h, w = batch.input_size[0].tolist()
    assert (h, w) == (47, 64)
    expected = resize_image(pixels, 64)
    mean, std = torch.tensor(PIXEL_MEAN).view(3, 1, 1), torch.tensor(PIXEL_STD).view(3, 1, 1)
    normalised = (torch.from_numpy(expected).permute(2, 0, 1).float() - mean) / std
    torch.testing.assert_close(batch.image[0, :, :h, :w], normalised)
    resized = [np.asarray(Image.fromarray(m).resize((w, h), Image.NEAREST)) for m in masks]
    np.testing.assert_array_equal(batch.masks[0, :, :h, :w].numpy(), np.stack(resized))


def test_masks_are_filtered_by_area_and_sampled_up_to_the_limit(tmp_path):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    small = random_masks(5, 24, 32, rng)
    huge = np.ones((1, 24, 32), bool)
    huge[0, 0, 0] = False  # 99.9% of the image
    empty = np.zeros((1, 24, 32), bool)  # an area-0 mask
    _write_samples(tmp_path, {"a": (pixels, np.concatenate([huge, small, empty]))})

    [batch] = _read_all(tmp_path, max_masks_per_image=10)
    np.testing.assert_array_equal(batch.masks[0, :, :24].numpy(), small)  # huge and empty dropped

    [batch] = _read_all(tmp_path, max_masks_per_image=3, seed=7)
    chosen = batch.masks[0, :, :24].numpy()
    assert len(chosen) == 3
    matches = [int(np.flatnonzero((small == m).all(axis=(1, 2)))[0]) for m in chosen]
    assert len(set(matches)) == 3  # three distinct masks of the image
    [again] = _read_all(tmp_path, max_masks_per_image=3, seed=7)
    assert torch.equal(again.masks, batch.masks)  # the same seed samples the same masks

    [batch] = _read_all(tmp_path, max_mask_fraction=1.0)
    assert batch.num_masks.tolist() == [6]  # the huge one is back; the empty one never is


def test_a_real_mask_whose_area_field_says_0_is_kept(tmp_path):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    masks = random_masks(2, 24, 32, rng)
    record = make_record("a", 32, 24, "a.png", make_annotations(masks))
    record["annotations"][1]["area"] = 0  # wrong: the RLE holds pixels
    with ShardWriter(tmp_path) as writer:
        writer.write("a", encode_image(pixels), "png", record)
    [batch] = _read_all(tmp_path)
    np.testing.assert_array_equal(batch.masks[0, :, :24].numpy(), masks)


def test_an_image_left_without_masks_is_a_valid_example(tmp_path):
    pixels = np.zeros((24, 32, 3), np.uint8)
    _write_samples(
        tmp_path,
        {
            "a": (pixels, np.ones((1, 24, 32), bool)),
            "b": (pixels, random_masks(2, 24, 32, np.random.default_rng(0))),
        },
    )
    [batch] = _read_all(tmp_path)
    assert batch.num_masks.tolist() == [0, 2]
    assert batch.masks.shape == (2, 2, 32, 32)
    assert batch.mask_valid.tolist() == [[False, False], [True, True]]
    assert not batch.masks[0].any()


def test_collate_pads_masks_to_the_largest_count():
    examples = [
        SampleDecoder(16)(
            {
                "__url__": "u",
                "__key__": str(n),
                "png": encode_image(np.zeros((8, 16, 3), np.uint8)),
                "json": json.dumps(
                    make_record(
                        n, 16, 8, "f", make_annotations(random_masks(n, 8, 16, np.random.default_rng(n)))
                    )
                ).encode(),
            },
            np.random.default_rng(0),
        )
        for n in (0, 3, 1)
    ]
    batch = collate(examples)
    assert batch.masks.shape == (3, 3, 16, 16) and batch.num_masks.tolist() == [0, 3, 1]
    assert batch.mask_valid.sum(1).tolist() == [0, 3, 1] and len(batch) == 3
    assert batch.to("cpu").keys == ["0", "3", "1"]


def test_a_10000_pixel_jpeg_is_decoded_small(tmp_path):
    height, width = 1000, 10_000
    pixels = np.repeat(np.linspace(0, 255, width, dtype=np.uint8)[None, :, None], height, 0).repeat(3, 2)
    data = encode_image(pixels, "JPEG", quality=80)
    image, full_size = open_image(data, draft_size=(6, 64))
    assert full_size == (1000, 10_000) and image.size == (1250, 125)  # libjpeg decoded it at 1/8
    masks = np.zeros((2, height, width), bool)
    masks[0, :500, :5000] = True
    masks[1, 200:, 3000:] = True
    with ShardWriter(tmp_path) as writer:
        writer.write(
            "big", data, "jpg", make_record("big", width, height, "big.jpg", make_annotations(masks))
        )
    [batch] = _read_all(tmp_path, img_size=64)
    assert batch.input_size.tolist() == [[6, 64]] and batch.num_bad == 0
    assert batch.masks[0, 0, :3, :32].all() and not batch.masks[0, 0, 3:].any()


# ---------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------


def _json(record) -> bytes:
    return json.dumps(record).encode()


def _bad_shard(path: Path) -> tuple[list[str], list[str]]:
    """A tar holding good samples and one of each kind of bad sample; returns (good keys, bad keys)."""
    members = []
    good, bad = [], []

    def add(key, is_good, *files):
        members.extend(files)
        (good if is_good else bad).append(key)

    for key in ["good0", "twice", "area0", "good1"]:
        data, record, _ = make_sample(key)
        if key == "area0":
            record["annotations"][0]["area"] = 0  # a wrong field: the reader counts the RLE instead
        add(key, True, (f"{key}.png", data), (f"{key}.json", _json(record)))
        if key == "twice":  # the same key again, right after: a duplicate
            add("twice", False, ("twice.png", data), ("twice.json", _json(record)))
    data, record, _ = make_sample("x")
    add("zero", False, ("zero.png", b""), ("zero.json", _json(record)))
    add("garbage", False, ("garbage.png", b"\x89PNG not really"), ("garbage.json", _json(record)))
    add("badjson", False, ("badjson.png", data), ("badjson.json", b'{"image": {'))
    latin = json.dumps({**record, "note": "caf\u00e9"}, ensure_ascii=False).encode("latin-1")
    add("latin", False, ("latin.png", data), ("latin.json", latin))
    resized = json.loads(json.dumps(record))
    resized["annotations"][1]["segmentation"]["size"] = [12, 10]
    add("rlesize", False, ("rlesize.png", data), ("rlesize.json", _json(resized)))
    overflowing = json.loads(json.dumps(record))  # right size, but runs covering twice the pixels
    counts = overflowing["annotations"][0]["segmentation"]["counts"]
    overflowing["annotations"][0]["segmentation"]["counts"] = counts + counts
    add("overflow", False, ("overflow.png", data), ("overflow.json", _json(overflowing)))
    add("nojson", False, ("nojson.png", data))
    add("noimage", False, ("noimage.json", _json(record)))
    add(
        "wrongsize",
        False,
        ("wrongsize.png", encode_image(np.zeros((20, 20, 3), np.uint8))),
        ("wrongsize.json", _json(record)),
    )
    tiny = make_record("tiny", 1, 1, "tiny.png", make_annotations(np.ones((1, 1, 1), bool)))
    add("tiny", False, ("tiny.png", encode_image(np.zeros((1, 1, 3), np.uint8))), ("tiny.json", _json(tiny)))
    g0, r0, _ = make_sample("good0")
    add("good0", False, ("good0.png", g0), ("good0.json", _json(r0)))  # duplicate, not adjacent
    write_raw_tar(path, members)
    return good, bad


def test_each_kind_of_bad_sample_is_skipped_named_and_counted(tmp_path, caplog):
    good, bad = _bad_shard(tmp_path / "bad.tar")
    write_shard_set(tmp_path / "ok", [3])
    whole = (tmp_path / "ok" / "shard-000000.tar").read_bytes()
    (tmp_path / "truncated.tar").write_bytes(whole[: len(whole) // 2])
    gone = tmp_path / "gone.tar"
    gone.write_bytes(whole)
    sources = [str(tmp_path / "bad.tar"), str(tmp_path / "truncated.tar"), str(gone)]
    dataset = make_dataset(sources, img_size=32, batch_size=64, max_bad_fraction=1.0)
    gone.unlink()  # vanishes between listing and reading

    with caplog.at_level(logging.WARNING, logger="sam_engine.data.loader"):
        batches = list(make_loader(dataset))
    keys = _keys(batches)
    assert keys[: len(good)] == good and keys[len(good)] == "shard0_0"  # the truncated tar's first sample
    assert len(keys) == len(good) + 1
    area0 = batches[0].keys.index("area0")
    assert batches[0].num_masks[area0] == 3  # the mask whose field said 0 is real: kept

    skipped = [r.getMessage() for r in caplog.records if "skipping bad sample" in r.getMessage()]
    assert (
        sum(b.num_bad for b in batches) == len(skipped) == len(bad) + 2
    )  # + the truncated and the missing tar
    for key in bad:
        assert any(f"bad.tar:{key}:" in message for message in skipped), key
    assert any("truncated.tar:shard0_1: unreadable tar" in m for m in skipped)
    assert any("gone.tar:None: unreadable tar: FileNotFoundError" in m for m in skipped)
    summary = [
        r.getMessage() for r in caplog.records if "skipped" in r.getMessage() and "read" in r.getMessage()
    ]
    assert summary == [
        f"rank 0 worker 0: read {len(keys) + len(skipped)} samples, skipped {len(skipped)} bad"
    ]


def test_field_level_messages(tmp_path, caplog):
    _bad_shard(tmp_path / "bad.tar")
    with caplog.at_level(logging.WARNING, logger="sam_engine.data.loader"):
        _read_all(str(tmp_path / "bad.tar"), max_bad_fraction=1.0)
    text = "\n".join(r.getMessage() for r in caplog.records)
    rle = "bad.tar:rlesize: image 'x' annotations[1].segmentation.size: [12, 10] differs from the image's"
    assert rle in text
    assert "bad.tar:latin: json: not UTF-8" in text
    assert "bad.tar:badjson: json: does not parse" in text
    assert "bad.tar:nojson: json: missing" in text
    assert "bad.tar:noimage: image: missing" in text
    assert "bad.tar:zero: cannot decode image (0 bytes)" in text
    assert "bad.tar:tiny: image: 1x1 is smaller than min_image_side=8" in text
    assert "bad.tar:wrongsize: image.height/width: the record says 24x32 but the image is 20x20" in text
    assert "bad.tar:twice: __key__: duplicate key in the shard" in text
    assert re.search(r"bad.tar:overflow: annotations\[\]\.segmentation: RLE runs cover \d+ pixels, not 24x32", text)


def test_an_endless_stream_of_empty_shards_stops_instead_of_hanging(tmp_path):
    write_raw_tar(tmp_path / "empty.tar", [])
    with pytest.raises(TooManyBadSamples, match="empty.tar:None: empty shard"):
        _read_all(str(tmp_path / "empty.tar"), resample=True, steps_per_epoch=2)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_too_many_bad_samples_stop_the_reader(tmp_path, num_workers):
    members = []
    for i in range(20):
        data, record, _ = make_sample(f"k{i}")
        members += [(f"k{i}.png", data if i % 3 else b"broken"), (f"k{i}.json", _json(record))]
    write_raw_tar(tmp_path / "s.tar", members)
    with pytest.raises(TooManyBadSamples, match=r"rank 0 worker 0: \d+ of \d+ samples were bad"):
        _read_all(str(tmp_path / "s.tar"), num_workers=num_workers, max_bad_fraction=0.2, min_seen=5)
    batches = _read_all(str(tmp_path / "s.tar"), max_bad_fraction=0.5, min_seen=5)  # 7 of 20 are bad
    assert len(_keys(batches)) == 13 and sum(b.num_bad for b in batches) == 7


# ---------------------------------------------------------------------------------------------------------
# Splitting over ranks and workers
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> tuple[Path, list[str]]:
    directory = tmp_path_factory.mktemp("uneven")
    return directory, write_shard_set(directory, UNEVEN)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_training_gives_every_rank_the_same_steps(uneven, num_workers):
    directory, keys = uneven
    per_rank = [
        _read_all(
            directory,
            num_workers,
            batch_size=3,
            resample=True,
            steps_per_epoch=5,
            shuffle_buffer=4,
            rank=rank,
            world_size=2,
        )
        for rank in (0, 1)
    ]
    assert [len(batches) for batches in per_rank] == [5, 5]
    assert all(len(batch) == 3 for batches in per_rank for batch in batches)
    assert set(_keys(per_rank[0] + per_rank[1])) <= set(keys)
    assert _keys(per_rank[0]) != _keys(per_rank[1])  # ranks draw differently


def test_training_epochs_differ_and_runs_repeat(uneven):
    directory, _ = uneven
    dataset = make_dataset(directory, img_size=32, batch_size=4, resample=True, steps_per_epoch=3, seed=1)
    epochs = [_keys(make_loader(dataset)) for _ in range(2)]
    assert epochs[0] != epochs[1]
    again = make_dataset(directory, img_size=32, batch_size=4, resample=True, steps_per_epoch=3, seed=1)
    assert _keys(make_loader(again)) == epochs[0]


@pytest.mark.parametrize("world_size, num_workers, batch_size", [(2, 0, 2), (2, 2, 2), (3, 2, 2), (3, 0, 4)])
def test_validation_gives_every_rank_the_same_steps_and_covers_every_sample(
    uneven, world_size, num_workers, batch_size
):
    directory, keys = uneven
    per_rank = [
        _read_all(directory, num_workers, batch_size=batch_size, rank=rank, world_size=world_size)
        for rank in range(world_size)
    ]
    steps = math.ceil(math.ceil(len(keys) / world_size) / batch_size)
    assert [len(batches) for batches in per_rank] == [steps] * world_size
    read = [_keys(batches) for batches in per_rank]
    assert sorted({key for rank_keys in read for key in rank_keys}) == sorted(keys)
    padding = sum(len(rank_keys) for rank_keys in read) - len(keys)
    assert padding < world_size  # the only repeats are the pads of ranks short of a sample
    assert sorted(_keys_with_masks(per_rank)) == sorted(keys)  # a pad has no mask: no metric counts an image twice


def test_a_stale_manifest_count_pads_without_masks_instead_of_repeating_an_example(uneven, tmp_path, caplog):
    """A manifest that promises more samples than its shards hold (edited, or left from a bigger set): every
    rank still takes the same steps, each real image's masks count once, and the shortfall is named."""
    directory, keys = uneven
    stale = tmp_path / "stale"
    shutil.copytree(directory, stale)
    manifest = json.loads((stale / MANIFEST).read_text())
    first = next(iter(manifest["shards"]))
    manifest["shards"][first]["samples"] = 250
    (stale / MANIFEST).write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="sam_engine.data.loader"):
        per_rank = [_read_all(stale, batch_size=2, rank=rank, world_size=2) for rank in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == math.ceil((250 - 5 + len(keys)) / 2 / 2)
    assert sorted(_keys_with_masks(per_rank)) == sorted(keys)
    assert any("batches short of the" in r.getMessage() and "manifest" in r.getMessage() for r in caplog.records)


def test_a_shard_whose_bytes_changed_after_writing_is_not_read(tmp_path, caplog):
    """Bit rot inside an image (which may still decode), or a shard replaced by another: the manifest's byte
    count and SHA-256 are checked when a job first opens the shard, and the shard is skipped, named."""
    keys = write_shard_set(tmp_path, [3, 2])
    rotten = tmp_path / "shard-000000.tar"
    data = bytearray(rotten.read_bytes())
    data[1500] ^= 0x01  # one bit inside the first image's bytes
    rotten.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="sam_engine.data.loader"):
        batches = _read_all(tmp_path, max_bad_fraction=1.0)
    assert _keys(batches) == keys[3:] and sum(b.num_bad for b in batches) == 1
    assert any("shard-000000.tar: sha256 " in r.getMessage() and "its manifest.json records" in r.getMessage()
               for r in caplog.records)
    (tmp_path / "shard-000001.tar").write_bytes(bytes(data[:-1024]))  # another size: named by its byte count
    skipped = []
    assert list(good_samples(tmp_path, skipped.append)) == []
    assert [s.kind for s in skipped] == ["unreadable_shard"] * 2
    assert "bytes, but its manifest.json records" in skipped[1].reason


def test_a_manifest_entry_of_the_wrong_type_is_an_error_naming_the_shard_and_field(uneven, tmp_path):
    directory, _ = uneven
    for field, value in (("samples", "5"), ("samples", -1), ("sha256", "abc"), ("keys", "k"), ("bytes", True)):
        broken = tmp_path / f"{field}{value}"
        shutil.copytree(directory, broken)
        manifest = json.loads((broken / MANIFEST).read_text())
        manifest["shards"]["shard-000001.tar"][field] = value
        (broken / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match=rf"manifest.json: shards.shard-000001.tar: {field}: expected"):
            make_dataset(broken, img_size=32, batch_size=2)


def test_worker_batches_equal_in_process_batches(uneven):
    """Workers start from a fork server (never a fork of the threaded trainer) and read what one process reads."""
    directory, _ = uneven
    assert make_loader(make_dataset(directory, img_size=32, batch_size=3), num_workers=2).multiprocessing_context \
        .get_start_method() == "forkserver"
    in_process, workers = (_read_all(directory, n, batch_size=3, max_masks_per_image=2) for n in (0, 2))
    assert len(in_process) == len(workers) == 5
    for a, b in zip(in_process, workers, strict=True):
        assert a.keys == b.keys
        for name in ("image", "masks", "mask_valid", "num_masks", "original_size", "input_size"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("batch_size", [2, 3])
def test_workers_of_a_rank_split_a_validation_pass_without_duplicates(uneven, batch_size):
    directory, keys = uneven
    batches = _read_all(directory, num_workers=2, batch_size=batch_size)
    assert sorted(_keys(batches)) == sorted(keys)
    assert _keys(batches) == keys  # workers take turns batch by batch: the order is the shards' order


_DDP_RANK = textwrap.dedent(
    """
    import datetime, json, sys, torch
    from sam_engine.data.loader import make_dataset, make_loader
    rank, init_file, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                                         timeout=datetime.timedelta(seconds=20))
    steps = {}
    for mode, kwargs in {"val": {}, "train": {"resample": True, "steps_per_epoch": 4}}.items():
        steps[mode] = 0
        for _ in make_loader(make_dataset(directory, img_size=32, batch_size=3, **kwargs)):  # rank from torch
            torch.distributed.all_reduce(torch.ones(1))  # a rank with fewer batches would leave this waiting
            steps[mode] += 1
    torch.distributed.destroy_process_group()
    print(json.dumps(steps))
    """
)


def test_two_ddp_ranks_on_cpu_take_equal_steps_on_uneven_shards(uneven, tmp_path):
    init_file = str(tmp_path / "init")
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", _DDP_RANK, str(rank), init_file, str(uneven[0])],
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in ranks]
    assert [process.returncode for process in ranks] == [0, 0]
    assert [json.loads(out) for out in outputs] == [{"val": 3, "train": 4}] * 2


# ---------------------------------------------------------------------------------------------------------
# The datamodule
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_synthetic(monkeypatch):
    """A stand-in for sam_engine.data.synthetic.dataset that records its calls and writes small shard sets."""
    calls = []

    def ensure_synthetic_dataset(out_dir, *, num_images, seed, image_size, shard_size=4):
        calls.append((Path(out_dir).name, num_images, seed, image_size))
        if not (Path(out_dir) / "manifest.json").exists():  # idempotent, as the real one
            write_shard_set(Path(out_dir), [shard_size] * (num_images // shard_size))
        return Path(out_dir)

    module = types.ModuleType("sam_engine.data.synthetic.dataset")
    module.ensure_synthetic_dataset = ensure_synthetic_dataset
    monkeypatch.setitem(sys.modules, "sam_engine.data.synthetic.dataset", module)
    return calls


def test_datamodule_generates_missing_synthetic_data_and_serves_both_splits(tmp_path, fake_synthetic):
    synthetic = [
        {"out_dir": tmp_path / "train", "num_images": 8, "seed": 0, "image_size": 32},
        {"out_dir": tmp_path / "val", "num_images": 4, "seed": 1, "image_size": 32},
    ]
    datamodule = SamDataModule(
        tmp_path / "train",
        tmp_path / "val",
        img_size=32,
        batch_size=3,
        num_workers=0,
        steps_per_epoch=2,
        synthetic=synthetic,
    )
    datamodule.prepare_data()
    datamodule.prepare_data()  # asked again on every start: the generator completes or skips
    assert fake_synthetic == [("train", 8, 0, 32), ("val", 4, 1, 32)] * 2
    datamodule.setup("fit")
    train, val = datamodule.train_dataloader(), datamodule.val_dataloader()
    assert len(train) == 2 and len(val) == 2
    assert [len(b) for b in train] == [3, 3]
    assert [len(b) for b in val] == [3, 1]


def test_datamodule_without_validation_serves_no_val_batches(uneven):
    datamodule = SamDataModule(uneven[0], img_size=32, batch_size=2, num_workers=0, steps_per_epoch=1)
    datamodule.setup("fit")
    assert datamodule.val_dataloader() == []


def test_lightning_trains_and_validates_on_the_datamodule(uneven):
    import lightning

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, batch_idx):
            assert isinstance(batch, Batch) and batch.masks.is_contiguous()
            self.seen.append(len(batch))
            self.log("data/bad", float(batch.num_bad), reduce_fx="sum", batch_size=len(batch))
            return (self.weight - batch.image.mean()) ** 2

        def validation_step(self, batch, batch_idx):
            self.seen.append(-len(batch))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Module()
    datamodule = SamDataModule(
        uneven[0], uneven[0], img_size=32, batch_size=4, num_workers=0, steps_per_epoch=3
    )
    trainer = lightning.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=datamodule)
    assert module.seen == [4, 4, 4, -4, -4, -4, -2]


def test_hydra_configs_instantiate_the_datamodule(tmp_path, monkeypatch):
    monkeypatch.setenv("SAM_ENGINE_DATA", str(tmp_path))
    with initialize_config_dir(str(CONF), version_base="1.3"):
        shards = compose(overrides=["+data=shards", "data.train='/s/{0..3}.tar'", "+model.img_size=64"])
        synthetic = compose(overrides=["+data=synthetic", "+model.img_size=64"])
    datamodule = instantiate(shards.data)
    assert isinstance(datamodule, SamDataModule)
    assert (
        datamodule.sources == {"train": "/s/{0..3}.tar", "val": None} and datamodule.reading["img_size"] == 64
    )
    datamodule = instantiate(synthetic.data)
    assert datamodule.sources["train"] == f"{tmp_path}/synthetic/train"
    assert [spec["out_dir"] for spec in datamodule.synthetic] == [f"{tmp_path}/synthetic/{s}" for s in ("train", "val")]
    assert datamodule.synthetic[1]["num_images"] > 0 and datamodule.reading["max_masks_per_image"] == 8


def _bright_square_sample(size: int = 32) -> tuple[dict, np.ndarray]:
    """A black image with four white squares, each also a mask: the image shows where its masks are."""
    masks = np.zeros((4, size, size), bool)
    for i, (y, x) in enumerate([(2, 2), (2, 20), (20, 2), (20, 20)]):
        masks[i, y : y + 8, x : x + 8] = True
    pixels = np.repeat((masks.any(0) * 255).astype(np.uint8)[..., None], 3, axis=2)
    record = make_record("jit", size, size, "jit.png", make_annotations(masks))
    return {"__url__": "u", "__key__": "jit", "png": encode_image(pixels), "json": json.dumps(record).encode()}, masks


def test_large_scale_jitter_crops_image_and_masks_alike_and_drops_masks_left_outside():
    sample, _ = _bright_square_sample()
    decoder = SampleDecoder(32, scale_range=(2.0, 2.0))  # 64 x 64, then a random 32 x 32 window
    seen = set()
    for seed in range(6):
        example = decoder(sample, np.random.default_rng(seed))
        assert example.input_size == (32, 32) and example.image.shape == (3, 32, 32)
        bright = example.image[0] > 0  # normalised white > 0 > normalised black
        assert 1 <= len(example.masks) <= 4  # every kept mask shows in the window; the others are dropped
        assert all(m.any() for m in example.masks)
        assert torch.equal(torch.stack(list(example.masks)).any(0), bright)  # the same window of both
        seen.add(int(bright.sum()))
    assert len(seen) > 1  # the window moves with the sample's generator
    again = decoder(sample, np.random.default_rng(0))
    assert torch.equal(again.image, decoder(sample, np.random.default_rng(0)).image)


def test_large_scale_jitter_down_leaves_a_padded_smaller_image():
    sample, masks = _bright_square_sample()
    example = SampleDecoder(32, scale_range=(0.5, 0.5))(sample, np.random.default_rng(0))
    assert example.input_size == (16, 16) and example.masks.shape == (4, 16, 16)
    assert (example.masks.flatten(1).sum(1) == 16).all()  # 8 x 8 squares at half the size
    assert (example.image[:, 16:, :] == 0).all() and (example.image[:, :, 16:] == 0).all()  # padding
    assert SampleDecoder(32)(sample, np.random.default_rng(0)).input_size == (32, 32)  # no jitter: as stored


@pytest.mark.parametrize("bad", [(0.0, 1.0), (2.0, 1.0), (-1.0, 0.5), 0.5, ("a", 1.0), (0.5, 1.0, 2.0)])
def test_large_scale_jitter_refuses_a_bad_range(bad):
    with pytest.raises(ValueError, match="scale_jitter"):
        SampleDecoder(32, scale_range=bad)


def test_the_datamodule_jitters_training_images_only(tmp_path):
    write_shard_set(tmp_path / "s", [3])
    module = SamDataModule(str(tmp_path / "s"), str(tmp_path / "s"), img_size=32, batch_size=3, num_workers=0,
                           steps_per_epoch=1, scale_jitter=[0.25, 0.25], shuffle_buffer=0)
    module.setup("fit")
    [train] = list(module.train_dataloader())
    [val] = list(module.val_dataloader())
    assert (train.input_size <= 8).all() and (val.input_size > 8).any()


@pytest.mark.parametrize("scale_range", [None, (2.0, 2.0), (0.5, 0.5)])
def test_an_image_with_no_masks_decodes_resized_and_jittered(scale_range):
    pixels = np.zeros((64, 64, 3), np.uint8)
    record = make_record("none", 64, 64, "none.png", [])
    sample = {"__url__": "u", "__key__": "none", "png": encode_image(pixels), "json": json.dumps(record).encode()}
    example = SampleDecoder(32, scale_range=scale_range)(sample, np.random.default_rng(0))  # 64 -> 32: resized
    assert example.masks.shape[0] == 0 and example.image.shape == (3, 32, 32)
