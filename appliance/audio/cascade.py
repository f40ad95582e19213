"""One call's echo cancellation with the linear pre-stage: a linear filter, then WebRTC's APM.

AEC3 adapts to the echo it is given. The linear stage changes that echo when it locks onto the
echo's delay (a few hundred ms into the call's first speech), and an AEC3 that had already
converged on the full echo then over-cancels for most of a second when the change is abrupt
(the closed loop measured 15-20 dB of echo reduction there, against 35-40 before and after).
So the call starts on a plain APM fed the unprocessed capture, the cascade's APM sees the full
echo until the lock, the linear stage's share of its estimate then grows from none to all over
`RAMP_FRAMES`, and the output crosses over to the cascade once that has settled (about 1.3 s
into the agent's first speech): a person who talks over the agent from then on is kept.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
from livekit import rtc

from appliance.audio.base import SAMPLE_RATE, SAMPLES_PER_FRAME, Frame
from appliance.audio.linear_aec import LinearEchoCanceller

# After the linear stage locks: frames over which its share of the echo estimate grows to all
# of it, frames before the output's crossover to the cascade starts, and the crossover's length.
# In the closed loop (docs/audio.md) a ramp of 0.3 s and a crossover 0.8 s after the lock kept
# the echo reduction of a 3 s wait; a crossover 0.4 s after the lock cost 2-5 dB of it in the
# first 2 s, and a ramp of 0.5 s cut a person interrupting at 1.5 s by 0.5-1 dB more.
RAMP_FRAMES = 30
SETTLE_FRAMES = 80
FADE_FRAMES = 10


class _Apm:
    """An APM with its own preallocated capture frame, told the stream delay when it changes."""

    def __init__(self, apm: rtc.AudioProcessingModule) -> None:
        self.apm = apm
        self._buffer = bytearray(SAMPLES_PER_FRAME * 2)
        self._samples = np.frombuffer(self._buffer, dtype=np.int16)
        self._frame = rtc.AudioFrame(self._buffer, SAMPLE_RATE, 1, SAMPLES_PER_FRAME)
        self._told: int | None = None

    def process(self, frame: Frame, delay_ms: int) -> Frame:
        if delay_ms != self._told:
            self.apm.set_stream_delay_ms(delay_ms)
            self._told = delay_ms
        np.copyto(self._samples, frame)
        self.apm.process_stream(self._frame)
        return self._samples.copy()


class Cascade:
    """The linear stage, the APM behind it, and the plain APM the call's output starts on."""

    def __init__(
        self, new_apm: Callable[[], rtc.AudioProcessingModule], linear: LinearEchoCanceller
    ) -> None:
        self.linear = linear
        self._depth = linear.depth  # the share of the estimate subtracted once ramped up
        self._main = _Apm(new_apm())
        self._plain: _Apm | None = _Apm(new_apm())
        # What the playback thread feeds the reverse stream to: one tuple, swapped whole.
        self._reverse: tuple[rtc.AudioProcessingModule, ...] = (self._main.apm, self._plain.apm)
        self._render_buffer = bytearray(SAMPLES_PER_FRAME * 2)
        self._render_samples = np.frombuffer(self._render_buffer, dtype=np.int16)
        self._render_frame = rtc.AudioFrame(self._render_buffer, SAMPLE_RATE, 1, SAMPLES_PER_FRAME)
        self._render_lock = threading.Lock()
        self.handed_over_at: int | None = None  # capture frame of the crossover's end

    @property
    def apms(self) -> tuple[rtc.AudioProcessingModule, ...]:
        """The APMs running now (two until the handover, then one)."""
        return self._reverse

    def render(self, frame: Frame) -> None:
        """The frame going to the speaker (playback thread): every stage's reverse stream."""
        self.linear.render(frame)
        with self._render_lock:
            np.copyto(self._render_samples, frame)
            for apm in self._reverse:
                apm.process_reverse_stream(self._render_frame)

    def capture(self, frame: Frame, delay_ms: int) -> Frame:
        """The processed copy of one captured frame (capture thread)."""
        linear = self.linear
        ramp = (linear.captured - linear.locked_at[0]) / RAMP_FRAMES if linear.locked_at else 0.0
        linear.depth = self._depth * min(1.0, ramp)
        cleaned, plain_in = linear.capture(frame)
        main_out = self._main.process(cleaned, delay_ms)
        plain = self._plain
        if plain is None:
            return main_out
        plain_out = plain.process(plain_in, delay_ms)
        since = linear.captured - linear.locked_at[0] if linear.locked_at else -1
        if since < SETTLE_FRAMES:
            return plain_out
        weight = min(1.0, (since - SETTLE_FRAMES + 1) / FADE_FRAMES)
        if weight >= 1.0:
            with self._render_lock:
                self._reverse = (self._main.apm,)
            self._plain = None
            self.handed_over_at = linear.captured
            return main_out
        mixed = plain_out * (1.0 - weight) + main_out * weight
        return np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)
