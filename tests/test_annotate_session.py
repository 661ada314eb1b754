"""One annotation round (sam_engine.annotate.session): what is written, and images that cannot be annotated."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np

from sam_engine.annotate.cost import AnnotationTimeModel
from sam_engine.annotate.session import RoundSetup, annotate_round, pool_samples, round_statistics
from sam_engine.annotate.simulated import SimulatedAnnotator
from sam_engine.data.records import make_annotations, make_record
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
