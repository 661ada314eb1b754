"""``python -m sam_engine.label``: pseudo-labelling shards and image folders into output shards.

The main path (label, rerun, verify, a wrong key) runs the real command line in a subprocess; the other
cases call the command's ``label`` in-process with a config composed from ``conf/label.yaml`` (the same
code without the interpreter start), and a few call the library pieces directly.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image
from shard_helpers import encode_image, make_sample, tar_keys_in, write_raw_tar

from sam_engine.data.images import decode_image
from sam_engine.data.records import make_record, validate_record
from sam_engine.data.samples import Skipped
from sam_engine.data.shards import MANIFEST, MANIFEST_FORMAT, read_manifest
from sam_engine.data.synthetic.dataset import ensure_synthetic_dataset
from sam_engine.label import run as label_command
from sam_engine.label.inputs import list_input_shards, task_block
from sam_engine.label.labeller import Labeller, input_samples
from sam_engine.metrics.proposals import ProposalQuality

CONF = Path(__file__).resolve().parents[1] / "sam_engine" / "conf"
SLURM_ARRAY_VARIABLES = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT")
# 64 clicks per image, and the thresholds fitted to the disk model (fixture below): its masks pass them.
AMG = {"amg.points_per_side": 8}


@pytest.fixture(autouse=True, scope="module")
def fitted_thresholds(disk_thresholds):
    AMG.update({f"amg.{key}": value for key, value in disk_thresholds.items()})


# --- helpers ----------------------------------------------------------------------------------


def overrides(export: Path, source: Path, output: Path, **extra) -> list[str]:
    values = {"input": source, "output": output, "checkpoint": export, **AMG, **extra}
    return [f"{key}={value}" for key, value in values.items()]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in SLURM_ARRAY_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "sam_engine.label", *args, f"hydra.run.dir={cwd / 'hydra'}"],
        capture_output=True, text=True, timeout=600, env=env, cwd=cwd,
    )


def compose_label(args: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("label", overrides=args)


def label_in_process(export: Path, source: Path, output: Path, **extra) -> dict:
    """The entry point's ``main`` on a composed config; returns the task's summary dict."""
    return label_command.label(compose_label(overrides(export, source, output, progress=False, **extra)))


def manifest_keys(output: Path) -> list[str]:
    return [key for entry in read_manifest(output)["shards"].values() for key in entry["keys"]]


def read_output(output: Path) -> dict[str, tuple[str, bytes, dict]]:
    """key -> (output shard name, image bytes, record) of every sample of the manifest's shards."""
    samples: dict[str, tuple[str, bytes, dict]] = {}
    for name in read_manifest(output)["shards"]:
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(output / name) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for key, files in members.items():
            assert key not in samples, f"key {key} in two output shards"
            image = files.get("jpg", files.get("png"))
            samples[key] = (name, image, json.loads(files["json"]))
    return samples


def input_keys(source: Path) -> dict[str, list[str]]:
    """input shard name -> its keys, from a synthetic shard directory's manifest."""
    return {name[:-4]: entry["keys"] for name, entry in read_manifest(source)["shards"].items()}


def summary_of(output: Path, task: int = 0) -> dict:
    return json.loads((output / "summaries" / f"task-{task:06d}.json").read_text())


def file_states(output: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in output.glob("*.tar")}


@functools.cache
def model_id_of(export: Path) -> str:
    return f"{export}@{hashlib.sha256((Path(export) / 'sam.pth').read_bytes()).hexdigest()[:12]}"


def check_record(record: dict, image: bytes, export: Path, stage: int = 3) -> None:
    """A valid SA-1B record of the stored image's size, every annotation automatic with its provenance."""
    validate_record(record)
    height, width = decode_image(image).shape[:2]
    assert (record["image"]["height"], record["image"]["width"]) == (height, width)
    for annotation in record["annotations"]:
        assert annotation["source"] == "auto" and annotation["stage"] == stage
        assert annotation["model"] == model_id_of(export)
        assert annotation["segmentation"]["size"] == [height, width] and annotation["area"] > 0


