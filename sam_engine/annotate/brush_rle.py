"""Label Studio's brush masks: its RLE codec (thi.ng's ``rle-pack``, as ``label_studio_sdk.converter.brush``).

A brush mask is an RGBA image of the original size, row-major, stored as one bit stream (a list of byte
values in the task JSON): 32 bits ``num`` (values, 4 per pixel), 5 bits ``word size - 1``, four 4-bit
``run-length widths - 1``, then records. A record is a flag bit, 2 bits choosing a width, ``width`` bits
``n - 1``; flag 1: one word repeated ``n`` times; flag 0: ``n`` words. The mask is the alpha channel
(non-zero inside), as the SDK's ``decode_from_annotation`` reads it.

Encoding is vectorised: a mask's pixel runs become repeat records (all four channels 255 inside, 0
outside, as the SDK's ``mask2rle``), split at 65,536 values, every field's bits laid out at once.
Decoding walks the records (a Python loop over records, not pixels: a repeat record covers a whole run;
the literal records Label Studio's editor writes cover their values with one array slice each).
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 8
RUN_WIDTHS = (3, 4, 8, 16)
CHANNELS = 4
_HEADER = ((32, None), (5, WORD_BITS - 1), *((4, w - 1) for w in RUN_WIDTHS))


class BrushRleError(ValueError):
    """A brush RLE that does not decode to an image of the stated size."""


def _bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Fields (values, each in its width of bits, most significant first) -> one flat 0/1 uint8 array."""
    widths = widths.astype(np.int64)
    ends = np.cumsum(widths)
    field = np.repeat(np.arange(len(widths)), widths)
    shift = ends[field] - 1 - np.arange(ends[-1] if len(ends) else 0)  # bit position within its field
    return ((values.astype(np.int64)[field] >> shift) & 1).astype(np.uint8)


def encode_brush(mask: np.ndarray) -> list[int]:
    """H x W bool -> Label Studio's brush RLE (byte values) of the RGBA image, 255 inside, 0 outside."""
    flat = np.asarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        raise ValueError("an empty image has no brush RLE")
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    lengths = np.diff(np.r_[starts, flat.size]) * CHANNELS  # values per run, 4 per pixel
    values = np.where(flat[starts], 255, 0)
    pieces = -(-lengths // 2**16)  # runs longer than the widest record split into 65,536-value pieces
    run = np.repeat(np.arange(len(lengths)), pieces)
    first = np.cumsum(pieces) - pieces
    piece_lengths = np.minimum(lengths[run] - (np.arange(len(run)) - first[run]) * 2**16, 2**16)
    width_index = np.searchsorted(2 ** np.array(RUN_WIDTHS), piece_lengths)  # smallest width that holds n - 1
    widths = np.array(RUN_WIDTHS)[width_index]
    record_values = np.stack([np.ones_like(width_index), width_index, piece_lengths - 1, values[run]], axis=1)
    record_widths = np.stack([np.ones_like(widths), np.full_like(widths, 2), widths,
                              np.full_like(widths, WORD_BITS)], axis=1)
    header_values = np.array([flat.size * CHANNELS if v is None else v for _, v in _HEADER])
    header_widths = np.array([w for w, _ in _HEADER])
    bits = _bits(np.r_[header_values, record_values.ravel()], np.r_[header_widths, record_widths.ravel()])
    return np.packbits(bits).tolist()


class _BitReader:
    """Reads big-endian fields of a bit stream: small ones from a window of its bytes, many at once from
    its bits unpacked once."""

    def __init__(self, data: bytes):
        self.data = data
        self.bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        self.position = 0

    def _advance(self, width: int) -> int:
        start, self.position = self.position, self.position + width
        if self.position > len(self.bits):
            raise BrushRleError("the RLE ends inside a record")
        return start

    def read(self, width: int) -> int:
        start = self._advance(width)
        window = int.from_bytes(self.data[start >> 3 : (self.position + 7) >> 3], "big")
        return (window >> ((-self.position) % 8)) & ((1 << width) - 1)

    def words(self, count: int, width: int) -> np.ndarray:
        """The next ``count`` fields of ``width`` bits, as int64."""
        start = self._advance(count * width)
        fields = self.bits[start : self.position].reshape(count, width).astype(np.int64)
        return fields @ (1 << np.arange(width - 1, -1, -1, dtype=np.int64))


def decode_brush(rle: list[int], height: int, width: int) -> np.ndarray:
    """Label Studio's brush RLE -> H x W bool (alpha > 0).

    Raises:
        BrushRleError: not a list of byte values, a stream that ends early or runs past its length, or a
            length other than ``height x width x 4``.
    """
    if not isinstance(rle, list) or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256
                                            for b in rle):
        raise BrushRleError("the RLE is not a list of byte values")
    reader = _BitReader(bytes(rle))
    total = reader.read(32)
    if total != height * width * CHANNELS:
        raise BrushRleError(f"the RLE holds {total} values, the image {height}x{width}x{CHANNELS} needs "
                            f"{height * width * CHANNELS}")
    word = reader.read(5) + 1
    run_widths = [reader.read(4) + 1 for _ in range(4)]
    out = np.zeros(total, dtype=np.uint8 if word <= 8 else np.uint32)
    i = 0
    while i < total:
        repeat = reader.read(1)
        n = 1 + reader.read(run_widths[reader.read(2)])
        if i + n > total:
            raise BrushRleError(f"a record runs past the image's {total} values")
        out[i : i + n] = reader.read(word) if repeat else reader.words(n, word)
        i += n
    return out.reshape(height, width, CHANNELS)[:, :, 3] > 0
