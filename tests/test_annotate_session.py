"""One annotation round (sam_engine.annotate.session): what is written, and images that cannot be annotated."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from sam_engine.annotate.cost import AnnotationTimeModel
from sam_engine.annotate.session import RoundSetup, annotate_round, pool_samples, round_statistics
from sam_engine.annotate.simulated import SimulatedAnnotator
from sam_engine.data.records import decode_masks, make_annotations, make_record
from sam_engine.data.synthetic.dataset import ensure_synthetic_dataset
from sam_engine.model import build_sam
from sam_engine.predict.predictor import SamPredictor


def test_round_skips_images_without_ground_truth_or_of_the_wrong_size(tmp_path):
    good = list(pool_samples(ensure_synthetic_dataset(tmp_path / "synthetic", num_images=2, seed=5, image_size=256)))
    first = good[0]
    half = make_annotations(np.ones((1, 128, 256), dtype=bool))  # a record of a 128 x 256 image, on a 256 x 256 one
    members = [
        (good[0].key, first.data, first.record),
        ("bare", first.data, make_record("bare", 256, 256, "bare.png", [])),
        ("liar", first.data, make_record("liar", 256, 128, "liar.png", half)),
        (good[1].key, good[1].data, good[1].record),
    ]
    pool = tmp_path / "pool.tar"  # written by hand: our ShardWriter refuses a record of another size
    with tarfile.open(pool, "w") as tar:
        for key, image, record in members:
            for name, data in ((f"{key}.png", image), (f"{key}.json", json.dumps(record).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    samples = list(pool_samples(pool))
    setup = RoundSetup(SamPredictor(build_sam("tiny")), SimulatedAnnotator(AnnotationTimeModel(), max_clicks=2),
                       stage=1, model="random")
    shard = annotate_round(samples, tmp_path / "out", "round01", setup)
    written = list(pool_samples(shard))
    assert [s.key for s in written] == [good[0].key, good[1].key]
    annotations = [a for s in written for a in s.record["annotations"]]
    assert annotations and {(a["source"], a["stage"], a["model"]) for a in annotations} == {("manual", 1, "random")}
    stats = round_statistics(shard, {s.key: s.record["annotations"] for s in good})
    assert stats["images"] == 2 and stats["manual_masks"] == len(annotations) and stats["auto_masks"] == 0
    assert stats["seconds_per_mask"] == sum(a["seconds"] for a in annotations) / len(annotations)
    # A finished round is not annotated again.
    assert annotate_round(samples, tmp_path / "out", "round01", setup) == shard
    assert len(list((tmp_path / "out").glob("round01-*.tar"))) == 1


class FixedPrefill:
    """Stands in for stage 2's automatic mask generator: pre-fills the image's top rows (wrong for every
    object), then the first object's exact mask (right)."""

    def __init__(self, truth: np.ndarray):
        self.masks = np.stack([np.zeros_like(truth[0]), truth[0]])
        self.masks[0, :20] = True

    def generate(self, image: np.ndarray, provenance: dict) -> list[dict]:
        return make_annotations(self.masks, predicted_iou=[0.95, 0.9], stability_score=[0.97, 0.96],
                                crop_box=[[0, 0, image.shape[1], image.shape[0]]] * 2, provenance=provenance)


@pytest.mark.parametrize("review", [True, False])
def test_stage_two_keeps_the_prefilled_masks_the_annotator_finds_right(tmp_path, review):
    samples = list(pool_samples(ensure_synthetic_dataset(tmp_path / "synthetic", num_images=1, seed=5,
                                                         image_size=128)))
    truth = decode_masks([a["segmentation"] for a in samples[0].record["annotations"]], (128, 128))
    annotator = SimulatedAnnotator(AnnotationTimeModel(), max_clicks=2, move_on_seconds=1e9)
    setup = RoundSetup(SamPredictor(build_sam("tiny")), annotator, stage=2, model="random",
                       prefill=FixedPrefill(truth), review=review)
    written = list(pool_samples(annotate_round(samples, tmp_path / "out", "round01", setup)))[0].record
    annotations = written["annotations"]
    prefilled = [a for a in annotations if a["source"] == "auto"]
    manual = [a for a in annotations if a["source"] == "manual"]
    assert [a["id"] for a in annotations] == list(range(len(annotations)))  # renumbered past the rejected one
    kept = decode_masks([a["segmentation"] for a in prefilled], (128, 128))
    expected = FixedPrefill(truth).masks[1:] if review else FixedPrefill(truth).masks
    assert np.array_equal(kept, expected)
    inter = (truth[:, None] & expected[None]).sum(axis=(2, 3))
    union = (truth[:, None] | expected[None]).sum(axis=(2, 3))
    covered = (inter / union >= 0.5).any(axis=1)  # the first object and any it nearly is (a part of it)
    assert covered[0] and len(manual) == len(truth) - covered.sum()  # only the objects no kept pre-fill covers
    stats = round_statistics(tmp_path / "out", {samples[0].key: samples[0].record["annotations"]})
    assert stats["auto_masks"] == len(expected)
    assert stats["pseudo_label_precision"] == (1.0 if review else 0.5)