def raw_shard_dir(directory: Path, shards: dict[str, list[tuple[str, bytes]]]) -> Path:
    """A shard directory of raw tars (no check of ShardWriter) and a manifest listing them in order."""
    directory.mkdir(parents=True)
    for name, members in shards.items():
        write_raw_tar(directory / f"{name}.tar", members)
    manifest = {"format": MANIFEST_FORMAT, "shards": {f"{name}.tar": {} for name in shards}}
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return directory


def sample_members(key: str, image: bytes, record: dict | bytes, ext: str = "png") -> list[tuple[str, bytes]]:
    data = record if isinstance(record, bytes) else json.dumps(record).encode()
    return [(f"{key}.{ext}", image), (f"{key}.json", data)]


def good_members(key: str, seed: int, size: int = 64) -> list[tuple[str, bytes]]:
    """A random image with ground-truth rectangles (so the summary has a quality block)."""
    image, record, _ = make_sample(key, height=size, width=size, num_masks=3, seed=seed)
    return sample_members(key, image, record)


@pytest.fixture(autouse=True)
def no_slurm_array(monkeypatch):
    for name in SLURM_ARRAY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """6 synthetic 128-px scenes (with ground truth) in 3 shards of 2."""
    root = tmp_path_factory.mktemp("pool")
    return ensure_synthetic_dataset(root / "pool", num_images=6, seed=5, image_size=128, shard_size=2)


