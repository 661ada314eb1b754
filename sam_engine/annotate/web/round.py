"""One annotation round served to people: who holds which image, what they accepted, and the round's shard.

Every accepted mask is saved at once in the image's draft, ``<out_dir>/<prefix>.web/<n>.json`` (written
whole), so a round left in the middle (the server stopped, the browser closed) resumes where it was: the
image is offered again with the masks accepted so far. When the last image is finished the round's shard,
``<out_dir>/<prefix>-000000.tar``, is written and published whole, as a simulated round's is, and the
drafts are removed.

Each person's page has a client id; an image is held by one client at a time, so two people on the same
round never get the same image. A hold lapses after ``claim_seconds`` without a request from its client
(a closed browser does not keep an image from the others).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sam_engine.amg import SamAutomaticMaskGenerator
from sam_engine.annotate.session import record_info
from sam_engine.data.images import ImageDecodeError, decode_image, image_size
from sam_engine.data.records import decode_masks, make_annotations, make_record, renumbered
from sam_engine.data.samples import Sample
from sam_engine.data.shards import ShardWriter, shard_name
from sam_engine.utils.atomic_files import write_json_atomic
from sam_engine.utils.json_input import parse_json

log = logging.getLogger(__name__)


class RoundConflict(ValueError):
    """A request about an image its client does not hold (never did, its hold lapsed, or it is finished)."""


class UnknownImage(LookupError):
    """No image of the round has the key a request names."""


@dataclass
class Draft:
    """What people did on one image so far (saved as ``<n>.json``).

    Attributes:
        key: the image's sample key.
        prefilled: stage 2's automatic masks (SA-1B annotations), computed when the image is first held.
        manual: the masks people accepted, with their provenance.
        rejected: ids of pre-filled masks people rejected (not written to the shard).
        done: the image is finished.
        skipped: why the image cannot be annotated (undecodable), or None.
    """

    key: str
    prefilled: list[dict] | None = None
    manual: list[dict] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    done: bool = False
    skipped: str | None = None


@dataclass
class Hold:
    """Which page holds an image, and since when it last asked (``time.monotonic``)."""

    client: str
    since: float


class WebRound:
    """The state of a round of ``samples`` annotated through the web page.

    Arguments:
        samples: the round's images, in the order they are offered.
        out_dir: where the round's shard goes (``<out_dir>/<prefix>-000000.tar``).
        prefix: the shard's name prefix (``round01``).
        stage: 1 or 2, written with every mask.
        model: the model id written with every mask.
        prefill: stage 2's automatic mask generator (its masks are pre-filled), or None.
        claim_seconds: a held image goes back to the others after this long without a request from its client.
    """

    def __init__(self, samples: list[Sample], out_dir: str | Path, prefix: str, stage: int, model: str,
                 prefill: SamAutomaticMaskGenerator | None = None, claim_seconds: float = 1800.0) -> None:
        self.samples = samples
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.stage = stage
        self.model = model
        self.prefill = prefill
        self.claim_seconds = claim_seconds
        self.shard = self.out_dir / shard_name(prefix, 0)
        self.drafts_dir = self.out_dir / f"{prefix}.web"
        self.index = {sample.key: n for n, sample in enumerate(samples)}
        self._lock = threading.RLock()
        self._holds: dict[int, Hold] = {}
        self._images: dict[int, np.ndarray] = {}  # decoded images of the held images only
        self.drafts = [self._read_draft(n, sample) for n, sample in enumerate(samples)]
        if self.shard.is_file():
            shutil.rmtree(self.drafts_dir, ignore_errors=True)

    @property
    def published(self) -> bool:
        return self.shard.is_file()

    def progress(self) -> dict:
        """``images``, ``finished`` (done or skipped), ``held`` and ``published``."""
        with self._lock:
            return {"images": len(self.samples), "finished": sum(d.done or d.skipped is not None for d in self.drafts),
                    "held": len(self._live_holds()), "published": self.published}

    # --- holding images ------------------------------------------------------------------------------------

    def claim(self, client: str) -> int | None:
        """The image ``client`` works on: the one it holds, else the first nobody holds and nobody finished
        (its stage-2 masks computed now); None once every image is finished. Undecodable images are skipped
        (logged, and counted in ``progress``)."""
        with self._lock:
            if self.published:
                return None
            holds = self._live_holds()
            for n, hold in holds.items():
                if hold.client == client:
                    hold.since = time.monotonic()
                    return n
            for n, draft in enumerate(self.drafts):
                if draft.done or draft.skipped is not None or n in holds:
                    continue
                sample = self.samples[n]
                try:
                    image = decode_image(sample.data, source=sample.source)
                except ImageDecodeError as exc:
                    draft.skipped = str(exc)
                    log.warning("skipped %s", exc)
                    self._save(n)
                    continue
                if draft.prefilled is None:
                    draft.prefilled = self._prefilled(image)
                    self._save(n)
                self._holds[n] = Hold(client, time.monotonic())
                self._images[n] = image
                return n
            self._publish_when_finished()
            return None

    def index_of(self, key: str) -> int:
        """The position of image ``key`` in the round (raises UnknownImage, naming it, for another key)."""
        if key not in self.index:
            raise UnknownImage(f"no image {key!r} in this round")
        return self.index[key]

    def holder_check(self, client: str, key: str) -> int:
        """The index of image ``key``, which ``client`` must hold (its hold is renewed).

        Raises:
            UnknownImage: no image of the round has that key.
            RoundConflict: the client does not hold it (never did, or its hold lapsed and another took it).
        """
        with self._lock:
            n = self.index_of(key)
            hold = self._live_holds().get(n)
            if hold is None or hold.client != client:
                raise RoundConflict(f"image {key} is not held by this page (its hold lapsed, or another person "
                                    "has it): ask for the next image")
            hold.since = time.monotonic()
            return n

    def _live_holds(self) -> dict[int, Hold]:
        now = time.monotonic()
        for n in [n for n, hold in self._holds.items() if now - hold.since > self.claim_seconds]:
            del self._holds[n]
            self._images.pop(n, None)
        return self._holds

    # --- the image and its masks ---------------------------------------------------------------------------

    def image(self, n: int) -> np.ndarray:
        """Image ``n`` decoded (H x W x 3 uint8); kept while it is held (at most one image per page)."""
        with self._lock:
            if n in self._images:
                return self._images[n]
            sample = self.samples[n]
            return decode_image(sample.data, source=sample.source)

    def image_png(self, n: int) -> bytes:
        """Image ``n`` as the model sees it (upright RGB), as a PNG for the page."""
        out = io.BytesIO()
        Image.fromarray(self.image(n)).save(out, format="PNG", compress_level=1)
        return out.getvalue()

    def masks(self, n: int) -> tuple[list[dict], np.ndarray, list[dict], np.ndarray]:
        """Image ``n``'s pre-filled annotations and masks (P x H x W bool), and its accepted ones (M x H x W)."""
        with self._lock:
            draft, shape = self.drafts[n], self.image(n).shape[:2]
            prefilled, manual = draft.prefilled or [], draft.manual
            return (prefilled, decode_masks([a["segmentation"] for a in prefilled], shape),
                    manual, decode_masks([a["segmentation"] for a in manual], shape))

    def accept(self, n: int, mask: np.ndarray, clicks: int, strokes: int, seconds: float,
               point: tuple[float, float] | None) -> int:
        """Save a mask people accepted on image ``n`` (H x W bool, non-empty); returns its id on the image.

        Arguments:
            clicks, strokes: prompts (clicks and boxes) and brush or eraser strokes made for it.
            seconds: real time from its first prompt to its acceptance.
            point: its first foreground click (x, y), or None (a mask made from a box or by hand).
        """
        with self._lock:
            draft = self.drafts[n]
            new_id = len(draft.prefilled or []) + len(draft.manual)
            draft.manual += make_annotations(
                mask[None], start_id=new_id, point_coords=None if point is None else np.array([point]),
                provenance={"source": "manual", "stage": self.stage, "model": self.model, "clicks": clicks,
                            "strokes": strokes, "seconds": round(seconds, 3)},
            )
            self._save(n)
            return new_id

    def undo_accept(self, n: int) -> None:
        """Take back the last mask accepted on image ``n`` (nothing when there is none)."""
        with self._lock:
            if self.drafts[n].manual:
                self.drafts[n].manual.pop()
                self._save(n)

    def finish(self, n: int, rejected: list[int]) -> None:
        """Image ``n`` is done; ``rejected``: ids of its pre-filled masks people found wrong. Publishes the
        round's shard when it was the last image."""
        with self._lock:
            draft = self.drafts[n]
            known = {a["id"] for a in draft.prefilled or []}
            if not set(rejected) <= known:
                raise ValueError(f"rejected {sorted(set(rejected) - known)}: not pre-filled masks of {draft.key}")
            draft.rejected, draft.done = sorted(set(rejected)), True
            self._save(n)
            self._holds.pop(n, None)
            self._images.pop(n, None)
            self._publish_when_finished()

    # --- on disk -------------------------------------------------------------------------------------------

    def _prefilled(self, image: np.ndarray) -> list[dict]:
        if self.prefill is None:
            return []
        return self.prefill.generate(image, {"source": "auto", "stage": self.stage, "model": self.model})

    def _draft_path(self, n: int) -> Path:
        return self.drafts_dir / f"{n}.json"

    def _read_draft(self, n: int, sample: Sample) -> Draft:
        path = self._draft_path(n)
        if not path.is_file():
            return Draft(sample.key)
        try:
            draft = Draft(**parse_json(path.read_bytes()))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
            raise ValueError(f"{path}: not a draft of the web annotator ({exc}); move it away to start the image "
                             "again") from None
        if draft.key != sample.key:
            raise ValueError(f"{path}: a draft of image {draft.key!r}, but this round's image {n} is {sample.key!r}: "
                             f"{self.drafts_dir} belongs to another round; move it away or use another prefix")
        return draft

    def _save(self, n: int) -> None:
        self.drafts_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self._draft_path(n), vars(self.drafts[n]))

    def _publish_when_finished(self) -> None:
        """Write the round's shard once every image is done or skipped, then remove the drafts."""
        if self.published or not all(d.done or d.skipped is not None for d in self.drafts):
            return
        with ShardWriter(self.out_dir, prefix=self.prefix, max_samples=2**31, max_bytes=2**50) as writer:
            for sample, draft in zip(self.samples, self.drafts, strict=True):
                if draft.skipped is not None:
                    continue
                annotations = renumbered([a for a in draft.prefilled or [] if a["id"] not in draft.rejected]
                                         + draft.manual)
                info = record_info(sample, image_size(sample.data, source=sample.source))
                writer.write(sample.key, sample.data, sample.ext, make_record(**info, annotations=annotations))
        shutil.rmtree(self.drafts_dir, ignore_errors=True)
        log.info("round %s: %d images finished, published %s", self.prefix, len(self.samples), self.shard)
