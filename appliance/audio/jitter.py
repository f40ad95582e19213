"""A small bounded jitter buffer between the agent's audio (event loop) and the playback thread."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from appliance.audio.base import SAMPLES_PER_FRAME, Frame


class JitterBuffer:
    """Frames in from the loop, out to the playback thread; bounded so the delay never grows.

    Playout starts once `prefill_frames` are queued. When the queue runs dry during playout the
    reader gets silence and an underrun is counted; when it is full the oldest frame is dropped
    (counted as an overflow), so the buffered delay stays at most `max_frames`.
    The playback thread may sleep in `wait_for_audio` while nothing is queued to play.
    """

    def __init__(self, *, prefill_frames: int = 2, max_frames: int = 4) -> None:
        if not 0 < prefill_frames <= max_frames:
            raise ValueError("need 0 < prefill_frames <= max_frames")
        self.prefill_frames = prefill_frames
        self.max_frames = max_frames
        self.underruns = 0
        self.overflows = 0
        self.frames_in = 0
        self._frames: deque[Frame] = deque()
        self._lock = threading.Lock()
        self._audio = threading.Condition(self._lock)
        self._playing = False
        self._silence = np.zeros(SAMPLES_PER_FRAME, dtype=np.int16)
        self._silence.setflags(write=False)

    def put(self, frame: Frame) -> None:
        """Queue one 10 ms frame; never blocks."""
        with self._lock:
            if len(self._frames) >= self.max_frames:
                self._frames.popleft()
                self.overflows += 1
            self._frames.append(frame)
            self.frames_in += 1
            if len(self._frames) >= self.prefill_frames and not self._playing:
                self._playing = True
                self._audio.notify_all()

    def get(self) -> Frame:
        """The next frame to play, or (read-only) silence; never blocks."""
        with self._lock:
            if self._frames and self._playing:
                return self._frames.popleft()
            if self._playing:
                # Ran dry mid-stream: count it, and wait for a new prefill before playing again.
                self.underruns += 1
                self._playing = False
            return self._silence

    @property
    def playing(self) -> bool:
        """Whether frames are being played out (prefilled and not yet run dry)."""
        with self._lock:
            return self._playing

    def wait_for_audio(self, timeout_s: float) -> bool:
        """Block (playback thread) until there is audio to play; False on timeout or `wake`."""
        with self._lock:
            if not self._playing:
                self._audio.wait(timeout_s)
            return self._playing

    def wake(self) -> None:
        """Release a thread blocked in `wait_for_audio` (when the device is being closed)."""
        with self._lock:
            self._audio.notify_all()

    def clear(self) -> None:
        """Drop whatever is queued (e.g. when the call ends or the device is reopened)."""
        with self._lock:
            self._frames.clear()
            self._playing = False

    @property
    def depth(self) -> int:
        """Frames queued right now."""
        with self._lock:
            return len(self._frames)
