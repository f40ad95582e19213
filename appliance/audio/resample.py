"""Streaming rate conversion (LiveKit's libsoxr resampler) and cutting a stream into frames."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from livekit import rtc

from appliance.audio.base import Frame

_EMPTY = np.zeros(0, dtype=np.int16)


class StreamResampler:
    """Mono int16 in at one rate, out at another, with the low-latency ("quick") libsoxr setting."""

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self.from_rate = from_rate
        self.to_rate = to_rate
        # QUICK: about 0.1 ms of latency and steady output per push; the higher qualities hold
        # back tens of milliseconds, which would count against the 20 ms capture budget.
        self._resampler = rtc.AudioResampler(
            from_rate, to_rate, num_channels=1, quality=rtc.AudioResamplerQuality.QUICK
        )

    def push(self, samples: Frame) -> Frame:
        """The resampled samples available so far (possibly none)."""
        frames = self._resampler.push(bytearray(samples))
        if not frames:
            return _EMPTY
        if len(frames) == 1:
            return np.frombuffer(frames[0].data, dtype=np.int16)
        return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])


class Reframer:
    """Cuts a stream of samples into frames of exactly `size`; passes aligned input through."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._pending = np.zeros(size, dtype=np.int16)
        self._fill = 0

    def push(self, samples: Frame) -> Iterator[Frame]:
        """Each complete frame the stream now holds, in order."""
        size = self._size
        if self._fill == 0 and len(samples) == size:
            yield samples  # the usual case: one ALSA period is one 10 ms frame, no copy
            return
        pos = 0
        while pos < len(samples):
            take = min(size - self._fill, len(samples) - pos)
            self._pending[self._fill : self._fill + take] = samples[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == size:
                yield self._pending.copy()
                self._fill = 0
