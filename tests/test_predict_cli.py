"""``python -m sam_engine.predict`` and the overlay it writes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sam_engine.utils.visualize import overlay_masks


def run_predict(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sam_engine.predict", *overrides], capture_output=True, text=True, timeout=300
    )


def test_predict_on_a_synthetic_scene_writes_an_overlay(tmp_path):
    out = tmp_path / "overlay.png"
    result = run_predict(f"out={out}", "num_clicks=4", f"hydra.run.dir={tmp_path / 'hydra'}")
    assert result.returncode == 0, result.stderr
    with Image.open(out) as png:
        assert png.size == (128, 128) and png.mode == "RGB"  # a scene the size of the tiny model's input
    assert "4 masks" in result.stdout and "mIoU against the scene's ground truth" in result.stdout


def test_predict_on_an_image_file_with_points(tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 160, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "overlay.png"
    result = run_predict(f"image={image}", "points=[[10,20],[100,50]]", f"out={out}", f"hydra.run.dir={tmp_path}/h")
    assert result.returncode == 0, result.stderr
    with Image.open(out) as png:
        assert png.size == (160, 90)
    assert "2 masks" in result.stdout


@pytest.mark.parametrize("points", ["[[500,5]]", "[[-1e6,-1e6]]"])
def test_a_point_outside_the_image_is_refused_by_the_command(tmp_path, points):
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((96, 160, 3), np.uint8)).save(image)
    result = run_predict(f"image={image}", f"points={points}", f"out={tmp_path / 'o.png'}",
                         f"hydra.run.dir={tmp_path}/h")
    assert result.returncode != 0 and "lies outside the 160x96 image" in result.stderr
    assert not (tmp_path / "o.png").exists()


def test_help_and_wrong_model_name():
    assert "num_clicks" in run_predict("--help").stdout
    result = run_predict("model=vit_x")
    assert result.returncode != 0
    assert "vit_x" in result.stderr and "tiny" in result.stderr and "vit_b" in result.stderr


def test_overlay_colours_masked_pixels_and_keeps_the_rest():
    image = np.full((20, 30, 3), 100, np.uint8)
    masks = np.zeros((2, 20, 30), bool)
    masks[0, :10] = True  # large
    masks[1, 2:4, 2:4] = True  # small, drawn on top of the large one
    out = overlay_masks(image, masks)
    assert (out[15:] == 100).all(), "unmasked pixels unchanged"
    assert not (out[5, 20] == 100).all() and not (out[3, 3] == 100).all()
    assert not (out[3, 3] == out[5, 20]).all(), "the small mask shows its own colour on top"
