"""The web annotator's round and server without a browser: holds, drafts that survive a restart, the shard
published whole with each mask's provenance, stage 2's pre-filled masks, and every refusal of a bad request."""

from __future__ import annotations

import threading
import time
import urllib.request

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from web_helpers import DISKS, SIDE, disk_mask, disk_pool, post

from sam_engine.amg import SamAutomaticMaskGenerator
from sam_engine.annotate.session import pool_samples
from sam_engine.annotate.web.masks import mask_to_png, png_to_mask
from sam_engine.annotate.web.options import ServeOptions
from sam_engine.annotate.web.round import RoundConflict, UnknownImage, WebRound
from sam_engine.annotate.web.segmenter import Segmenter
from sam_engine.annotate.web.server import serve
from sam_engine.data.samples import Sample
from sam_engine.model import build_sam

TOKEN = "sixteen-characters-at-least"


@pytest.fixture
def pool(tmp_path):
    return list(pool_samples(disk_pool(tmp_path / "pool")))


def test_two_pages_never_hold_the_same_image_and_a_lapsed_hold_goes_to_the_other(tmp_path, pool):
    round_ = WebRound(pool, tmp_path / "out", "round01", 1, "m", claim_seconds=0.5)
    assert round_.claim("alice") == 0 and round_.claim("bob") == 1
    assert round_.claim("alice") == 0  # a reload gets the image back
    assert round_.claim("carol") is None  # both held
    with pytest.raises(RoundConflict, match="not held by this page"):
        round_.holder_check("bob", "disk0")
    time.sleep(0.6)
    assert round_.claim("carol") == 0  # alice's hold lapsed
    with pytest.raises(UnknownImage, match="no image '../../etc/passwd' in this round"):
        round_.holder_check("carol", "../../etc/passwd")


def test_accepted_masks_survive_a_restart_and_the_round_publishes_whole(tmp_path, pool):
    out = tmp_path / "out"
    round_ = WebRound(pool, out, "round01", 1, "model@abc")
    n = round_.claim("alice")
    truth = disk_mask(*DISKS[0])
    assert round_.accept(n, truth, clicks=3, strokes=2, seconds=7.25, point=(100.0, 120.0)) == 0
    round_.accept(n, disk_mask((30.0, 30.0), 10.0), clicks=0, strokes=1, seconds=3.0, point=None)
    round_.undo_accept(n)  # taken back
    assert not round_.published and not list(out.glob("*.tar"))

    restarted = WebRound(pool, out, "round01", 1, "model@abc")  # the server stopped and started again
    n = restarted.claim("bob")
    assert n == 0 and len(restarted.masks(n)[2]) == 1
    restarted.finish(n, rejected=[])
    assert not restarted.published
    restarted.finish(restarted.claim("bob"), rejected=[])  # the last image: the shard is written
    assert restarted.published and not (out / "round01.web").exists()
    records = {s.key: s.record for s in pool_samples(out)}
    assert records["disk1"]["annotations"] == []
    (annotation,) = records["disk0"]["annotations"]
    assert np.array_equal(mask_utils.decode(annotation["segmentation"]).astype(bool), truth)
    assert {k: annotation[k] for k in ("source", "stage", "model", "clicks", "strokes", "seconds")} == {
        "source": "manual", "stage": 1, "model": "model@abc", "clicks": 3, "strokes": 2, "seconds": 7.25}
    assert annotation["point_coords"] == [[100.0, 120.0]]
    assert WebRound(pool, out, "round01", 1, "m").claim("x") is None  # a published round offers nothing


def test_an_undecodable_image_is_skipped_and_counted_and_the_round_goes_on(tmp_path, pool):
    broken = Sample("broken", b"\x89PNG not really", "png", None, "test:broken")
    round_ = WebRound([broken, *pool[:1]], tmp_path, "round01", 1, "m")
    n = round_.claim("alice")
    assert n == 1 and round_.drafts[0].skipped and round_.progress()["finished"] == 1
    round_.finish(n, rejected=[])
    assert round_.published and [s.key for s in pool_samples(tmp_path)] == ["disk0"]


