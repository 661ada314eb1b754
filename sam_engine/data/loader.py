"""Reading shards for training: tar stream -> SA-1B samples -> model-frame examples -> batches.

The pipeline one DataLoader worker runs (:meth:`ShardDataset.__iter__`)::

    shard URLs ──► tar samples ──► [this worker's share] ──► [shuffle] ──► decode ──► batch ──► exactly n

- **Decoding** (:class:`SampleDecoder`): the JSON record is parsed and validated, the masks to use
  are chosen from the annotations' ``area`` (empty and > ``max_mask_fraction`` of the image
  dropped, at most ``max_masks_per_image`` sampled), only those RLEs are decoded (one pycocotools
  call) and resized to the model frame in bulk (nearest, as PIL); the image is decoded (JPEG draft
  for big photos), resized longest-side to ``img_size`` (PIL bilinear, as SAM), normalised and
  padded. :func:`collate` pads the masks into the batch, keeping the column-major order in which RLE
  decodes (see :class:`Batch`): a worker never transposes bits.
- **Training** (``resample=True``): every rank and worker draws shards at random with replacement,
  seeded by (seed, rank, worker, epoch), and yields a fixed number of batches, so every DDP rank
  takes exactly ``steps_per_epoch`` steps whatever the shard sizes (uneven splits hang NCCL).
- **Validation** (``resample=False``): one deterministic pass in which each sample goes to exactly one
  rank and worker: sample ``g`` of the stream goes to rank ``g % R``, and within it, its rank-local
  batch ``(g // R) // B`` to worker ``batch % W``. Every worker reads every shard but decodes only its
  share. With several ranks each rank yields ``ceil(ceil(N / R) / B)`` batches; a rank short of
  samples (the remainder, or skipped bad samples) pads with one-example batches repeating its last
  image, as ``DistributedSampler`` pads, but without its masks: no metric counts an example twice.
- **Bad samples** (unreadable tar, no json/image, undecodable image, malformed record, duplicate key,
  image smaller than ``min_image_side``...) are skipped with a warning naming shard and key and
  counted per worker (:class:`BadSampleCounter`); each batch reports in ``num_bad`` how many its
  worker skipped since its previous batch (their sum over batches is the total), and a worker raises
  :class:`TooManyBadSamples` once its bad fraction passes ``max_bad_fraction``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import random
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.filters import shuffle
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from sam_engine.data.images import ImageDecodeError, open_image
from sam_engine.data.records import (
    MASK_DECODE_BYTES,
    RecordError,
    decode_masks,
    mask_areas,
    rle_problem,
    validate_record,
)
from sam_engine.data.shards import integrity_problem, list_shards, shard_sample_counts
from sam_engine.transforms import PIXEL_MEAN, PIXEL_STD, normalize_and_pad, preprocess_shape
from sam_engine.utils.json_input import parse_json

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png")

_MEAN = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
_STD = torch.tensor(PIXEL_STD).view(3, 1, 1)


class SampleError(ValueError):
    """A sample that cannot become a training example; the message names shard, key and field."""


class TooManyBadSamples(RuntimeError):
    """More bad samples than ``max_bad_fraction`` allows."""


# ---------------------------------------------------------------------------------------------------------
# Examples and batches
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Example:
    """One image in the model frame (S = ``img_size``).

    Attributes:
        image: 3 x S x S float32, normalised, zero-padded at the bottom/right.
        masks: M x h x w bool in the resized (unpadded) frame, M <= ``max_masks_per_image`` (0 if
            every mask was filtered out). A transposed view of column-major storage, the order in
            which RLE decodes (see :class:`Batch`).
        original_size: (H, W) of the image as stored.
        input_size: (h, w) of the resized image inside the padded S x S frame.
        key: the sample key (``__key__``).
    """

    image: torch.Tensor
    masks: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    key: str


@dataclasses.dataclass
class Batch:
    """B examples; masks padded to the batch's largest M.

    ``masks`` is stored column-major (each mask as W x H, the order in which RLE decodes) and
    exposed as a transposed view, so no CPU worker spends time transposing bits: index it as usual,
    ``reshape`` rather than ``view`` it, and call ``.contiguous()`` on the GPU if an op needs it
    (``SamDataModule`` does so after moving the batch). ``to`` and ``pin_memory`` keep the layout.

    Attributes:
        image: B x 3 x S x S float32.
        masks: B x M x S x S bool, zero-padded; ``masks[b, m]`` is meaningful where ``mask_valid[b, m]``.
        mask_valid: B x M bool.
        num_masks: B int64.
        original_size: B x 2 int64, (H, W).
        input_size: B x 2 int64, (h, w).
        keys: B sample keys.
        num_bad: bad samples the producing worker skipped since its previous batch (log its sum).
    """

    image: torch.Tensor
    masks: torch.Tensor
    mask_valid: torch.Tensor
    num_masks: torch.Tensor
    original_size: torch.Tensor
    input_size: torch.Tensor
    keys: list[str]
    num_bad: int = 0

    def __len__(self) -> int:
        return len(self.keys)

    def _map_tensors(self, fn) -> Batch:
        tensors = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: fn(v) for k, v in tensors.items() if torch.is_tensor(v)})

    def to(self, device, non_blocking: bool = False) -> Batch:
        return self._map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Called by ``DataLoader(pin_memory=True)``."""
        return self._map_tensors(torch.Tensor.pin_memory)


