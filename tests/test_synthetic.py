"""The embedded synthetic dataset: scene ground truth, determinism, writing, resuming, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sam_engine.data.importers.sa1b import iter_sa1b
from sam_engine.data.records import decode_masks
from sam_engine.data.shards import list_shards, read_manifest
from sam_engine.data.synthetic import scenes
from sam_engine.data.synthetic.dataset import ensure_synthetic_dataset, sample_key
from sam_engine.data.synthetic.scenes import Canvas, Element, SceneSpec, generate_scene
from sam_engine.data.synthetic.shapes import SHAPE_KINDS, Shape, rasterize


@pytest.fixture(scope="module")
def sample_scenes():
    return [generate_scene(7, i) for i in range(20)]


def read_dataset(directory) -> dict[str, tuple[bytes, dict]]:
    """key -> (image bytes, record) of every sample in a shard directory."""
    return {key: (image, record) for key, image, record in iter_sa1b(list_shards(directory))}


def test_scene_is_deterministic_per_seed_and_index():
    first, again, other = generate_scene(3, 5), generate_scene(3, 5), generate_scene(4, 5)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.masks, again.masks)
    assert np.array_equal(first.levels, again.levels) and np.array_equal(first.objects, again.objects)
    assert not np.array_equal(first.image, other.image)
    assert first.image.shape == (256, 256, 3) and first.image.dtype == np.uint8


def test_scenes_have_5_to_40_objects_and_no_tiny_masks(sample_scenes):
    min_area = SceneSpec().min_area
    for scene in sample_scenes:
        num_objects = scene.objects.max() + 1
        assert 5 <= num_objects <= 40
        assert np.array_equal(np.unique(scene.objects), np.arange(num_objects))
        assert np.bincount(scene.objects[scene.levels == 0]).max() == 1  # one whole per object
        assert scene.masks.sum(axis=(1, 2)).min() >= min_area


def test_scenes_of_large_masks_reach_their_minimum_count_or_say_why():
    large = SceneSpec(min_objects=6, max_objects=16, object_area=(0.016, 0.2), min_mask_area=1024)
    for index in range(8):
        scene = generate_scene(0, index, large)
        wholes = scene.masks[scene.levels == 0]
        assert len(wholes) >= 6 and wholes.sum(axis=(1, 2)).min() >= 1024
    with pytest.raises(ValueError, match="no 3 visible objects of at least 60000 px"):
        generate_scene(0, 0, SceneSpec(min_objects=3, min_mask_area=60000))


def test_parts_nest_in_their_object_over_three_levels(sample_scenes):
    nested_chains = 0
    for scene in sample_scenes:
        assert set(np.unique(scene.levels)) <= {0, 1, 2}
        for k in np.flatnonzero(scene.levels > 0):
            same_object = scene.objects == scene.objects[k]
            parents = np.flatnonzero(same_object & (scene.levels == scene.levels[k] - 1))
            inside = [p for p in parents if not (scene.masks[k] & ~scene.masks[p]).any()]
            assert inside, "every part lies inside a mask one level up in its object"
            assert all(scene.masks[k].sum() < scene.masks[p].sum() for p in inside), (
                "no duplicate of its parent"
            )
            nested_chains += scene.levels[k] == 2
    assert nested_chains > 20  # sub-part inside part inside whole: a click there has three answers


def test_object_sizes_span_under_half_a_percent_to_over_thirty(sample_scenes):
    fractions = np.concatenate([s.masks.mean(axis=(1, 2))[s.levels == 0] for s in sample_scenes])
    assert (fractions < 0.005).sum() > 20
    assert (fractions > 0.30).sum() >= 2


def test_visible_masks_of_different_objects_never_overlap(sample_scenes):
    for scene in sample_scenes:
        wholes = scene.masks[scene.levels == 0]
        assert wholes.sum(axis=0).max() == 1


def test_an_occluded_object_keeps_only_its_visible_region():
    size = 64
    canvas = Canvas(size, np.zeros((size, size, 3), dtype=np.float32))
    back = Shape("ellipse", 30, 30, 20, 0.0, (1.0,))
    front = Shape("rect", 45, 30, 14, 0.0, (1.0,))
    rng = np.random.default_rng(0)
    canvas.paint_object(rng, Element(back))
    canvas.paint_object(rng, Element(front))
    scene = canvas.to_scene(min_area=1)

    def full(shape):
        window, mask = rasterize(shape, size)
        out = np.zeros((size, size), dtype=bool)
        out[window] = mask
        return out

    assert (full(back) & full(front)).any()
    assert np.array_equal(scene.masks[0], full(back) & ~full(front))
    assert np.array_equal(scene.masks[1], full(front))


def test_a_fully_hidden_or_duplicate_mask_is_dropped():
    size = 48
    canvas = Canvas(size, np.zeros((size, size, 3), dtype=np.float32))
    rng = np.random.default_rng(0)
    canvas.paint_object(rng, Element(Shape("ellipse", 24, 24, 5, 0.0, (1.0,))))  # hidden below
    canvas.paint_object(
        rng,
        Element(
            Shape("rect", 24, 24, 30, 0.0, (1.0,)),
            children=[Element(Shape("rect", 24, 24, 40, 0.0, (1.0,)), clip=True)],
        ),
    )
    scene = canvas.to_scene(min_area=4)
    assert len(scene.masks) == 1 and scene.levels.tolist() == [0]  # the child equals its parent


@pytest.mark.parametrize("kind", SHAPE_KINDS)
def test_every_shape_kind_rasterises_inside_its_disc(kind):
    shape = scenes.random_shape(np.random.default_rng(1), 32.0, 32.0, 20.0, kinds=(kind,))
    window, mask = rasterize(shape, 64)
    ys, xs = np.nonzero(mask)
    distance = np.hypot(xs + window[1].start + 0.5 - 32, ys + window[0].start + 0.5 - 32)
    assert mask.sum() > 20 and distance.max() <= 20.0 + 1e-4


def test_dataset_records_carry_seed_provenance_level_and_object(tmp_path):
    ensure_synthetic_dataset(tmp_path / "d", num_images=3, seed=5, image_size=96, shard_size=2)
    samples = read_dataset(tmp_path / "d")
    assert sorted(samples) == [sample_key(5, i) for i in range(3)]
    image, record = samples[sample_key(5, 1)]
    scene = generate_scene(5, 1, SceneSpec(image_size=96))
    masks = decode_masks([a["segmentation"] for a in record["annotations"]])
    assert np.array_equal(masks, scene.masks)
    assert [a["level"] for a in record["annotations"]] == scene.levels.tolist()
    assert [a["object"] for a in record["annotations"]] == scene.objects.tolist()
    assert {a["source"] for a in record["annotations"]} == {"seed"}
    assert all(a["area"] > 0 and a["predicted_iou"] == 1.0 for a in record["annotations"])
    assert record["image"]["width"] == record["image"]["height"] == 96 and image[:4] == b"\x89PNG"


def test_same_seed_gives_identical_bytes_and_scene_i_ignores_num_images(tmp_path):
    ensure_synthetic_dataset(tmp_path / "a", num_images=4, seed=2, image_size=64)
    ensure_synthetic_dataset(tmp_path / "b", num_images=2, seed=2, image_size=64)
    ensure_synthetic_dataset(tmp_path / "c", num_images=2, seed=3, image_size=64)
    a, b, c = (read_dataset(tmp_path / name) for name in "abc")
    assert all(a[key] == b[key] for key in b)
    assert [image for image, _ in a.values()][:2] != [image for image, _ in c.values()]


def test_a_killed_generation_completes_without_duplicates(tmp_path, monkeypatch):
    real = scenes.generate_scene

    def dies_at_four(seed, index, spec):
        if index == 4:
            raise KeyboardInterrupt
        return real(seed, index, spec)

    monkeypatch.setattr("sam_engine.data.synthetic.dataset.generate_scene", dies_at_four)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_dataset(tmp_path / "d", num_images=6, seed=0, image_size=64, shard_size=3)
    assert len(read_dataset(tmp_path / "d")) == 3  # the first shard; the one in progress was discarded
    monkeypatch.setattr("sam_engine.data.synthetic.dataset.generate_scene", real)

    ensure_synthetic_dataset(tmp_path / "d", num_images=6, seed=0, image_size=64, shard_size=3)
    ensure_synthetic_dataset(tmp_path / "clean", num_images=6, seed=0, image_size=64, shard_size=3)
    keys = [k for entry in read_manifest(tmp_path / "d")["shards"].values() for k in entry["keys"]]
    assert sorted(keys) == [sample_key(0, i) for i in range(6)]
    assert read_dataset(tmp_path / "d") == read_dataset(tmp_path / "clean")


def test_a_complete_dataset_is_left_alone_and_other_parameters_are_refused(tmp_path):
    out = ensure_synthetic_dataset(tmp_path / "d", num_images=2, seed=0, image_size=64)
    manifest = (out / "manifest.json").read_text()
    ensure_synthetic_dataset(out, num_images=2, seed=0, image_size=64)
    assert (out / "manifest.json").read_text() == manifest
    with pytest.raises(ValueError, match="seed"):
        ensure_synthetic_dataset(out, num_images=2, seed=1, image_size=64)
    with pytest.raises(ValueError, match="image_size"):
        ensure_synthetic_dataset(out, num_images=2, seed=0, image_size=128)
    with pytest.raises(ValueError, match="max_objects"):
        ensure_synthetic_dataset(out, num_images=2, seed=0, image_size=64, scene={"max_objects": 6})


def test_scene_parameters_shape_the_dataset(tmp_path):
    scene = {"min_objects": 1, "max_objects": 2, "object_area": [0.05, 0.2], "min_mask_area": 40}
    out = ensure_synthetic_dataset(tmp_path / "d", num_images=4, seed=3, image_size=96, scene=scene)
    parameters = json.loads((out / "synthetic.json").read_text())
    assert parameters["scene"] == {**scene, "image_size": 96, "large_area": [0.35, 0.65], "large_probability": 0.5}
    for _, record in read_dataset(out).values():
        annotations = record["annotations"]
        assert 1 <= len({a["object"] for a in annotations}) <= 2
        assert min(a["area"] for a in annotations) >= 40
    with pytest.raises(ValueError, match="unknown field.*max_object"):
        ensure_synthetic_dataset(tmp_path / "e", num_images=1, seed=3, image_size=96, scene={"max_object": 3})


def run_module(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "sam_engine.data.synthetic", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_command_line_writes_relative_to_the_launch_directory(tmp_path):
    result = run_module(["out_dir=data/train", "num_images=2", "seed=1", "image_size=64"], tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "data" / "train")
    assert sum(entry["samples"] for entry in manifest["shards"].values()) == 2
    parameters = json.loads((tmp_path / "data" / "train" / "synthetic.json").read_text())
    assert {k: parameters[k] for k in ("num_images", "seed", "image_size", "image_format")} == {
        "num_images": 2, "seed": 1, "image_size": 64, "image_format": "png"
    }
    assert parameters["scene"]["max_objects"] == 40  # SceneSpec's default


def test_command_line_help_and_cfg(tmp_path):
    help_text = run_module(["--help"], tmp_path)
    assert help_text.returncode == 0 and "out_dir" in help_text.stdout and "num_images" in help_text.stdout
    cfg = run_module(["--cfg", "job", "out_dir=x", "seed=9"], tmp_path)
    assert cfg.returncode == 0 and "seed: 9" in cfg.stdout
    assert not (tmp_path / "x").exists()