def test_a_draft_of_another_round_is_refused_naming_the_file(tmp_path, pool):
    WebRound(pool, tmp_path, "round01", 1, "m").accept(0, disk_mask(*DISKS[0]), 1, 0, 1.0, None)
    with pytest.raises(ValueError, match=r"round01.web/0.json: a draft of image 'disk0'.*another round"):
        WebRound(pool[::-1], tmp_path, "round01", 1, "m")
    (tmp_path / "round01.web" / "0.json").write_text("{not json")
    with pytest.raises(ValueError, match="0.json: not a draft of the web annotator"):
        WebRound(pool, tmp_path, "round01", 1, "m")


def test_stage_two_offers_the_prefilled_masks_and_leaves_out_the_rejected_ones(tmp_path, pool):
    prefill = SamAutomaticMaskGenerator(build_sam("tiny").eval(), points_per_side=4, pred_iou_thresh=0,
                                        stability_score_thresh=0, box_nms_thresh=1.0)
    round_ = WebRound(pool[:1], tmp_path, "round01", 2, "m", prefill=prefill)
    n = round_.claim("alice")
    prefilled, masks, _, _ = round_.masks(n)
    assert len(prefilled) >= 2 and masks.shape == (len(prefilled), SIDE, SIDE)
    assert {a["source"] for a in prefilled} == {"auto"} and {a["stage"] for a in prefilled} == {2}
    round_.accept(n, disk_mask(*DISKS[0]), 2, 0, 4.0, (100.0, 120.0))
    with pytest.raises(ValueError, match=r"rejected \[999\]: not pre-filled masks of disk0"):
        round_.finish(n, rejected=[999])
    round_.finish(n, rejected=[prefilled[0]["id"]])
    (record,) = [s.record for s in pool_samples(tmp_path)]
    sources = [a["source"] for a in record["annotations"]]
    assert sources == ["auto"] * (len(prefilled) - 1) + ["manual"]
    assert [a["id"] for a in record["annotations"]] == list(range(len(prefilled)))


def test_masks_travel_as_pngs_and_a_wrong_one_is_refused():
    mask = disk_mask(*DISKS[1])
    assert np.array_equal(png_to_mask(mask_to_png(mask), (SIDE, SIDE)), mask)
    assert np.array_equal(png_to_mask("data:image/png;base64," + mask_to_png(mask), (SIDE, SIDE)), mask)
    with pytest.raises(ValueError, match="the mask is 256x256, the image 100x50"):
        png_to_mask(mask_to_png(mask), (50, 100))
    with pytest.raises(ValueError, match="not a base64 PNG"):
        png_to_mask("R0lGODlhAQABAAAAACw=", (SIDE, SIDE))  # a GIF


@pytest.mark.parametrize("options, message", [
    (ServeOptions(host="0.0.0.0"), "not a loopback address"),
    (ServeOptions(host="192.168.1.10", allow_remote=True), "a token is required"),
    (ServeOptions(token="short"), "at least 16 characters"),
    (ServeOptions(port=70000), "port=70000"),
])
def test_serving_beyond_loopback_needs_the_flag_and_a_token(options, message):
    with pytest.raises(ValueError, match=message):
        options.check()
    ServeOptions(host="0.0.0.0", allow_remote=True, token=TOKEN).check()


@pytest.fixture
def server(tmp_path, pool):
    """A served round of the disk pool (an untrained tiny model), 64 KiB request limit: (url, round)."""
    round_ = WebRound(pool, tmp_path / "out", "round01", 1, "m")
    addresses, stop = [], threading.Event()
    options = ServeOptions(port=0, token=TOKEN, max_request_mb=1 / 16)
    thread = threading.Thread(target=serve, args=(round_, Segmenter(build_sam("tiny").eval()), options),
                              kwargs={"on_ready": addresses.append, "stop": stop}, daemon=True)
    thread.start()
    while not addresses:
        time.sleep(0.05)
    yield addresses[0].split("#")[0], round_
    stop.set()
    thread.join(10)


