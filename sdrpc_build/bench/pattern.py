"""The bench's test data: reproducible, made one window at a time (:class:`Pattern`).

The test data is never held whole: :class:`Pattern` makes it one window
(:data:`WINDOW` bytes) at a time in one reusable buffer, so a 256 MiB transfer
needs a 4 MiB buffer.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

__all__ = ["WINDOW", "Pattern", "payload"]

_BLOCK = 1 << 20
WINDOW = 4 << 20  # bytes of test data made / received at a time


class Pattern:
    """Reproducible test data, made one window at a time in one reusable buffer.

    The data: a random 1 MiB block repeated, each copy stamped with its index in
    its first 8 bytes (so data landing at the wrong offset is caught).
    """

    def __init__(self, window: int = WINDOW, seed: int = 0x5D49C) -> None:
        if window <= 0 or window % _BLOCK:
            raise ValueError(f"window must be a positive multiple of {_BLOCK}")
        block = random.Random(seed).getrandbits(_BLOCK * 8).to_bytes(_BLOCK, "little")
        self.buffer = bytearray(block * (window // _BLOCK))
        self._view = memoryview(self.buffer)
        self.window = window

    def chunk(self, offset: int, length: int) -> memoryview:
        """Bytes ``[offset, offset + length)`` of the data (``offset`` a multiple of
        the window, ``length`` at most one window). Valid until the next call."""
        if offset % self.window or not 0 <= length <= self.window:
            raise ValueError("chunk() takes window-aligned offsets and at most one window")
        first = offset // _BLOCK
        for j in range(0, -(-length // _BLOCK)):
            self._view[j * _BLOCK : j * _BLOCK + 8] = (first + j).to_bytes(8, "little")
        return self._view[:length]

    def chunks(self, size: int) -> Iterator[memoryview]:
        """The first ``size`` bytes, window by window."""
        for offset in range(0, size, self.window):
            yield self.chunk(offset, min(self.window, size - offset))


def payload(nbytes: int, seed: int = 0x5D49C) -> bytearray:
    """The first ``nbytes`` of the test data, whole (for tests; the bench streams)."""
    out = bytearray()
    for chunk in Pattern(seed=seed).chunks(nbytes):
        out += chunk
    return out
