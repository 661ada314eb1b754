"""Importers: COCO (exactly pycocotools' masks), the SA-1B release, image folders, and bad input."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from shard_helpers import write_raw_tar

from sam_engine.data.images import decode_image
from sam_engine.data.importers.base import REPORT_FILE, SkipSample, check_rle, key_from_path
from sam_engine.data.importers.coco import import_coco
from sam_engine.data.importers.folder import import_folder
from sam_engine.data.importers.sa1b import import_sa1b, iter_sa1b
from sam_engine.data.records import decode_masks, encode_masks, make_annotations, make_record, rle_counts
from sam_engine.data.shards import list_shards

RNG = np.random.default_rng(0)


def image_bytes(pixels: np.ndarray, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **save_args)
    return buffer.getvalue()


def random_pixels(height: int, width: int) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def read_samples(directory: Path) -> dict[str, tuple[bytes, dict]]:
    return {key: (image, record) for key, image, record in iter_sa1b(list_shards(directory))}


def skipped(report) -> dict[str, str]:
    """source file name -> kind, for the samples a report skipped."""
    return {Path(s.source.split(":")[0]).name: s.kind for s in report.skipped}


# --- RLE checks -------------------------------------------------------------------------------


def test_rle_counts_decodes_pycocotools_strings():
    for _ in range(50):
        height, width = RNG.integers(1, 40, 2)
        mask = RNG.random((height, width)) < RNG.random()
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        runs = rle_counts(rle["counts"].decode())
        flat = mask.flatten(order="F")
        assert runs.sum() == height * width and runs[1::2].sum() == flat.sum()
        boundaries = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
        expected = np.diff(np.concatenate([[0], boundaries, [flat.size]]))
        expected = expected if not flat[0] else np.concatenate([[0], expected])
        assert np.array_equal(runs, expected)


def test_check_rle_rejects_runs_that_would_overflow_the_decoder():
    good = encode_masks(np.ones((1, 4, 5), dtype=bool))[0]
    check_rle(good, 4, 5, "x")
    with pytest.raises(SkipSample, match="covers|cover"):
        check_rle(
            {"size": [4, 5], "counts": encode_masks(np.ones((1, 40, 50), dtype=bool))[0]["counts"]}, 4, 5, "x"
        )
    with pytest.raises(SkipSample) as error:
        check_rle({"size": [5, 4], "counts": good["counts"]}, 4, 5, "x")
    assert error.value.kind == "rle_size"
    with pytest.raises(SkipSample):
        check_rle({"size": [4, 5], "counts": "\u00e9!"}, 4, 5, "x")
    with pytest.raises(SkipSample):
        check_rle({"size": [4, 5], "counts": [10, -2, 12]}, 4, 5, "x")


def test_key_from_path():
    assert key_from_path("2024/beach 01.jpg") == "2024_beach_01"
    assert key_from_path("__x.y.png") == "x_y"


# --- COCO -------------------------------------------------------------------------------------


def blob_mask(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    cy, cx = RNG.uniform(0, height), RNG.uniform(0, width)
    return (yy - cy) ** 2 / RNG.uniform(9, 100) + (xx - cx) ** 2 / RNG.uniform(9, 100) <= 1


def uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F").astype(np.int8)
    boundaries = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], boundaries, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] + runs) if flat[0] else runs}


@pytest.fixture()
def coco_dataset(tmp_path):
    """Two images with polygon, uncompressed-RLE, compressed-RLE and crowd annotations."""
    images = tmp_path / "images"
    images.mkdir()
    entries, annotations = [], []
    for image_id, (height, width) in enumerate([(30, 40), (25, 33)], start=1):
        name = f"img{image_id}.jpg"
        (images / name).write_bytes(image_bytes(random_pixels(height, width), "JPEG"))
        entries.append({"id": image_id, "file_name": name, "height": height, "width": width})
        compressed = encode_masks(blob_mask(height, width)[None])[0]
        annotations += [
            {
                "id": 10 * image_id,
                "image_id": image_id,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": [[2, 3, 20.5, 4, 15, 18.2], [25, 20, 30, 22, 28, 28, 24, 27]],
            },
            {
                "id": 10 * image_id + 1,
                "image_id": image_id,
                "category_id": 2,
                "iscrowd": 0,
                "segmentation": uncompressed_rle(blob_mask(height, width)),
            },
            {
                "id": 10 * image_id + 2,
                "image_id": image_id,
                "category_id": 3,
                "iscrowd": 0,
                "segmentation": compressed,
            },
            {
                "id": 10 * image_id + 3,
                "image_id": image_id,
                "category_id": 1,
                "iscrowd": 1,
                "segmentation": uncompressed_rle(blob_mask(height, width)),
            },
        ]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": []}))
    return path, images


@pytest.mark.parametrize("crowd", ["exclude", "include"])
def test_coco_masks_are_exactly_pycocotools_ann_to_mask(tmp_path, coco_dataset, crowd):
    annotations, images = coco_dataset
    report = import_coco(annotations, images, tmp_path / "out", crowd=crowd, shard_size=1)
    coco = COCO(str(annotations))
    samples = read_samples(tmp_path / "out")
    assert sorted(samples) == ["img1", "img2"] and report.imported == 2
    for image_bytes_, record in samples.values():
        assert image_bytes_ == (images / record["image"]["file_name"]).read_bytes()  # JPEG kept as is
        expected = [
            a for a in coco.imgToAnns[record["image"]["image_id"]] if crowd == "include" or not a["iscrowd"]
        ]
        assert [a["id"] for a in record["annotations"]] == [a["id"] for a in expected]
        masks = decode_masks([a["segmentation"] for a in record["annotations"]])
        for mask, annotation, original in zip(masks, record["annotations"], expected, strict=True):
            assert np.array_equal(mask, coco.annToMask(original).astype(bool))
            assert annotation["category_id"] == original["category_id"]
            assert annotation["iscrowd"] == original["iscrowd"]
    excluded = [s for s in report.skipped_annotations if s.kind == "crowd_excluded"]
    assert len(excluded) == (2 if crowd == "exclude" else 0)


def test_coco_bad_images_and_annotations_are_reported_and_skipped(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "good.png").write_bytes(image_bytes(random_pixels(20, 30)))
    (images / "one.png").write_bytes(image_bytes(random_pixels(1, 1)))
    (images / "empty.jpg").write_bytes(b"")
    (images / "garbage.jpg").write_bytes(b"not an image at all")
    (images / "wrong_size.png").write_bytes(image_bytes(random_pixels(10, 10)))
    entries = [
        {"id": 1, "file_name": "good.png", "height": 20, "width": 30},
        {"id": 2, "file_name": "missing.png", "height": 20, "width": 30},
        {"id": 3, "file_name": "empty.jpg", "height": 20, "width": 30},
        {"id": 4, "file_name": "garbage.jpg", "height": 20, "width": 30},
        {"id": 5, "file_name": "wrong_size.png", "height": 20, "width": 30},
        {"id": 6, "file_name": "one.png", "height": 1, "width": 1},
        {"id": 7, "height": 5},
    ]
    wrong_size_rle = encode_masks(np.ones((1, 10, 10), dtype=bool))[0]
    annotations = [
        {"id": 1, "image_id": 1, "segmentation": [[1, 1, 10, 1, 10, 10]]},
        {"id": 2, "image_id": 1, "segmentation": [[1, 1, 10]]},
        {"id": 3, "image_id": 1, "segmentation": wrong_size_rle},
        {"id": 4, "image_id": 1, "segmentation": [[3, 3, 3, 3, 3, 3]]},
        {"id": 5, "image_id": 1, "segmentation": "nonsense"},
        {"id": 6, "image_id": 99, "segmentation": [[1, 1, 10, 1, 10, 10]]},
        {"id": 7, "image_id": 6, "segmentation": {"size": [1, 1], "counts": [0, 1]}},
    ]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations}))
    report = import_coco(path, images, tmp_path / "out")

    assert report.imported == 2 and sorted(read_samples(tmp_path / "out")) == ["good", "one"]
    assert skipped(report) == {
        "missing.png": "missing_file",
        "empty.jpg": "empty_file",
        "garbage.jpg": "undecodable_image",
        "wrong_size.png": "size_mismatch",
        "instances.json": "bad_image_entry",
    }
    dropped = {s.source.rsplit(" ", 1)[-1]: s.kind for s in report.skipped_annotations}
    assert dropped == {
        "2": "bad_segmentation",
        "3": "rle_size",
        "4": "empty_mask",
        "5": "bad_segmentation",
        "6": "unknown_image",
    }
    on_disk = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert on_disk["skipped"] == 5 and on_disk["skipped_by_kind"]["missing_file"] == 1
    assert all("missing.png" in s["reason"] for s in on_disk["skipped_files"] if s["kind"] == "missing_file")


def test_polygon_vertices_far_outside_the_image_are_skipped_not_a_crash(tmp_path):
    """pycocotools segfaults on a vertex at 1e12 or 4e8 and takes gigabytes at 3e7: such an annotation is
    skipped and named; the command goes on (run as a command: a crash would end this test, not the suite)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(image_bytes(random_pixels(96, 160)))
    far = [[0, 0, 1e12, 0, 1e12, 1e12], [0, 0, 4e8, 0, 4e8, 4e8], [0, 0, 3e7, 0, 3e7, 3e7], [-1e9, 0, 5, 5, 0, 5],
           [0, 0, 10, 0, 10, 2e9]]
    near = [[-3, -2, 170, -2, 170, 100, -3, 100]]  # a little outside: rasterised as pycocotools does
    annotations = [{"id": i + 1, "image_id": 1, "segmentation": [polygon]} for i, polygon in enumerate(far)]
    annotations.append({"id": 9, "image_id": 1, "segmentation": near})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": 96, "width": 160}],
                                "annotations": annotations}))
    done = subprocess.run([sys.executable, "-m", "sam_engine.data.importers", "coco", f"annotations={path}",
                           f"images={tmp_path / 'images'}", f"out_dir={tmp_path / 'out'}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    dropped = report["skipped_annotation_list"]
    assert sorted(int(d["source"].rsplit(" ", 1)[-1]) for d in dropped) == [1, 2, 3, 4, 5]
    assert all(d["kind"] == "bad_segmentation" and "outside the 160 x 96 image" in d["reason"] for d in dropped)
    [(_, record)] = read_samples(tmp_path / "out").values()
    assert decode_masks([a["segmentation"] for a in record["annotations"]], (96, 160)).all()  # the near one


def test_coco_file_names_read_only_regular_files_inside_the_images_folder(tmp_path):
    images, secret = tmp_path / "images", tmp_path / "secret"
    images.mkdir()
    secret.mkdir()
    (secret / "x.png").write_bytes(image_bytes(random_pixels(4, 4)))
    (images / "good.png").write_bytes(image_bytes(random_pixels(4, 4)))
    (images / "link.png").symlink_to(secret / "x.png")  # a link out of the folder
    (images / "sub").mkdir()
    os.mkfifo(images / "pipe.png")  # would block a reader forever
    names = ["good.png", "../secret/x.png", str(secret / "x.png"), "/dev/zero", "pipe.png", "link.png", "sub"]
    entries = [{"id": i + 1, "file_name": name, "height": 4, "width": 4} for i, name in enumerate(names)]
    (tmp_path / "coco.json").write_text(json.dumps({"images": entries, "annotations": []}))
    report = import_coco(tmp_path / "coco.json", images, tmp_path / "out")
    kinds = {s.source.removeprefix(str(images) + "/"): s.kind for s in report.skipped}
    assert kinds == {"../secret/x.png": "outside_folder", str(secret / "x.png"): "outside_folder",
                     "/dev/zero": "outside_folder", "pipe.png": "not_a_file", "link.png": "outside_folder",
                     "sub": "not_a_file"}
    assert report.imported == 1 and sorted(read_samples(tmp_path / "out")) == ["good"]


def test_coco_second_image_entry_of_an_id_is_skipped_and_its_annotations_stay_with_the_first(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        (images / name).write_bytes(image_bytes(random_pixels(20, 30)))
    entries = [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
               {"id": 1, "file_name": "b.png", "height": 20, "width": 30}]
    annotations = [{"id": 1, "image_id": 1, "segmentation": [[1, 1, 10, 1, 10, 10]]}]
    (tmp_path / "coco.json").write_text(json.dumps({"images": entries, "annotations": annotations}))
    report = import_coco(tmp_path / "coco.json", images, tmp_path / "out")
    assert [(s.kind, "images[1]" in s.source) for s in report.skipped] == [("duplicate_image_id", True)]
    samples = read_samples(tmp_path / "out")
    assert sorted(samples) == ["a"] and len(samples["a"][1]["annotations"]) == 1


def test_coco_rerun_resumes_without_duplicates(tmp_path, coco_dataset):
    annotations, images = coco_dataset
    import_coco(annotations, images, tmp_path / "out")
    again = import_coco(annotations, images, tmp_path / "out")
    assert again.imported == 0 and again.already_present == 2
    assert len(read_samples(tmp_path / "out")) == 2


def test_coco_file_that_is_not_json_or_not_utf8_is_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not JSON"):
        import_coco(bad, tmp_path, tmp_path / "out")
    bad.write_bytes(b'{"images": ["\xff\xfe"]}')
    with pytest.raises(ValueError, match="not UTF-8"):
        import_coco(bad, tmp_path, tmp_path / "out")


# --- SA-1B ------------------------------------------------------------------------------------


def sa1b_sample(index: int, height: int = 24, width: int = 36) -> tuple[str, bytes, dict]:
    masks = np.zeros((3, height, width), dtype=bool)
    masks[0, 2:10, 3:20] = True
    masks[1, 5:, :7] = True
    masks[2] = blob_mask(height, width) | masks[0]
    key = f"sa_{index}"
    record = make_record(index, width, height, f"{key}.jpg", make_annotations(masks))
    return key, image_bytes(random_pixels(height, width), "JPEG", quality=90), record


def pair_members(key: str, jpg: bytes, record: dict | bytes) -> list[tuple[str, bytes]]:
    data = record if isinstance(record, bytes) else json.dumps(record).encode()
    return [(f"{key}.jpg", jpg), (f"{key}.json", data)]


def test_sa1b_tars_and_loose_files_import_unchanged(tmp_path):
    samples = [sa1b_sample(i) for i in range(1, 6)]
    write_raw_tar(tmp_path / "sa_000000.tar", [m for s in samples[:2] for m in pair_members(*s)])
    write_raw_tar(tmp_path / "sa_000001.tar", [m for s in samples[2:4] for m in pair_members(*s)])
    loose = tmp_path / "loose"
    loose.mkdir()
    for name, data in pair_members(*samples[4]):
        (loose / name).write_bytes(data)

    report = import_sa1b([str(tmp_path / "sa_{000000..000001}.tar"), str(loose)], tmp_path / "out")
    assert report.imported == 5 and not report.skipped
    imported = read_samples(tmp_path / "out")
    for key, jpg, record in samples:
        assert imported[key] == (jpg, record)


def test_sa1b_stems_that_cannot_name_a_sample_are_skipped_and_the_import_goes_on(tmp_path):
    members = []
    for key, (_, jpg, record) in zip(["sa 1", "__sa2", "sa_3", "\tsa4"], map(sa1b_sample, range(1, 5)), strict=True):
        members += pair_members(key, jpg, record)
    write_raw_tar(tmp_path / "sa_000000.tar", members)
    report = import_sa1b(tmp_path / "sa_000000.tar", tmp_path / "out")
    assert sorted((s.source.split(":")[-1], s.kind) for s in report.skipped) == [
        ("\tsa4", "bad_key"), ("__sa2", "bad_key"), ("sa 1", "bad_key")]
    assert sorted(read_samples(tmp_path / "out")) == ["sa_3"]
    assert import_sa1b(tmp_path / "sa_000000.tar", tmp_path / "out").already_present == 1  # a rerun too


def test_sa1b_release_tars_are_read_in_place(tmp_path):
    samples = [sa1b_sample(i) for i in range(1, 4)]
    write_raw_tar(tmp_path / "sa_000000.tar", [m for s in samples for m in pair_members(*s)])
    urls = list_shards(str(tmp_path / "sa_{000000..000000}.tar"))
    assert [(k, j, r) for k, j, r in iter_sa1b(urls)] == samples


def test_sa1b_bad_samples_are_reported_and_the_rest_imported(tmp_path):
    good = sa1b_sample(1)
    _, jpg, record = sa1b_sample(2)
    wrong_size = json.loads(json.dumps(record))
    wrong_size["annotations"][0]["segmentation"]["size"] = [10, 10]
    bad_runs = json.loads(json.dumps(record))
    bad_runs["annotations"][1]["segmentation"]["counts"] = encode_masks(np.ones((1, 50, 50), bool))[0][
        "counts"
    ]
    with_empty = json.loads(json.dumps(record))
    with_empty["annotations"][2].update(area=0, segmentation=encode_masks(np.zeros((1, 24, 36), bool))[0])
    members = [
        *pair_members(*good),
        *pair_members("sa_3", jpg, b"{not json"),
        *pair_members("sa_4", jpg, '{"image": "\u00e9"}'.encode("latin-1")),
        *pair_members("sa_5", jpg, wrong_size),
        *pair_members("sa_6", jpg, bad_runs),
        *pair_members("sa_7", b"", record),
        ("sa_8.jpg", jpg),
        ("readme.txt", b"hello"),
        *pair_members("sa_9", jpg, with_empty),
        *pair_members("sa_1", good[1], good[2]),
    ]
    tar = write_raw_tar(tmp_path / "sa_000000.tar", members)
    truncated = tmp_path / "sa_000001.tar"
    full = write_raw_tar(tmp_path / "full.tar", pair_members(*sa1b_sample(10)) + pair_members(*sa1b_sample(11)))
    truncated.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    full.unlink()
    empty_tar = tmp_path / "sa_000002.tar"
    empty_tar.write_bytes(b"")

    report = import_sa1b([str(tar), str(truncated), str(empty_tar)], tmp_path / "out")
    kinds = {
        s.source.split(":")[-1] if ":" in s.source else Path(s.source).name: s.kind for s in report.skipped
    }
    assert kinds == {
        "sa_3": "bad_json",
        "sa_4": "not_utf8",
        "sa_5": "invalid_record",
        "sa_6": "bad_rle",
        "sa_7": "empty_file",
        "sa_8": "unpaired",
        "readme.txt": "unexpected_member",
        "sa_1": "duplicate_key",
        "sa_000001.tar": "bad_tar",
        "sa_000002.tar": "bad_tar",
    }
    assert [s.kind for s in report.skipped_annotations] == ["empty_mask"]
    imported = read_samples(tmp_path / "out")
    assert sorted(imported) == ["sa_1", "sa_10", "sa_9"]  # sa_10 came before the truncation
    assert len(imported["sa_9"][1]["annotations"]) == 2


# --- folders ----------------------------------------------------------------------------------


def exif_rotated_jpeg(pixels: np.ndarray) -> bytes:
    """JPEG stored as ``pixels`` with EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return image_bytes(pixels, "JPEG", exif=exif.tobytes(), quality=95)


def test_folder_import_converts_modes_and_reports_bad_files(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rgb = random_pixels(12, 16)
    grey = RNG.integers(0, 256, (12, 16), dtype=np.uint8)
    sixteen = np.full((6, 5), 65535, dtype=np.uint16)
    sixteen[0, 0] = 257 * 10
    (folder / "rgb.jpg").write_bytes(image_bytes(rgb, "JPEG"))
    (folder / "grey.png").write_bytes(image_bytes(grey))
    (folder / "rgba.png").write_bytes(image_bytes(np.dstack([rgb, np.full((12, 16), 7, np.uint8)])))
    (folder / "deep.png").write_bytes(image_bytes(sixteen))
    (folder / "sub" / "rotated.jpg").write_bytes(exif_rotated_jpeg(random_pixels(20, 40)))
    (folder / "sub" / "bitmap.bmp").write_bytes(image_bytes(rgb, "BMP"))
    (folder / "scan.TIF").write_bytes(image_bytes(rgb, "TIFF"))
    (folder / "web.webp").write_bytes(image_bytes(rgb, "WEBP", lossless=True))
    (folder / "dot.png").write_bytes(image_bytes(random_pixels(1, 1)))
    (folder / "long.png").write_bytes(image_bytes(random_pixels(1, 10_000)))
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "broken.png").write_bytes(image_bytes(rgb)[:40])
    (folder / "notes.txt").write_text("not an image")

    report = import_folder(folder, tmp_path / "out")
    assert skipped(report) == {
        "zero.jpg": "empty_file",
        "broken.png": "undecodable_image",
        "notes.txt": "unsupported_type",
    }
    samples = read_samples(tmp_path / "out")
    assert sorted(samples) == sorted(
        ["rgb", "grey", "rgba", "deep", "sub_rotated", "sub_bitmap", "scan", "web", "dot", "long"]
    )
    assert all(record["annotations"] == [] for _, record in samples.values())
    assert samples["rgb"][0] == (folder / "rgb.jpg").read_bytes()
    assert samples["grey"][0] == (folder / "grey.png").read_bytes()
    assert samples["sub_rotated"][0] == (folder / "sub" / "rotated.jpg").read_bytes()
    assert samples["sub_rotated"][1]["image"]["file_name"] == "sub/rotated.jpg"

    def size(key):
        return samples[key][1]["image"]["height"], samples[key][1]["image"]["width"]

    assert size("sub_rotated") == (40, 20) and size("dot") == (1, 1) and size("long") == (1, 10_000)
    assert decode_image(samples["sub_rotated"][0]).shape == (40, 20, 3)
    for key in ("rgba", "deep", "sub_bitmap", "scan", "web"):  # converted to 8-bit RGB PNG
        assert samples[key][0][:4] == b"\x89PNG" and Image.open(io.BytesIO(samples[key][0])).mode == "RGB"
    assert np.array_equal(decode_image(samples["rgba"][0]), rgb)
    assert np.array_equal(decode_image(samples["sub_bitmap"][0]), rgb)
    deep = decode_image(samples["deep"][0])
    assert deep[0, 0].tolist() == [10, 10, 10] and deep[1, 1].tolist() == [255, 255, 255]


def test_folder_import_skips_images_over_max_pixels(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "small.png").write_bytes(image_bytes(random_pixels(4, 4)))
    (folder / "long.png").write_bytes(image_bytes(random_pixels(1, 10_000)))
    report = import_folder(folder, tmp_path / "out", max_pixels=1000)
    assert skipped(report) == {"long.png": "too_large"} and report.imported == 1


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (PIL refuses to open beyond 2 x 89M)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_skipped_as_too_large_by_every_importer_and_named_by_predict(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(bomb_png())
    (folder / "fine.png").write_bytes(image_bytes(random_pixels(4, 4)))
    report = import_folder(folder, tmp_path / "folder_out")  # also the labeller's folder mode
    assert skipped(report) == {"bomb.png": "too_large"} and report.imported == 1
    assert sorted(read_samples(tmp_path / "folder_out")) == ["fine"]

    key, jpg, record = sa1b_sample(1)
    bomb_record = make_record(2, 20_000, 20_000, "sa_2.png", [])
    write_raw_tar(tmp_path / "sa_000000.tar", [*pair_members(key, jpg, record), ("sa_2.png", bomb_png()),
                                               ("sa_2.json", json.dumps(bomb_record).encode())])
    report = import_sa1b(tmp_path / "sa_000000.tar", tmp_path / "sa1b_out")
    assert [(s.source.split(":")[-1], s.kind) for s in report.skipped] == [("sa_2", "too_large")]
    assert sorted(read_samples(tmp_path / "sa1b_out")) == ["sa_1"]

    entries = [{"id": 1, "file_name": "bomb.png", "height": 20_000, "width": 20_000},
               {"id": 2, "file_name": "fine.png", "height": 4, "width": 4}]
    (tmp_path / "coco.json").write_text(json.dumps({"images": entries, "annotations": []}))
    report = import_coco(tmp_path / "coco.json", folder, tmp_path / "coco_out")
    assert skipped(report) == {"bomb.png": "too_large"} and report.imported == 1

    done = subprocess.run([sys.executable, "-m", "sam_engine.predict", f"image={folder / 'bomb.png'}",
                           f"out={tmp_path / 'overlay.png'}"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and f"{folder / 'bomb.png'}: Image size" in done.stderr
    assert "DecompressionBombError" not in done.stderr.splitlines()[-1]


def test_folder_import_into_its_own_folder_is_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(image_bytes(random_pixels(4, 4)))
    with pytest.raises(ValueError, match=f"out_dir={re.escape(str(tmp_path))} is the folder of input"):
        import_folder(tmp_path, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    report = import_folder(tmp_path, tmp_path / "shards")  # inside it: its own files are never read back
    assert report.imported == 1 and import_folder(tmp_path, tmp_path / "shards").already_present == 1


def test_coco_and_sa1b_imports_into_their_inputs_folder_are_refused(tmp_path):
    """The shards would sit among the images (COCO) or be read back as SA-1B tars by a rerun (SA-1B)."""
    (tmp_path / "coco.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match=f"out_dir={re.escape(str(tmp_path))} is the folder of images"):
        import_coco(tmp_path / "coco.json", tmp_path, tmp_path)
    with pytest.raises(ValueError, match=f"out_dir={re.escape(str(tmp_path))} is the folder of inputs"):
        import_sa1b([tmp_path / "elsewhere", tmp_path / "sa_{000000..000001}.tar"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco.json"]


@pytest.mark.parametrize(("override", "message"), [("shard_size=abc", "shard_size='abc': expected an integer >= 1"),
                                                   ("max_pixels=0", "max_pixels=0: expected an integer >= 1")])
def test_an_importer_refuses_a_wrong_size_by_key(tmp_path, override, message):
    (tmp_path / "in").mkdir()
    result = subprocess.run([sys.executable, "-m", "sam_engine.data.importers", "folder", "input=in", "out_dir=out",
                             override], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and message in result.stderr and not (tmp_path / "out").exists()


def test_folder_command_line_imports(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(random_pixels(3, 3)))
    result = subprocess.run(
        [sys.executable, "-m", "sam_engine.data.importers", "folder", "input=in", "out_dir=out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "imported 1 images" in result.stdout and sorted(read_samples(tmp_path / "out")) == ["a"]