def get(url: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_server_answers_a_click_and_refuses_every_bad_request(server):
    url, round_ = server
    status, page = get(url, token=None)
    assert status == 200 and b"annotator.js" in page  # the page itself is public; its data is not
    assert post(url, "api/next", {"client": "alice"})[0] == 401
    assert post(url, "api/next", {"client": "alice"}, token="wrong-token-of-some-length")[0] == 401
    status, answer = post(url, "api/next", {"client": "alice"}, TOKEN)
    assert status == 200 and answer["image"]["key"] == "disk0" and answer["progress"]["held"] == 1
    status, png = get(url + "api/image?key=disk0")
    assert status == 200 and png[:4] == b"\x89PNG"
    status, answer = post(url, "api/segment", {"client": "alice", "key": "disk0", "points": [[100, 120, 1]]}, TOKEN)
    assert status == 200 and len(answer["candidates"]) == 3  # a single click: the three masks to choose from
    previous = answer["candidates"][0]["token"]
    status, answer = post(url, "api/segment", {"client": "alice", "key": "disk0", "points": [[100, 120, 1], [5, 5, 0]],
                                               "previous": previous}, TOKEN)
    assert status == 200 and len(answer["candidates"]) == 1
    status, answer = post(url, "api/segment", {"client": "alice", "key": "disk0", "box": [60, 80, 140, 160]}, TOKEN)
    assert status == 200 and len(answer["candidates"]) == 1

    def refused(path: str, body, status: int, message: str) -> None:
        got, answer = post(url, path, body, TOKEN)
        assert (got, message in answer.get("error", "")) == (status, True), answer

    held = {"client": "alice", "key": "disk0"}
    refused("api/segment", {**held, "key": "../../etc/passwd", "points": [[1, 1, 1]]}, 404, "no image")
    refused("api/segment", {**held, "client": "bob", "points": [[1, 1, 1]]}, 409, "not held by this page")
    refused("api/segment", {**held, "points": [[100, 999, 1]]}, 400, "points: expected")
    refused("api/segment", {**held, "points": [[100, 100, 7]]}, 400, "label 0 or 1")
    refused("api/segment", {**held, "points": [[1, 1, 1]] * 65}, 400, "at most 64")
    refused("api/segment", {**held, "box": [50, 50, 10, 10]}, 400, "box: expected")
    refused("api/segment", held, 400, "no prompt")
    refused("api/segment", [held], 400, "must be a JSON object")
    refused("api/accept", {**held, "mask": mask_to_png(np.zeros((SIDE, SIDE), bool)), "clicks": 1, "strokes": 0,
                           "seconds": 1.0}, 400, "mask: empty")
    refused("api/accept", {**held, "mask": mask_to_png(np.ones((8, 8), bool)), "clicks": 1, "strokes": 0,
                           "seconds": 1.0}, 400, "the mask is 8x8")
    refused("api/accept", {**held, "mask": mask_to_png(disk_mask(*DISKS[0])), "clicks": -1, "strokes": 0,
                           "seconds": 1.0}, 400, "clicks: expected")
    refused("api/accept", {**held, "mask": mask_to_png(disk_mask(*DISKS[0])), "clicks": 1, "strokes": 0,
                           "seconds": float("nan")}, 400, "seconds: expected")
    refused("api/accept", {**held, "mask": "A" * 70_000}, 413, "over 65536 bytes")
    refused("api/finish", {**held, "rejected": [3]}, 400, "not pre-filled masks")
    request = urllib.request.Request(url + "api/next", data=b"{not json", method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError, match="400"):
        urllib.request.urlopen(request, timeout=30)
    assert get(url + "api/image?key=../sam.pth")[0] == 404
    assert get(url + "static/../../round.py")[0] == 404
    assert round_.drafts[0].manual == [] and not round_.published  # nothing refused was written