@pytest.fixture(scope="module")
def labelled(disk_export, pool, tmp_path_factory):
    """The pool labelled once by the command line: (output dir, process, summary JSON right after)."""
    root = tmp_path_factory.mktemp("labelled")
    output = root / "out"
    result = run_cli(*overrides(disk_export, pool, output), cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result, summary_of(output)


# --- the command line -------------------------------------------------------------------------


def test_label_writes_one_output_shard_per_input_shard(disk_export, pool, labelled):
    output, result, summary = labelled
    inputs = input_keys(pool)
    manifest = read_manifest(output)["shards"]
    assert list(manifest) == [f"{name}-000000.tar" for name in inputs]
    assert sorted(p.name for p in output.glob("*.tar")) == sorted(manifest)
    for name, keys in inputs.items():  # every input key exactly once, in its input shard's output shard
        assert manifest[f"{name}-000000.tar"]["keys"] == keys
    assert sorted(tar_keys_in(output / name for name in manifest)) == sorted(k for ks in inputs.values() for k in ks)

    samples = read_output(output)
    for key, (_, image, record) in samples.items():
        check_record(record, image, disk_export)
        assert (record["image"]["width"], record["image"]["height"]) == (128, 128)
        assert record["image"]["image_id"] == key
    masks = sum(len(record["annotations"]) for _, _, record in samples.values())
    assert masks > 6 * 5, "the disk model finds many masks per image"
    assert masks == sum(entry["annotations"] for entry in manifest.values())

    assert summary["task_index"] == 0 and summary["num_tasks"] == 1 and summary["complete"] is True
    assert summary["shards_labelled"] == list(inputs) and summary["shards_already_done"] == []
    assert summary["images"] == 6 and summary["masks"] == masks
    assert summary["masks_per_image"] == pytest.approx(masks / 6)
    assert summary["seconds"] > 0 and summary["images_per_second"] == pytest.approx(6 / summary["seconds"])
    assert summary["skipped_images"] == [] and summary["unreadable_shards"] == []
    quality = summary["quality"]
    assert set(quality) == set(ProposalQuality().summary())
    assert quality["images"] == 6 and quality["pred_masks"] == masks
    assert quality["gt_masks"] == sum(entry["annotations"] for entry in read_manifest(pool)["shards"].values())
    assert all(0 <= quality[k] <= 1 for k in quality if k not in ("images", "pred_masks", "gt_masks"))
    log = result.stdout + result.stderr
    assert "labelled 6 images" in log
    assert re.search(r"labelled images 6/6 \(100%\), [\d.]+ images/s, [\d.]+ masks/image", log)  # a line


def test_rerun_skips_every_finished_shard(disk_export, pool, labelled):
    output, _, _ = labelled
    before, manifest_before = file_states(output), (output / MANIFEST).read_bytes()
    result = run_cli(*overrides(disk_export, pool, output), cwd=output.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(output)
    assert summary["shards_already_done"] == list(input_keys(pool)) and summary["shards_labelled"] == []
    assert summary["images"] == 0 and summary["complete"] is True
    assert file_states(output) == before and (output / MANIFEST).read_bytes() == manifest_before
    keys = manifest_keys(output)
    assert len(keys) == len(set(keys)) == 6


def test_verify_reports_complete_and_incomplete_output(pool, labelled, tmp_path, capsys):
    output, _, _ = labelled
    report = label_command.label(
        compose_label([f"input={pool}", f"output={output}", "checkpoint=unused", "verify=true"]))
    assert report["input_shards"] == report["done"] == 3 and report["missing"] == []
    assert report["images"] == 6 and report["duplicate_keys"] == 0
    assert report["masks"] == sum(e["annotations"] for e in read_manifest(output)["shards"].values())
    assert json.loads(capsys.readouterr().out) == report

    # An output that lacks one shard: exit status 1 and the shard named (the real command line).
    partial = tmp_path / "partial"
    shutil.copytree(output, partial)
    manifest = json.loads((partial / MANIFEST).read_text())
    del manifest["shards"]["synthetic-000001-000000.tar"]
    (partial / MANIFEST).write_text(json.dumps(manifest))
    (partial / "synthetic-000001-000000.tar").unlink()
    result = run_cli(f"input={pool}", f"output={partial}", "checkpoint=unused", "verify=true", cwd=tmp_path)
    assert result.returncode == 1
    printed = json.loads(result.stdout[result.stdout.index("{"):])
    assert printed["missing"] == ["synthetic-000001"] and printed["done"] == 2 and printed["images"] == 4


def test_wrong_config_key_is_a_hydra_error(disk_export, pool, tmp_path):
    result = run_cli(*overrides(disk_export, pool, tmp_path / "out"), "amg.points_per_sid=8", cwd=tmp_path)
    assert result.returncode != 0
    assert "amg.points_per_sid" in result.stderr and "Could not override" in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_fails_before_any_output(pool, tmp_path):
    missing = tmp_path / "no_such_export"
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(missing))}.*sam.pth"):
        label_in_process(missing, pool, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_output_in_the_inputs_folder_and_a_short_side_below_one_are_refused_before_any_work(
        disk_export, pool, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(encode_image(np.zeros((8, 8, 3), np.uint8)))
    tars = str(pool / "*.tar")
    for source, output in ((pool, pool), (photos, photos), (tars, pool)):  # the last would overwrite its input
        with pytest.raises(ValueError, match=f"output={re.escape(str(output))} is the folder of input"):
            label_in_process(disk_export, source, output)
    assert sorted(p.name for p in photos.iterdir()) == ["a.png"]
    for bad in (0, -5):
        with pytest.raises(ValueError, match=f"max_short_side={bad}: expected a positive number"):
            label_in_process(disk_export, pool, tmp_path / "out", max_short_side=bad)
    with pytest.raises(ValueError, match="images_per_shard=0: expected an integer >= 1"):
        label_in_process(disk_export, photos, tmp_path / "out", images_per_shard=0)
    assert not (tmp_path / "out").exists()


# --- killed and resumed -----------------------------------------------------------------------


def test_killed_mid_shard_publishes_nothing_partial_and_a_rerun_completes(disk_export, tmp_path, monkeypatch):
    source = ensure_synthetic_dataset(tmp_path / "in", num_images=4, seed=6, image_size=64, shard_size=2)
    output = tmp_path / "out"
    original = Labeller.label_sample
    calls = []

    def killed_on_the_second_image_of_the_second_shard(self, sample, writer, summary):
        calls.append(sample.key)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(self, sample, writer, summary)

    monkeypatch.setattr(Labeller, "label_sample", killed_on_the_second_image_of_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        label_in_process(disk_export, source, output)
    monkeypatch.setattr(Labeller, "label_sample", original)

    assert calls[3] == input_keys(source)["synthetic-000001"][1]
    first, second = (f"{name}-000000.tar" for name in input_keys(source))
    assert list(read_manifest(output)["shards"]) == [first]
    expected = (first, MANIFEST, f"{MANIFEST}.lock")
    leftovers = [p.name for p in output.iterdir() if p.is_file() and p.name not in expected]
    assert all(".tmp-" in name for name in leftovers), leftovers
    assert summary_of(output)["shards_labelled"] == ["synthetic-000000"]
    # What a hard kill (SIGKILL) leaves behind: the temporary file of the shard in progress.
    (output / f"{second}.tmp-999999").write_bytes(b"half a tar")

    summary = label_in_process(disk_export, source, output)
    assert summary["shards_already_done"] == ["synthetic-000000"] and summary["shards_labelled"] == ["synthetic-000001"]
    assert summary["images"] == 2 and summary["complete"]
    assert sorted(p.name for p in output.glob("*.tar*")) == [first, second]
    keys = manifest_keys(output)
    assert sorted(keys) == sorted(k for ks in input_keys(source).values() for k in ks) and len(set(keys)) == 4

    # Killed between publishing a shard and listing it in the manifest: the rerun lists it, labels nothing.
    states = file_states(output)
    manifest = json.loads((output / MANIFEST).read_text())
    del manifest["shards"][second]
    (output / MANIFEST).write_text(json.dumps(manifest))
    summary = label_in_process(disk_export, source, output)
    assert summary["shards_labelled"] == [] and summary["images"] == 0 and summary["skipped_images"] == []
    assert sorted(summary["shards_already_done"]) == ["synthetic-000000", "synthetic-000001"]
    assert list(read_manifest(output)["shards"]) == [first, second] and file_states(output) == states


# --- SLURM array tasks ------------------------------------------------------------------------


def test_tasks_label_disjoint_blocks_whose_union_is_everything(disk_export, tmp_path):
    source = ensure_synthetic_dataset(tmp_path / "in", num_images=5, seed=7, image_size=64, shard_size=1)
    output = tmp_path / "out"
    inputs = input_keys(source)
    blocks = []
    for task in range(3):
        summary = label_in_process(disk_export, source, output, task_index=task, num_tasks=3)
        assert summary == summary_of(output, task)
        assert summary["task_index"] == task and summary["num_tasks"] == 3 and summary["complete"]
        assert summary["shards_labelled"] == summary["input_shards"]
        blocks.append(summary["input_shards"])
    assert [len(b) for b in blocks] == [2, 1, 2]
    assert [name for block in blocks for name in block] == list(inputs)  # contiguous, disjoint, all
    keys = manifest_keys(output)
    assert sorted(keys) == sorted(k for ks in inputs.values() for k in ks) and len(set(keys)) == 5
    assert sorted(read_manifest(output)["shards"]) == sorted(f"{name}-000000.tar" for name in inputs)
    report = label_command.label(compose_label([f"input={source}", f"output={output}", "checkpoint=x", "verify=true"]))
    assert report["done"] == 5 and report["missing"] == [] and report["duplicate_keys"] == 0


def test_task_block_and_slurm_array_defaults(disk_export, tmp_path, monkeypatch):
    shards = list(range(5))
    assert [task_block(shards, i, 3) for i in range(3)] == [[0, 1], [2], [3, 4]]
    blocks = [task_block(shards, i, 7) for i in range(7)]  # more tasks than shards: some have none
    assert [s for block in blocks for s in block] == shards and {len(block) for block in blocks} == {0, 1}
    for bad in [(3, 3), (-1, 3), (0, 0)]:
        with pytest.raises(ValueError, match="task_index"):
            task_block(shards, *bad)

    assert label_command.array_task(None, None) == (0, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert label_command.array_task(None, None) == (2, 4)
    assert label_command.array_task(1, None) == (1, 4) and label_command.array_task(None, 9) == (2, 9)
    assert label_command.array_task(0, 1) == (0, 1)

    source = ensure_synthetic_dataset(tmp_path / "in", num_images=2, seed=8, image_size=32, shard_size=1)
    with pytest.raises(ValueError, match="task_index=3, num_tasks=3"):
        label_in_process(disk_export, source, tmp_path / "out", task_index=3, num_tasks=3)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "9")  # 9 - 5 = 4 of 4 tasks
    with pytest.raises(ValueError, match="task_index=4, num_tasks=4"):
        label_in_process(disk_export, source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- bad input --------------------------------------------------------------------------------


def test_bad_samples_and_shards_are_skipped_with_their_reasons(disk_export, tmp_path):
    png, _, _ = make_sample("x", height=64, width=64)
    _, liar_record, _ = make_sample("liar", height=32, width=32, num_masks=2, seed=9)
    big = np.broadcast_to(np.linspace(0, 255, 1600, dtype=np.uint8)[None, :, None], (2000, 1600, 3))
    dot = encode_image(np.full((1, 1, 3), 200, np.uint8))
    # A shard cut in the middle of its third image: its first sample is labelled before the reader fails.
    whole = write_raw_tar(tmp_path / "whole.tar", [m for i in range(3) for m in good_members(f"cut{i}", i)])
    with tarfile.open(whole) as tar:
        member = tar.getmember("cut2.png")
        cut_at = member.offset_data + member.size // 2
    source = raw_shard_dir(tmp_path / "in", {
        "mixed": [
            *good_members("good0", 3),
            *sample_members("broken", png[:60], make_record("broken", 64, 64, "broken.png", [])),
            *sample_members("badjson", png, b'{"image": {"image_id": "badjson", '),
            *sample_members("liar", png, liar_record),  # the record is of a 32 x 32 image
            *sample_members("dot", dot, make_record("dot", 1, 1, "dot.png", [])),
            *sample_members("big", encode_image(np.ascontiguousarray(big), "JPEG", quality=90),
                            make_record("big", 1600, 2000, "big.jpg", []), ext="jpg"),
            *good_members("good1", 4),
        ],
        "cut": [],
        "after": good_members("after0", 5),
    })
    (source / "cut.tar").write_bytes(whole.read_bytes()[:cut_at])

    output = tmp_path / "out"
    summary = label_in_process(disk_export, source, output)

    assert summary["shards_labelled"] == ["mixed", "after"] and summary["complete"] is False
    [unreadable] = summary["unreadable_shards"]
    assert unreadable["shard"] == "cut"
    assert "cut.tar" in unreadable["reason"] and "unreadable tar" in unreadable["reason"]
    reasons = {entry["source"].rpartition(":")[2]: entry["reason"] for entry in summary["skipped_images"]}
    assert sorted(reasons) == ["badjson", "broken", "liar"]
    mixed = source / "mixed.tar"
    assert {entry["source"] for entry in summary["skipped_images"]} == {f"{mixed}:{key}" for key in reasons}
    assert "mixed.tar:broken" in reasons["broken"] and "cannot decode image" in reasons["broken"]
    assert "mixed.tar:badjson: json:" in reasons["badjson"]
    assert "mixed.tar:liar" in reasons["liar"] and "32x32" in reasons["liar"] and "64x64" in reasons["liar"]

    assert sorted(read_manifest(output)["shards"]) == ["after-000000.tar", "mixed-000000.tar"]
    assert sorted(p.name for p in output.iterdir() if ".tar" in p.name) == ["after-000000.tar", "mixed-000000.tar"]
    samples = read_output(output)
    assert sorted(samples) == ["after0", "big", "dot", "good0", "good1"]
    assert summary["images"] == 5, "images of the unreadable shard are not counted"
    assert summary["masks"] == sum(len(record["annotations"]) for _, _, record in samples.values())
    assert summary["quality"]["images"] == 3  # the images with ground truth and their own size
    for _, image, record in samples.values():
        check_record(record, image, disk_export)
    assert (samples["dot"][2]["image"]["width"], samples["dot"][2]["image"]["height"]) == (1, 1)
    _, image, record = samples["big"]
    assert (record["image"]["width"], record["image"]["height"]) == (1500, 1875)
    with Image.open(io.BytesIO(image)) as stored:
        assert stored.format == "JPEG" and stored.size == (1500, 1875)



def test_an_image_where_nothing_passes_gets_an_empty_annotation_list(disk_export, tmp_path):
    source = ensure_synthetic_dataset(tmp_path / "in", num_images=1, seed=9, image_size=64, shard_size=1)
    tar = next(source.glob("*.tar"))
    output = tmp_path / "out"
    summary = label_in_process(disk_export, tar, output, **{"amg.pred_iou_thresh": 0.999})
    assert summary["images"] == 1 and summary["masks"] == 0 and summary["masks_per_image"] == 0
    assert summary["quality"]["pred_masks"] == 0 and summary["quality"]["precision_iou50"] is None
    [(key, (name, image, record))] = read_output(output).items()
    assert key == "syn9_0000000" and name == f"{tar.stem}-000000.tar"
    check_record(record, image, disk_export)
    assert record["annotations"] == [] and record["image"]["width"] == 64


# --- an image folder --------------------------------------------------------------------------


def exif_rotated_jpeg(pixels: np.ndarray) -> bytes:
    """JPEG stored as ``pixels`` with EXIF orientation 6 (displayed rotated by 90 degrees)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode_image(pixels, "JPEG", exif=exif.tobytes(), quality=95)


def test_image_folder_keys_come_from_relative_paths_and_sizes_are_upright(disk_export, tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    (folder / "rgb.jpg").write_bytes(encode_image(rgb, "JPEG"))
    (folder / "grey.png").write_bytes(encode_image(rgb[..., 0]))
    (folder / "rgba.png").write_bytes(encode_image(np.dstack([rgb, np.full((48, 64), 9, np.uint8)])))
    (folder / "deep.png").write_bytes(encode_image(np.full((40, 30), 40000, np.uint16)))
    (folder / "sub" / "rotated.jpg").write_bytes(exif_rotated_jpeg(rng.integers(0, 256, (20, 40, 3), np.uint8)))
    (folder / "sub" / "a b.png").write_bytes(encode_image(rgb))
    (folder / "sub" / "a_b.png").write_bytes(encode_image(rgb))  # the same key as "a b.png"
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not an image")

    output = tmp_path / "out"
    summary = label_in_process(disk_export, folder, output, images_per_shard=4)
    assert summary["input_shards"] == ["images-000000", "images-000001"] and summary["complete"]
    assert summary["quality"] is None  # no ground truth in a folder
    skipped = {Path(entry["source"].split(":")[0]).name: entry["reason"] for entry in summary["skipped_images"]}
    assert sorted(skipped) == ["a_b.png", "broken.png"]
    assert "already" in skipped["a_b.png"] and "sub_a_b" in skipped["a_b.png"]
    assert str(folder / "broken.png") in skipped["broken.png"]

    samples = read_output(output)
    assert sorted(samples) == ["deep", "grey", "rgb", "rgba", "sub_a_b", "sub_rotated"]
    assert sorted(read_manifest(output)["shards"]) == ["images-000000-000000.tar", "images-000001-000000.tar"]
    assert summary["images"] == 6
    for _, image, record in samples.values():
        check_record(record, image, disk_export)

    def size(key):
        return samples[key][2]["image"]["height"], samples[key][2]["image"]["width"]

    assert size("sub_rotated") == (40, 20) and decode_image(samples["sub_rotated"][1]).shape == (40, 20, 3)
    assert size("rgb") == size("grey") == size("rgba") == (48, 64) and size("deep") == (40, 30)
    assert np.array_equal(decode_image(samples["rgba"][1]), rgb)
    assert decode_image(samples["deep"][1])[0, 0].tolist() == [156, 156, 156]  # 40000 / 257
    assert samples["rgb"][1] == (folder / "rgb.jpg").read_bytes()


def test_a_folder_input_reads_no_file_through_a_link_out_of_it(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(encode_image(np.zeros((8, 8, 3), np.uint8)))
    (tmp_path / "secret.png").write_bytes(encode_image(np.ones((8, 8, 3), np.uint8)))
    (tmp_path / "photos" / "b.png").symlink_to(tmp_path / "secret.png")
    [shard] = list_input_shards(tmp_path / "photos")
    samples = list(input_samples(shard, tmp_path / "photos"))
    assert [s.key for s in samples if not isinstance(s, Skipped)] == ["a"]
    [skipped] = [s for s in samples if isinstance(s, Skipped)]
    assert skipped.kind == "bad_image" and "outside" in skipped.reason and "b.png" in skipped.reason


def test_list_input_shards_of_a_folder(tmp_path):
    (tmp_path / "x").mkdir()
    for name in ["c.png", "a.jpg", "b.JPEG", "d.txt"]:
        (tmp_path / "x" / name).write_bytes(b"")
    shards = list_input_shards(tmp_path / "x", images_per_shard=2)
    assert [(s.name, [p.name for p in s.files]) for s in shards] == [
        ("images-000000", ["a.jpg", "b.JPEG"]), ("images-000001", ["c.png"])]
    assert shards[1].output_name == "images-000001-000000.tar"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="no image"):
        list_input_shards(tmp_path / "empty")
