"""The playout-to-capture delay told to the echo canceller: the device's figures, held steady."""

from __future__ import annotations

from collections import deque

import numpy as np

# Per-frame figures kept for each side (2 s of 10 ms frames), and how far the held value may be
# from their medians before it moves: buffers that fill and drain by a period or two within a
# call must not make the canceller's delay jump.
WINDOW_FRAMES = 200
HOLD_MS = 10.0


class StreamDelay:
    """Median of the playback and capture buffering plus the configured acoustic path.

    The playback side is what is queued in the device after a frame went to the reverse
    stream (buffer size minus space available); the capture side is what was waiting in the
    capture buffer, plus the period just read. Each is a median over the last 2 s; the value
    handed out moves only when the total moved by more than `hold_ms`, so within a call it is
    one number unless the device's buffering really changed (an underrun, a restart).
    """

    def __init__(self, *, acoustic_ms: float, hold_ms: float = HOLD_MS) -> None:
        self.acoustic_ms = acoustic_ms
        self.hold_ms = hold_ms
        self._playback: deque[float] = deque(maxlen=WINDOW_FRAMES)
        self._capture: deque[float] = deque(maxlen=WINDOW_FRAMES)
        self._held: float | None = None
        self.changes = 0

    def add_playback(self, ms: float) -> None:
        """One playback figure (written by the playback thread)."""
        self._playback.append(ms)

    def add_capture(self, ms: float) -> None:
        """One capture figure (written by the capture thread)."""
        self._capture.append(ms)

    @property
    def measured_ms(self) -> float:
        """The medians' sum plus the acoustic path, now (0 for a side with no figures yet)."""
        play = float(np.median(self._playback)) if self._playback else 0.0
        cap = float(np.median(self._capture)) if self._capture else 0.0
        return play + cap + self.acoustic_ms

    def value_ms(self) -> float:
        """The delay to tell the canceller: the held value, moved only past `hold_ms`."""
        measured = self.measured_ms
        if self._held is None or abs(measured - self._held) > self.hold_ms:
            if self._held is not None:
                self.changes += 1
            self._held = measured
        return self._held
