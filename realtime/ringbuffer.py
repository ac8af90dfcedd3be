"""A single-producer single-consumer ring of audio samples, and the master clock.

The producer is an audio callback: it must never allocate, block or wait. ``write``
copies into a preallocated array and then advances a monotonically increasing write
counter; the consumer reads up to that counter and advances its own. No lock is taken
(one Python integer store is atomic under the GIL; the data is in place before the
counter moves). When the consumer falls more than ``capacity`` behind, the oldest
samples are overwritten: the consumer notices, skips to the oldest valid sample and
counts the lost samples as an overrun -- memory never grows.

The write counter is the number of samples captured since the stream started: the
master clock everything else derives its time from.
"""

from __future__ import annotations

import numpy as np


class AudioRing:
    """Preallocated mono float32 ring buffer with monotonic sample counters."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"AudioRing capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self._buf = np.zeros(self.capacity, dtype=np.float32)
        self._written = 0  # samples ever written (the clock); only the producer moves it
        self._read = 0  # samples ever consumed or skipped; only the consumer moves it
        self.overrun_samples = 0  # samples lost because the consumer was too slow

    # producer side (audio thread) -------------------------------------------------
    def write(self, x: np.ndarray) -> None:
        """Copy ``x`` (1-D float32) in. Never allocates or blocks."""
        n = len(x)
        if n > self.capacity:  # keep only what fits; the rest counts as overrun
            x = x[n - self.capacity:]
            n = self.capacity
        w = self._written
        i = w % self.capacity
        k = min(n, self.capacity - i)
        self._buf[i: i + k] = x[:k]
        if k < n:
            self._buf[: n - k] = x[k:]
        self._written = w + n  # publish after the data is in place

    # consumer side -------------------------------------------------------------------
    @property
    def written(self) -> int:
        """Samples captured since the start: the master clock."""
        return self._written

    @property
    def position(self) -> int:
        """Absolute index of the next sample ``read`` returns."""
        return self._read

    def available(self) -> int:
        return min(self._written - self._read, self.capacity)

    def read(self, max_samples: int | None = None) -> tuple[np.ndarray, int]:
        """Take what is there (up to ``max_samples``): ``(samples, start_index)``.

        ``start_index`` is the clock position of ``samples[0]``; after an overrun it
        jumps forward (the gap is in ``overrun_samples``).
        """
        w = self._written
        lag = w - self._read
        if lag > self.capacity:  # overwritten before we got to it
            skipped = lag - self.capacity
            self.overrun_samples += skipped
            self._read += skipped
            lag = self.capacity
        n = lag if max_samples is None else min(lag, max_samples)
        start = self._read
        i = start % self.capacity
        k = min(n, self.capacity - i)
        out = np.empty(n, dtype=np.float32)
        out[:k] = self._buf[i: i + k]
        if k < n:
            out[k:] = self._buf[: n - k]
        # The producer may have lapped us while we copied: drop what is now stale.
        w2 = self._written
        if w2 - start > self.capacity:
            stale = min(n, w2 - start - self.capacity)
            self.overrun_samples += stale
            out = out[stale:]
            start += stale
        self._read = start + len(out)
        return out, start
