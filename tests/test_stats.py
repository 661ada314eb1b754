"""Dataset statistics (SA-1B paper, Sec. 5) checked on hand-made masks with known values."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_engine.data.records import make_annotations, make_record
from sam_engine.data.shards import ShardWriter
from sam_engine.data.stats.dataset_stats import compute_stats, concavity, mask_properties, write_stats

REPO = Path(__file__).resolve().parents[1]


def square(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def l_shape(size: int) -> np.ndarray:
    """A 20 x 20 square at the origin without its 10 x 10 top-right quarter: area 300, hull 350."""
    mask = square(size, 0, 0, 20)
    mask[:10, 10:20] = False
    return mask


def png(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture()
def hand_made(tmp_path):
    """Image a (40 x 40): a 10 x 10 square at the top-left and the L-shape; image b: 12 squares; c: none."""
    with ShardWriter(tmp_path, max_samples=2) as writer:
        masks_a = np.stack([square(40, 0, 0, 10), l_shape(40)])
        masks_b = np.stack([square(40, 30, 30, 4)] * 12)
        for key, masks in (("a", masks_a), ("b", masks_b), ("c", np.zeros((0, 40, 40), bool))):
            writer.write(
                key, png(40, 40), "png", make_record(key, 40, 40, f"{key}.png", make_annotations(masks))
            )
    return tmp_path


def test_concavity_of_a_rectangle_is_zero_and_of_an_l_shape_one_seventh():
    assert concavity(square(30, 3, 5, 12)) == 0.0
    assert concavity(square(5, 2, 2, 1)) == 0.0
    assert concavity(l_shape(30)) == pytest.approx(1 - 300 / 350)
    two_dots = np.zeros((10, 10), dtype=bool)
    two_dots[0, 0] = two_dots[0, 9] = True  # two pixels at the ends of a 1 x 10 row: hull area 10
    assert concavity(two_dots) == pytest.approx(0.8)


def test_mask_properties_give_size_and_centre():
    masks = np.stack([square(40, 0, 0, 10), square(40, 20, 30, 10)])
    sizes, centres, concavities = mask_properties(masks, np.array([[0, 0, 10, 10], [30, 20, 10, 10]]))
    assert sizes == pytest.approx([0.25, 0.25])
    np.testing.assert_allclose(centres, [[0.125, 0.125], [0.875, 0.625]])
    assert concavities.tolist() == [0.0, 0.0]


def test_dataset_statistics_match_the_hand_made_masks(hand_made):
    stats = compute_stats(hand_made, size_bins=20, concavity_bins=7, heatmap_bins=4).to_dict()
    assert stats["num_images"] == 3 and stats["num_masks"] == 14 and stats["bad_records"] == 0
    assert stats["masks_per_image"]["images"] == [1, 1, 1, 0, 0, 0]  # 0, 1-10, 11-50, ...
    assert stats["masks_per_image"]["max"] == 12
    sizes = [0.25, np.sqrt(300 / 1600)] + [0.1] * 12
    expected_sizes = np.histogram(sizes, bins=20, range=(0, 1))[0].tolist()
    assert stats["relative_size"]["masks"] == expected_sizes
    assert stats["relative_size"]["mean"] == pytest.approx(np.mean(sizes))
    assert stats["concavity"]["masks"] == [13, 1, 0, 0, 0, 0, 0]  # 1/7 falls in the second of 7 bins
    assert stats["concavity"]["mean"] == pytest.approx((1 / 7) / 14)
    heatmap = np.array(stats["centre_heatmap"]["masks"])
    # square centre (5, 5) / 40; L centre (8.33, 11.67) / 40 -> row 1, column 0; small squares (32, 32) / 40
    assert heatmap[0, 0] == 1 and heatmap[1, 0] == 1 and heatmap[3, 3] == 12 and heatmap.sum() == 14


def test_bad_records_are_counted_and_skipped(tmp_path):
    with tarfile.open(tmp_path / "broken.tar", "w") as tar:
        for name, data in (
            ("x.png", png(4, 4)),
            ("x.json", b"{oops"),
            ("y.png", png(4, 4)),
            ("y.json", json.dumps(make_record("y", 4, 4, "y.png", [])).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    stats = compute_stats(str(tmp_path / "broken.tar"))
    assert stats.bad_records == 1 and stats.num_images == 1


def test_write_stats_and_the_command_line(hand_made, tmp_path):
    paths = write_stats(compute_stats(hand_made), tmp_path / "direct")
    assert sorted(p.name for p in paths) == sorted(
        ["stats.json", "masks_per_image.png", "relative_size.png", "concavity.png", "centre_heatmap.png"]
    )
    result = subprocess.run(
        [sys.executable, "-m", "sam_engine.data.stats", f"sources={hand_made}", f"out={tmp_path / 'cli'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "cli" / "stats.json").read_text())["num_masks"] == 14
    assert Image.open(tmp_path / "cli" / "centre_heatmap.png").format == "PNG"
