"""WebRTC audio processing (echo cancellation, noise suppression, high-pass, AGC), 10 ms frames.

With `linear_filter_ms` set, a linear echo canceller (the Kalman filter or speexdsp's MDF)
runs ahead of the APM (`linear_aec.py`, `cascade.py`), fed the same reverse stream.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass

import numpy as np
from livekit import rtc

from appliance.audio.base import SAMPLE_RATE, SAMPLES_PER_FRAME, Frame
from appliance.audio.cascade import Cascade
from appliance.audio.linear_aec import DEPTH, LinearEchoCanceller, available
from appliance.board_profile import LinearEchoAlgorithm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessingOptions:
    """Which stages run; `echo_cancellation` is off when the board cancels echo itself."""

    echo_cancellation: bool = True
    noise_suppression: bool = True
    high_pass_filter: bool = True
    auto_gain_control: bool = True
    # The linear echo canceller ahead of AEC3: its filter length (0: not run), its adaptive
    # filter, its rate, and the share of its echo estimate subtracted (`DEPTH`: linear_aec.py
    # says why).
    linear_filter_ms: int = 0
    linear_algorithm: LinearEchoAlgorithm = "kalman"
    linear_rate: int = 24000
    linear_depth: float = DEPTH

    @property
    def linear(self) -> bool:
        """Whether the linear pre-stage runs (only ahead of software echo cancellation)."""
        return self.echo_cancellation and self.linear_filter_ms > 0

    @property
    def any(self) -> bool:
        """Whether any stage is on (if none is, frames pass through untouched)."""
        return (
            self.echo_cancellation
            or self.noise_suppression
            or self.high_pass_filter
            or self.auto_gain_control
        )


class _FrameSlot:
    """One preallocated 10 ms frame the APM processes in place, reused for every call."""

    def __init__(self) -> None:
        self.buffer = bytearray(SAMPLES_PER_FRAME * 2)
        self.samples = np.frombuffer(self.buffer, dtype=np.int16)
        self.frame = rtc.AudioFrame(self.buffer, SAMPLE_RATE, 1, SAMPLES_PER_FRAME)


class AudioProcessor:
    """The capture side calls `process_capture`, the playback side `process_render`.

    The two sides run on different threads (WebRTC's APM is built for that); each side has its
    own preallocated frame, so a call copies the samples in once and (capture only) out once.

    `set_active(False)` passes frames through untouched: the idle device plays nothing, so
    there is no echo to cancel, and each 10 ms APM call costs about 1% of a core. Activating
    it again starts a fresh APM, so a call never inherits state from minutes-old audio.
    """

    def __init__(self, options: ProcessingOptions) -> None:
        if options.linear and not available(options.linear_algorithm):
            # speexdsp's filter asked for (the package depends on libspeexdsp1) and missing:
            # the device still cancels echo.
            logger.error("libspeexdsp1 is missing: echo cancellation runs without its linear stage")
            options = dataclasses.replace(options, linear_filter_ms=0)
        self.options = options
        self._apm = self._new_apm()
        self._cascade = self._new_cascade()
        self._capture = _FrameSlot()
        self._render = _FrameSlot()
        self._delay_lock = threading.Lock()
        self._delay_ms = 0
        self._delay_dirty = options.echo_cancellation
        self._delay_apm: rtc.AudioProcessingModule | None = None  # the APM last told the delay
        # The self-test sets a list here to get the unprocessed capture too.
        self.raw_tap: list[Frame] | None = None
        # Tests set a list here to get the reverse stream, each frame with the number of capture
        # frames processed before it: the delay the canceller really faces can be measured.
        self.render_tap: list[tuple[int, Frame]] | None = None
        self._captured = 0

    def _new_apm(self) -> rtc.AudioProcessingModule | None:
        options = self.options
        if not options.any:
            return None
        return rtc.AudioProcessingModule(
            echo_cancellation=options.echo_cancellation,
            noise_suppression=options.noise_suppression,
            high_pass_filter=options.high_pass_filter,
            auto_gain_control=options.auto_gain_control,
        )

    def _new_cascade(self) -> Cascade | None:
        if not self.options.linear:
            return None
        linear = LinearEchoCanceller(
            filter_ms=self.options.linear_filter_ms,
            rate=self.options.linear_rate,
            adaptive=self.options.linear_algorithm,
        )
        linear.depth = self.options.linear_depth
        return Cascade(self._new_apm_or_fail, linear)

    def _new_apm_or_fail(self) -> rtc.AudioProcessingModule:
        apm = self._new_apm()
        assert apm is not None
        return apm

    @property
    def cascade(self) -> Cascade | None:
        """The linear stage and the APMs of the current call (None when off or idle)."""
        return self._cascade

    @property
    def active(self) -> bool:
        """Whether frames go through the APM now."""
        return self._apm is not None

    def set_active(self, active: bool) -> None:
        """Process frames (a fresh APM) or pass them through; called on the event loop.

        The threads read the APM reference once per frame, so a switch lands between frames;
        the capture side tells each new APM the stream delay before its first frame.
        """
        if active and self._apm is None:
            self._cascade = self._new_cascade()
            self._apm = self._new_apm()
        elif not active:
            self._apm = self._delay_apm = self._cascade = None

    @property
    def captured(self) -> int:
        """Capture frames processed (or passed through) so far."""
        return self._captured

    @property
    def stream_delay_ms(self) -> int:
        """The playout-to-capture delay the echo canceller is told."""
        return self._delay_ms

    def set_stream_delay_ms(self, delay_ms: float) -> None:
        """Set the playout-to-capture delay; applied before the next capture frame."""
        value = max(0, min(500, round(delay_ms)))
        with self._delay_lock:
            if value != self._delay_ms:
                self._delay_ms = value
                self._delay_dirty = self.options.echo_cancellation

    def process_render(self, frame: Frame) -> None:
        """Tell the echo canceller what is being sent to the speaker (the frame is not changed)."""
        apm = self._apm
        if apm is None or not self.options.echo_cancellation:
            return
        if self.render_tap is not None:
            self.render_tap.append((self._captured, frame.copy()))
        cascade = self._cascade
        if cascade is not None:
            cascade.render(frame)
            return
        np.copyto(self._render.samples, frame)
        apm.process_reverse_stream(self._render.frame)

    def process_capture(self, frame: Frame) -> Frame:
        """The processed copy of one captured 10 ms frame."""
        if self.raw_tap is not None:
            self.raw_tap.append(frame.copy())
        self._captured += 1
        apm = self._apm
        if apm is None:
            return frame
        cascade = self._cascade
        if cascade is not None:
            return cascade.capture(frame, self._delay_ms)
        if self.options.echo_cancellation and (self._delay_dirty or apm is not self._delay_apm):
            # WebRTC wants the delay before every capture frame when AEC is on; an unchanged
            # value is kept by the APM, so it is sent again only after it changed or to a new APM.
            with self._delay_lock:
                apm.set_stream_delay_ms(self._delay_ms)
                self._delay_dirty = False
                self._delay_apm = apm
        np.copyto(self._capture.samples, frame)
        apm.process_stream(self._capture.frame)
        return self._capture.samples.copy()