def _batch_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Zeros. Inside a DataLoader worker they are allocated in shared memory, as ``default_collate``
    does, so handing the batch to the main process copies nothing; a new shared-memory file reads as
    zeros (POSIX ``ftruncate``), so it is not cleared again."""
    if get_worker_info() is None:
        return torch.zeros(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.tensor([], dtype=dtype).set_(storage).view(shape)


def collate(examples: Sequence[Example]) -> Batch:
    """Stack examples; masks are zero-padded to S x S and to the largest M, flagged in ``mask_valid``."""
    counts = torch.tensor([len(e.masks) for e in examples], dtype=torch.int64)
    size = examples[0].image.shape[-1]
    columns = _batch_zeros((len(examples), int(counts.max()), size, size), torch.bool)  # [b, m, x, y]
    for i, example in enumerate(examples):
        h, w = example.input_size
        columns[i, : len(example.masks), :w, :h] = example.masks.transpose(1, 2)  # in storage order: fast
    masks = columns.transpose(2, 3)
    image = _batch_zeros((len(examples), 3, size, size), torch.float32)
    return Batch(
        image=torch.stack([e.image for e in examples], out=image),
        masks=masks,
        mask_valid=torch.arange(masks.shape[1])[None] < counts[:, None],
        num_masks=counts,
        original_size=torch.tensor([e.original_size for e in examples], dtype=torch.int64),
        input_size=torch.tensor([e.input_size for e in examples], dtype=torch.int64),
        keys=[e.key for e in examples],
    )


# ---------------------------------------------------------------------------------------------------------
# Bad samples
# ---------------------------------------------------------------------------------------------------------


class BadSampleCounter:
    """Counts the samples one worker read and the bad ones it skipped.

    A worker raises :class:`TooManyBadSamples` when ``bad > max_bad_fraction * max(seen, min_seen)``:
    within the first ``min_seen`` samples a fixed allowance, after that a fraction.
    """

    def __init__(self, max_bad_fraction: float, min_seen: int, name: str = "reader"):
        self.max_bad_fraction = max_bad_fraction
        self.min_seen = min_seen
        self.name = name
        self.seen = 0
        self.bad = 0
        self._unreported = 0

    def good(self) -> None:
        self.seen += 1

    def skip(self, error: Exception) -> None:
        """Count a bad sample, warn with its error (which names shard, key and field), raise if too many."""
        self.seen += 1
        self.bad += 1
        self._unreported += 1
        log.warning("%s: skipping bad sample: %s", self.name, error)
        if self.bad > self.max_bad_fraction * max(self.seen, self.min_seen):
            raise TooManyBadSamples(
                f"{self.name}: {self.bad} of {self.seen} samples were bad, more than max_bad_fraction="
                f"{self.max_bad_fraction} allows (last: {error})"
            )

    def take_unreported(self) -> int:
        """Bad samples counted since the previous call."""
        count, self._unreported = self._unreported, 0
        return count

    def log_summary(self) -> None:
        level = logging.WARNING if self.bad else logging.INFO
        log.log(level, "%s: read %d samples, skipped %d bad", self.name, self.seen, self.bad)


# ---------------------------------------------------------------------------------------------------------
# Tar stream -> samples
# ---------------------------------------------------------------------------------------------------------


def _shard_samples(url: str) -> Iterator[dict]:
    """Samples of one shard: ``{"__key__", "__url__", <ext>: bytes}``, grouped by key.

    A key seen earlier in the shard starts a new sample flagged ``__duplicate__``. A shard that cannot
    be read on (missing, truncated, not a tar) ends with a sample flagged ``__error__`` naming the key
    being read, and so does an empty one (an endless resampled stream of empty shards would hang);
    it takes a place in the stream like any sample, so exactly one worker counts it. A shard whose bytes
    are not those its manifest recorded (``shards.integrity_problem``) is that one flagged sample alone.
    """
    seen: set[str] = set()
    current = None
    try:
        problem = integrity_problem(url)
        if problem is not None:
            yield {"__key__": None, "__url__": url, "__error__": f"corrupt shard: {problem}"}
            return
        with contextlib.closing(gopen(url, bufsize=1 << 20)) as stream:
            for member in tar_file_iterator(stream):
                key, ext = base_plus_ext(member["fname"])
                if key is None:
                    continue
                ext = ext.lower()
                if current is None or key != current["__key__"] or ext in current:
                    if current is not None:
                        yield current
                    current = {"__key__": key, "__url__": url, "__duplicate__": key in seen}
                    seen.add(key)
                current[ext] = member["data"]
    except Exception as exc:  # any I/O or tar error ends the shard
        key = None if current is None else current["__key__"]
        yield {"__key__": key, "__url__": url, "__error__": f"unreadable tar: {type(exc).__name__}: {exc}"}
        return
    if current is None:
        yield {"__key__": None, "__url__": url, "__error__": "empty shard"}
    else:
        yield current


def tar_samples(urls: Iterable[str]) -> Iterator[dict]:
    """Samples of the shards in turn (see ``_shard_samples``)."""
    for url in urls:
        yield from _shard_samples(url)


def _resampled(urls: Sequence[str], rng: random.Random) -> Iterator[str]:
    """Shard URLs drawn with replacement, forever (``wds.ResampledShards`` without its own reading of
    rank and worker from the environment: here both are in the caller's seed)."""
    while True:
        yield rng.choice(urls)


def _share(
    samples: Iterable[dict], *, rank: int, world_size: int, worker: int, num_workers: int, batch_size: int
) -> Iterator[dict]:
    """This worker's share of a stream: sample g goes to rank g % R, then its rank-local batch
    (g // R) // B to worker batch % W."""
    for g, sample in enumerate(samples):
        if g % world_size == rank and (g // world_size // batch_size) % num_workers == worker:
            yield sample


# ---------------------------------------------------------------------------------------------------------
# Sample -> example
# ---------------------------------------------------------------------------------------------------------


def _parse_record(sample: dict, where: str) -> dict:
    if "json" not in sample:
        raise SampleError(f"{where}: json: missing")
    try:
        text = sample["json"].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SampleError(f"{where}: json: not UTF-8 ({exc})") from exc
    try:
        record = parse_json(text)
    except json.JSONDecodeError as exc:
        raise SampleError(f"{where}: json: does not parse ({exc})") from exc
    return validate_record(record, where=where)


def _image_bytes(sample: dict, where: str) -> bytes:
    for ext in IMAGE_KEYS:
        if ext in sample:
            return sample[ext]
    raise SampleError(f"{where}: image: missing (expected one of {IMAGE_KEYS})")


def _non_empty(masks: torch.Tensor) -> torch.Tensor:
    """M x ... masks (bool or uint8, any strides) -> M bool, whether each has a pixel set (amax: vectorised,
    unlike any() on bool)."""
    return masks.flatten(1).amax(dim=1) > 0


def _masks_in_frame(segmentations: list[dict], original: tuple[int, int], resized: tuple[int, int]):
    """Decode RLEs and resize them (nearest, as PIL) from (H, W) to the resized frame (h, w).

    When resizing, full-resolution masks are decoded ``MASK_DECODE_BYTES`` at a time, so a huge image
    cannot exhaust memory, and masks that vanish at the smaller size are dropped.

    Returns:
        torch.Tensor: M x h x w bool, a transposed view of W-major storage (see :class:`Batch`).
    """
    (height, width), (h, w) = original, resized
    if (h, w) == (height, width):
        return torch.from_numpy(decode_masks(segmentations, size=original))
    step = max(1, MASK_DECODE_BYTES // (height * width))
    chunks = []
    for start in range(0, len(segmentations), step):
        decoded = decode_masks(segmentations[start : start + step], size=original)
        columns = torch.from_numpy(decoded).transpose(1, 2)
        chunks.append(F.interpolate(columns.view(torch.uint8)[:, None], size=(w, h), mode="nearest-exact"))
    columns = torch.cat(chunks)[:, 0] if chunks else torch.zeros((0, w, h), dtype=torch.uint8)
    return columns[_non_empty(columns)].view(torch.bool).transpose(1, 2)


@dataclasses.dataclass(frozen=True)
class SampleDecoder:
    """Turns one raw sample into an :class:`Example` in the model frame.

    Arguments:
        img_size: S, the model's square input size.
        max_masks_per_image: at most this many masks are sampled per image (SAM used 64).
        max_mask_fraction: masks covering more than this fraction of the image are dropped.
        min_image_side: images with a side shorter than this are bad samples.
        scale_range: (low, high) for SAM's large-scale jitter (SAM: 0.1, 2.0): the resized image and
            its masks are scaled again by a factor drawn uniformly from the range, then a random
            S x S window is cropped where they exceed the frame (masks left empty are dropped) and the
            rest padded. None: no jitter (validation).
    """

    img_size: int
    max_masks_per_image: int = 64
    max_mask_fraction: float = 0.9
    min_image_side: int = 8
    scale_range: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if self.scale_range is None:
            return
        problem = f"scale_jitter must be [low, high] with 0 < low <= high, got {self.scale_range!r}"
        try:
            low, high = (float(value) for value in self.scale_range)
        except (TypeError, ValueError) as exc:
            raise ValueError(problem) from exc
        if not 0 < low <= high:
            raise ValueError(problem)
        object.__setattr__(self, "scale_range", (low, high))  # a tuple of floats, whatever the config gave

    def __call__(self, sample: dict, rng: np.random.Generator) -> Example:
        where = f"{sample['__url__']}:{sample['__key__']}"
        if "__error__" in sample:
            raise SampleError(f"{where}: {sample['__error__']}")
        if sample.get("__duplicate__"):
            raise SampleError(f"{where}: __key__: duplicate key in the shard")
        record = _parse_record(sample, where)
        original = (record["image"]["height"], record["image"]["width"])
        if min(original) < self.min_image_side:
            raise SampleError(
                f"{where}: image: {original[0]}x{original[1]} is smaller than "
                f"min_image_side={self.min_image_side}"
            )
        resized = preprocess_shape(*original, self.img_size)
        if self.scale_range is not None:
            factor = rng.uniform(*self.scale_range)
            resized = (max(1, round(resized[0] * factor)), max(1, round(resized[1] * factor)))
        pixels = self._pixels(_image_bytes(sample, where), where, original, resized)
        try:
            segmentations = self._choose_masks(record["annotations"], original, rng)
            masks = _masks_in_frame(segmentations, original, resized)
        except ValueError as exc:  # pycocotools: "Invalid RLE mask representation"
            raise SampleError(f"{where}: annotations[].segmentation: {exc}") from exc
        if max(resized) > self.img_size:  # (jitter only) a random window of the frame's size
            top, left = (int(rng.integers(0, max(0, side - self.img_size) + 1)) for side in resized)
            window = (slice(top, top + self.img_size), slice(left, left + self.img_size))
            pixels, masks = pixels[:, window[0], window[1]], masks[:, window[0], window[1]]
            masks = masks[_non_empty(masks)]
            resized = tuple(pixels.shape[1:])
        image = normalize_and_pad(pixels[None], self.img_size, _MEAN, _STD)[0]
        return Example(
            image=image, masks=masks, original_size=original, input_size=resized, key=sample["__key__"]
        )

    def _pixels(self, data: bytes, where: str, original: tuple[int, int], resized: tuple[int, int]):
        """3 x h x w uint8: decoded, resized to (h, w) = ``resized`` (PIL bilinear)."""
        try:
            image, full_size = open_image(data, source=where, draft_size=resized)
        except ImageDecodeError as exc:
            raise SampleError(str(exc)) from exc
        if full_size != original:
            raise SampleError(
                f"{where}: image.height/width: the record says {original[0]}x{original[1]} "
                f"but the image is {full_size[0]}x{full_size[1]}"
            )
        h, w = resized
        if image.size != (w, h):
            image = image.resize((w, h), Image.BILINEAR)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)

    def _choose_masks(
        self, annotations: list[dict], original: tuple[int, int], rng: np.random.Generator
    ) -> list[dict]:
        """Segmentations of up to ``max_masks_per_image`` annotations, chosen by their ``area``
        field before any decoding: empty masks and masks over ``max_mask_fraction`` are dropped. A field
        of 0 is checked against the RLE itself (a wrong 0 would drop a real mask); the chosen RLEs' own
        areas (pycocotools, no decoding) then drop masks whose field lied the other way."""
        areas = np.array([a["area"] for a in annotations], dtype=np.float64)
        said_empty = np.flatnonzero(areas <= 0)
        if len(said_empty):
            areas[said_empty] = mask_areas(self._checked([annotations[i]["segmentation"] for i in said_empty],
                                                         original))
        limit = self.max_mask_fraction * original[0] * original[1]
        candidates = np.flatnonzero((areas > 0) & (areas <= limit))
        if len(candidates) > self.max_masks_per_image:
            candidates = rng.choice(candidates, self.max_masks_per_image, replace=False)
        chosen = self._checked([annotations[i]["segmentation"] for i in candidates], original)
        return [rle for rle, area in zip(chosen, mask_areas(chosen), strict=True) if area > 0]

    @staticmethod
    def _checked(rles: list[dict], original: tuple[int, int]) -> list[dict]:
        """The RLEs, each checked to fit ``original`` before pycocotools reads it (it would write past its
        buffer); a bad one raises ValueError naming the problem."""
        for rle in rles:
            problem = rle_problem(rle, *original)
            if problem is not None:
                raise ValueError(problem[1])
        return rles


def _sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """The masks sampled from an image depend on (seed, epoch, key) only, not on rank or worker."""
    return np.random.default_rng([seed, epoch, zlib.crc32(str(key).encode())])


def _decoded(
    samples: Iterable[dict], decoder: SampleDecoder, counter: BadSampleCounter, seed: int, epoch: int
) -> Iterator[Example]:
    for sample in samples:
        try:
            example = decoder(sample, _sample_rng(seed, epoch, sample["__key__"]))
        except (SampleError, RecordError) as exc:
            counter.skip(exc)
            continue
        counter.good()
        yield example


# ---------------------------------------------------------------------------------------------------------
# Batching to an exact count
# ---------------------------------------------------------------------------------------------------------


def _batched(examples: Iterable[Example], batch_size: int) -> Iterator[list[Example]]:
    iterator = iter(examples)
    while batch := list(itertools.islice(iterator, batch_size)):
        yield batch


def _exactly(batches: Iterable[list[Example]], count: int | None, name: str) -> Iterator[list[Example]]:
    """The first ``count`` batches (all if None); a short stream is padded with one-example batches
    repeating its last image without its masks, so that no metric counts an example twice."""
    if count is None:
        yield from batches
        return
    produced = 0
    last = None
    for batch in itertools.islice(batches, count):
        produced += 1
        last = batch[-1]
        yield batch
    if produced < count and last is None:
        raise TooManyBadSamples(
            f"{name}: no usable sample to make the {count} batches that keep DDP ranks in step"
        )
    if count - produced > 1:
        log.warning("%s: %d batches short of the %d expected (bad samples, or a manifest that counts more samples "
                    "than its shards hold); padded with images without masks", name, count - produced, count)
    padding = dataclasses.replace(last, masks=last.masks[:0])
    for _ in range(count - produced):
        yield [padding]


# ---------------------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------------------


def _distributed_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = torch.distributed.get_rank() if initialised else 0
    if world_size is None:
        world_size = torch.distributed.get_world_size() if initialised else 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    return rank, world_size


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class ShardDataset(IterableDataset):
    """Batches of :class:`Batch` read from shards; use with ``DataLoader(batch_size=None)``
    (see :func:`make_loader`). Build it with :func:`make_dataset`.

    ``len()`` is the number of batches each rank gets per epoch (with several ranks, exact; with
    one rank and a finite pass, an upper bound reached when no sample is bad).
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        decoder: SampleDecoder,
        batch_size: int,
        resample: bool,
        steps_per_epoch: int | None,
        num_samples: int | None,
        shuffle_buffer: int,
        seed: int,
        rank: int,
        world_size: int,
        max_bad_fraction: float,
        min_seen: int,
    ):
        super().__init__()
        self.urls = list(urls)
        self.decoder = decoder
        self.batch_size = batch_size
        self.resample = resample
        self.steps_per_epoch = steps_per_epoch
        self.num_samples = num_samples
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.max_bad_fraction = max_bad_fraction
        self.min_seen = min_seen
        self.epoch = -1  # advanced by each iteration in this process (keep DataLoader workers persistent)

    def __len__(self) -> int:
        if self.resample:
            return self.steps_per_epoch
        return math.ceil(math.ceil(self.num_samples / self.world_size) / self.batch_size)

    def _worker_batches(self, worker: int, num_workers: int) -> int | None:
        """Batches this worker must yield so its rank gets ``len(self)`` (None: as many as there are)."""
        if not self.resample and self.world_size == 1:
            return None
        return len(range(worker, len(self), num_workers))

    def _samples(self, worker: int, num_workers: int, rng: random.Random) -> Iterator[dict]:
        """This worker's raw samples: endless random shards when resampling, else its share of one pass."""
        if self.resample:
            return tar_samples(_resampled(self.urls, rng))
        share = dict(rank=self.rank, world_size=self.world_size, worker=worker, num_workers=num_workers)
        return _share(tar_samples(self.urls), batch_size=self.batch_size, **share)

    def __iter__(self) -> Iterator[Batch]:
        worker, num_workers = _worker()
        self.epoch += 1
        epoch = self.epoch if self.resample else 0
        name = f"rank {self.rank} worker {worker}"
        counter = BadSampleCounter(self.max_bad_fraction, self.min_seen, name)
        rng = random.Random(f"{self.seed}-{self.rank}-{worker}-{epoch}")
        samples = self._samples(worker, num_workers, rng)
        if self.shuffle_buffer > 1:
            samples = shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(samples)
        examples = _decoded(samples, self.decoder, counter, self.seed, epoch)
        count = self._worker_batches(worker, num_workers)
        for group in _exactly(_batched(examples, self.batch_size), count, name):
            batch = collate(group)
            batch.num_bad = counter.take_unreported()
            yield batch
        counter.log_summary()


def make_dataset(
    source: str | Path | Sequence[str | Path],
    *,
    img_size: int,
    batch_size: int,
    max_masks_per_image: int = 64,
    max_mask_fraction: float = 0.9,
    min_image_side: int = 8,
    scale_range: Sequence[float] | None = None,
    resample: bool = False,
    steps_per_epoch: int | None = None,
    shuffle_buffer: int = 0,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    max_bad_fraction: float = 0.01,
    min_seen: int = 100,
) -> ShardDataset:
    """Build the reading pipeline over a shard source.

    Arguments:
        source: a shard directory, brace pattern, URL or a list of these (see ``list_shards``).
        img_size: S, the model's square input size.
        batch_size: examples per batch (the last batch of a finite pass may be smaller).
        max_masks_per_image, max_mask_fraction, min_image_side, scale_range: see :class:`SampleDecoder`.
        resample: True for training: shards drawn with replacement forever, ``steps_per_epoch``
            batches per rank per epoch. False for a finite, deterministic pass (validation).
        steps_per_epoch: batches per rank and epoch when resampling.
        shuffle_buffer: samples shuffled through a buffer of this size (0: no shuffling).
        seed: seeds shard draws, shuffling and mask sampling.
        rank, world_size: this process's place in DDP; default to what torch.distributed reports.
        max_bad_fraction, min_seen: a worker stops with :class:`TooManyBadSamples` when its bad
            samples exceed ``max_bad_fraction * max(seen, min_seen)``.
    """
    if resample and not steps_per_epoch:
        raise ValueError("resample=True needs steps_per_epoch (batches per rank per epoch)")
    urls = list_shards(source)
    rank, world_size = _distributed_defaults(rank, world_size)
    return ShardDataset(
        urls,
        decoder=SampleDecoder(img_size, max_masks_per_image, max_mask_fraction, min_image_side, scale_range),
        batch_size=batch_size,
        resample=resample,
        steps_per_epoch=steps_per_epoch,
        num_samples=None if resample else sum(shard_sample_counts(urls)),
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        rank=rank,
        world_size=world_size,
        max_bad_fraction=max_bad_fraction,
        min_seen=min_seen,
    )


def make_loader(dataset: ShardDataset, *, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over a :class:`ShardDataset` (which batches itself).

    Workers are persistent so that each keeps its epoch counter (new shard draws every epoch). They start
    from a fork server, not by forking this process: a process forked while another of its threads (torch's,
    gloo's, wandb's) holds a lock can hang forever inside ``Popen._launch``, and the DDP ranks waiting for its
    batches with it.
    """
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        multiprocessing_context="forkserver" if num_workers > 0 else None,
    )
