"""A linear echo canceller as a stage ahead of WebRTC's AEC3.

Its adaptive filter is the frequency-domain Kalman filter of `kalman.py` (the default) or
speexdsp's MDF through ctypes. Only the adaptive filter runs (no residual-echo suppressor, no
preprocessor): it subtracts its estimate of the echo and nothing else, so a person talking
over the agent passes at full level, and AEC3 after it sees a much weaker echo, which its
suppressor (what cuts the person in double talk) then has far less of to act on. See
docs/audio.md, "Linear pre-stage".

The filter is only as good as its alignment: it must start just before the echo's direct
sound. The stage finds that delay itself (GCC-PHAT between what was played and what was
captured), because what ALSA reports misses a sound server's buffering; until it has, it
passes the capture through. At 16 kHz (the default) the capture and the reference are
band-limited and decimated by 3, the canceller's echo estimate is interpolated back and
subtracted from the 48 kHz capture, delayed by the two filters' 2 ms: the echo above 7 kHz is
left to AEC3, and the filter costs a third.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
import weakref
from typing import Any

import numpy as np
import numpy.typing as npt

from appliance.audio.base import FRAME_MS, SAMPLE_RATE, SAMPLES_PER_FRAME, Frame
from appliance.audio.kalman import KalmanEchoFilter
from appliance.board_profile import LinearEchoAlgorithm
from appliance.errors import AudioDeviceError

_ECHO_SET_SAMPLING_RATE = 24
_Int16p = ctypes.POINTER(ctypes.c_int16)
Float = npt.NDArray[np.float32]

# The share of the linear stage's echo estimate that is subtracted. Less leaves AEC3 more echo
# to calibrate its suppressor on: 0.8 gave 1-3 dB more steady-state echo reduction offline, but
# in the closed loop it cut a person 6 dB below the echo by 3.1-3.8 dB in one script where all
# of it gave 2.0-3.1 dB (docs/audio.md); the person is what the stage is for.
DEPTH = 1.0
# The filter starts this long before the echo's direct sound (the estimate's own error, and
# the pre-ringing of the speaker and the band-limiting filters).
MARGIN_MS = 2.0
# The reference stream the delay is measured from: what was rendered this long before each
# capture frame was processed (a cushion against the two threads' wake-up jitter).
CUSHION_MS = 20.0
# Delays searched, beyond the cushion; render history kept for pairing.
MAX_DELAY_MS = 480.0
HISTORY_S = 2.0
# The delay estimate: over this much audio, every `ESTIMATE_EVERY` frames (every
# `LOCKED_ESTIMATE_EVERY` once locked); `LOCK_AFTER` in a row within `AGREE_MS` of each other
# lock it, and as many agreeing estimates elsewhere move it (an underrun shifted the stream).
ESTIMATE_S = 0.5
ESTIMATE_EVERY = 10
LOCKED_ESTIMATE_EVERY = 100
AGREE_MS = 1.0
LOCK_AFTER = 3
# A correlation peak must stand this far above the correlation's spread to count.
PEAK_CONFIDENCE = 10.0
BAND_HZ = (150.0, 6500.0)
# A render stream that paused this long (the speaker rested) is paired again from the clock.
RESYNC_GAP_S = 0.05
# Band-limiting filter for the 16 kHz stage: a Kaiser-windowed sinc at 48 kHz, odd length.
_TAPS = 97
_CUTOFF = 0.45  # of the stage's rate
_KAISER_BETA = 7.0
RATES = (16000, 24000, 48000)
Int16s = npt.NDArray[np.int16]


class LinearEchoUnavailableError(AudioDeviceError):
    """libspeexdsp (Debian's libspeexdsp1), which the "speexdsp" filter needs, could not load."""


_lib_cache: Any = None


def _load() -> Any:
    global _lib_cache
    if _lib_cache is not None:
        return _lib_cache
    name = ctypes.util.find_library("speexdsp") or "libspeexdsp.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise LinearEchoUnavailableError(
            f"the linear echo filter needs libspeexdsp1: {exc}"
        ) from exc
    lib.speex_echo_state_init.restype = ctypes.c_void_p
    lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.speex_echo_state_destroy.argtypes = [ctypes.c_void_p]
    lib.speex_echo_state_reset.argtypes = [ctypes.c_void_p]
    lib.speex_echo_cancellation.argtypes = [ctypes.c_void_p, _Int16p, _Int16p, _Int16p]
    lib.speex_echo_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    _lib_cache = lib
    return lib


def available(adaptive: LinearEchoAlgorithm) -> bool:
    """Whether the stage can run here with this filter (speexdsp's needs libspeexdsp)."""
    if adaptive == "kalman":
        return True
    try:
        _load()
    except LinearEchoUnavailableError:
        return False
    return True


def _lowpass(rate: int) -> Float:
    n = np.arange(_TAPS) - (_TAPS - 1) / 2
    fc = _CUTOFF * rate / SAMPLE_RATE
    h = 2 * fc * np.sinc(2 * fc * n) * np.kaiser(_TAPS, _KAISER_BETA)
    taps: Float = (h / h.sum()).astype(np.float32)
    return taps


class _Fir:
    """A streaming FIR at 48 kHz whose output is kept at every `step`-th sample (frame-aligned)."""

    def __init__(self, taps: Float, step: int) -> None:
        self._taps = taps.astype(np.float32)
        self._step = step
        self._buf = np.zeros(len(taps) - 1 + SAMPLES_PER_FRAME, dtype=np.float32)

    def push(self, x: Float) -> Float:
        keep = len(self._taps) - 1
        self._buf[:keep] = self._buf[-keep:]
        self._buf[keep:] = x
        out: Float = np.convolve(self._buf, self._taps, "valid")[:: self._step]
        return out


def gcc_phat_delay(reference: Float, captured: Float, rate: int, max_lag: int) -> int | None:
    """Samples by which `captured` lags `reference` (0..max_lag), or None without a clear peak.

    `reference` starts `max_lag` samples before `captured` and is that much longer.
    """
    size = 1 << (len(reference) + len(captured) - 1).bit_length()
    spectrum = np.fft.rfft(captured, size) * np.conj(np.fft.rfft(reference, size))
    freqs = np.fft.rfftfreq(size, 1 / rate)
    spectrum[(freqs < BAND_HZ[0]) | (freqs > BAND_HZ[1])] = 0
    spectrum /= np.abs(spectrum) + 1e-9
    corr = np.fft.irfft(spectrum, size)
    # captured[n] ~ reference[n + max_lag - d]: the correlation peaks at lag d - max_lag.
    lags = corr[np.arange(-max_lag, 1)]
    peak = int(np.argmax(lags))
    spread = float(np.std(corr)) + 1e-12
    if lags[peak] < PEAK_CONFIDENCE * spread:
        return None
    return peak


class _SpeexFilter:
    """speexdsp's MDF adaptive filter."""

    def __init__(self, block: int, taps: int, rate: int) -> None:
        self._lib = _load()
        self._state: int = self._lib.speex_echo_state_init(block, taps)
        value = ctypes.c_int(rate)
        self._lib.speex_echo_ctl(self._state, _ECHO_SET_SAMPLING_RATE, ctypes.byref(value))
        # Freed when the last thread lets go of the stage, never under a thread still using it.
        weakref.finalize(self, self._lib.speex_echo_state_destroy, self._state)

    def cancel(self, captured: Int16s, reference: Int16s, out: Int16s) -> None:
        """`out` = the captured block less the filter's echo estimate; the filter adapts."""
        self._lib.speex_echo_cancellation(
            self._state,
            captured.ctypes.data_as(_Int16p),
            reference.ctypes.data_as(_Int16p),
            out.ctypes.data_as(_Int16p),
        )

    def reset(self) -> None:
        self._lib.speex_echo_state_reset(self._state)


class _KalmanFilter:
    """The frequency-domain Kalman filter (kalman.py): numpy only."""

    def __init__(self, block: int, taps: int) -> None:
        self._kalman = KalmanEchoFilter(block, taps)

    def cancel(self, captured: Int16s, reference: Int16s, out: Int16s) -> None:
        """`out` = the captured block less the filter's echo estimate; the filter adapts."""
        error = self._kalman.process(reference, captured)
        np.copyto(out, np.clip(np.rint(error), -32768, 32767), casting="unsafe")

    def reset(self) -> None:
        self._kalman.reset()


class LinearEchoCanceller:
    """One call's linear stage: `render` on the playback thread, `capture` on the capture thread.

    The rendered reference is a stream of samples at the stage's rate. Capture sample k is
    paired with render sample k + base - align: `base` is set from the clock when the render
    stream starts (or restarts after a pause), what was rendered `CUSHION_MS` before; `align`
    is the measured echo delay beyond that, less `MARGIN_MS`. Both are counts, so thread
    wake-up jitter never moves the echo path under the filter.
    """

    def __init__(
        self, *, filter_ms: int, rate: int = 16000, adaptive: LinearEchoAlgorithm = "kalman"
    ) -> None:
        if rate not in RATES:
            raise ValueError(f"the linear echo filter runs at one of {RATES} Hz")
        self.rate = rate
        self.filter_ms = filter_ms
        self._n = rate * FRAME_MS // 1000
        taps = filter_ms * rate // 1000
        self._filter: _SpeexFilter | _KalmanFilter = (
            _KalmanFilter(self._n, taps)
            if adaptive == "kalman"
            else _SpeexFilter(self._n, taps, rate)
        )
        self._step = SAMPLE_RATE // rate
        if self._step > 1:
            h = _lowpass(rate)
            self._cap_fir = _Fir(h, self._step)
            self._ref_fir = _Fir(h, self._step)
            self._interp = _Fir(h * self._step, 1)
            self._stuffed = np.zeros(SAMPLES_PER_FRAME, dtype=np.float32)
            # The capture as it was (_TAPS - 1) samples ago: the two filters' delay.
            self._cap_delay = np.zeros(_TAPS - 1 + SAMPLES_PER_FRAME, dtype=np.float32)
        # The render stream at the stage's rate, a ring indexed by absolute sample number.
        self._ring = np.zeros(int(HISTORY_S * rate), dtype=np.int16)
        self._written = 0
        self._written_at = 0.0
        self._lock = threading.Lock()
        self._resync = True
        self._base = 0
        # The capture stream at the stage's rate, for the delay estimate.
        self._history = np.zeros(int(ESTIMATE_S * rate), dtype=np.float32)
        self._captured = 0
        self._rec = np.zeros(self._n, dtype=np.int16)
        self._err = np.zeros(self._n, dtype=np.int16)
        self._max_lag = int(MAX_DELAY_MS * rate / 1000)
        self.align: int | None = None  # samples; None until the delay is measured
        self._candidates: list[int] = []
        self.depth = DEPTH
        self.cpu_s = 0.0  # the capture side's CPU time so far (thread time)
        self.frames = 0
        self.locks = 0  # how often the filter was (re)aligned
        self.locked_at: list[int] = []

    @property
    def delay_ms(self) -> float | None:
        """The echo delay the stage measured, from a frame's render to its capture (or None)."""
        if self.align is None:
            return None
        return (self.align * 1000 / self.rate) + MARGIN_MS + CUSHION_MS

    def render(self, frame: Frame) -> None:
        """The frame going to the speaker now (playback thread)."""
        now = time.monotonic()
        if self._step > 1:
            ref = self._ref_fir.push(frame.astype(np.float32))
            samples = np.clip(np.rint(ref), -32768, 32767).astype(np.int16)
        else:
            samples = frame
        size = len(self._ring)
        with self._lock:
            if now - self._written_at > RESYNC_GAP_S:
                self._resync = True
            at = self._written % size
            self._ring[at : at + self._n] = samples  # the ring is a whole number of frames
            self._written += self._n
            self._written_at = now

    def _read(self, start: int, count: int) -> npt.NDArray[np.int16]:
        """Render samples [start, start + count); zeros where none were (or are still) kept."""
        out = np.zeros(count, dtype=np.int16)
        size = len(self._ring)
        lo, hi = max(start, self._written - size, 0), min(start + count, self._written)
        if hi > lo:
            idx = np.arange(lo, hi) % size
            out[lo - start : hi - start] = self._ring[idx]
        return out

    def _pair(self) -> tuple[int, bool]:
        """The render sample paired (before alignment) with this capture frame's first sample."""
        with self._lock:
            if self._written == 0:
                return 0, False
            if self._resync:
                ahead = (time.monotonic() - self._written_at) * self.rate
                cushion = CUSHION_MS * self.rate / 1000
                self._base = self._written + round(ahead - cushion) - self._captured * self._n
                self._resync = False
                self.align = None
                self._candidates.clear()
            return self._captured * self._n + self._base, True

    def _estimate(self, start: int) -> None:
        """Measure the echo delay on the last `ESTIMATE_S` of capture; lock or move `align`."""
        count = len(self._history)
        end = start + self._n
        with self._lock:
            reference = self._read(end - count - self._max_lag, count + self._max_lag)
        if not np.any(reference[self._max_lag :]):
            return
        delay = gcc_phat_delay(
            reference.astype(np.float32), self._history, self.rate, self._max_lag
        )
        if delay is None:
            return
        agree = AGREE_MS * self.rate / 1000
        if self.align is not None:
            current = self.align + round(MARGIN_MS * self.rate / 1000)
            if abs(delay - current) <= agree:
                self._candidates.clear()
                return
        self._candidates.append(delay)
        recent = self._candidates[-LOCK_AFTER:]
        if len(recent) == LOCK_AFTER and np.ptp(recent) <= agree:
            self._lock_at(int(np.median(recent)))

    def _lock_at(self, delay: int) -> None:
        self.align = max(0, delay - round(MARGIN_MS * self.rate / 1000))
        self._candidates.clear()
        self._filter.reset()
        self.locks += 1
        self.locked_at.append(self._captured)

    @property
    def captured(self) -> int:
        """Capture frames processed so far."""
        return self._captured

    def capture(self, frame: Frame) -> tuple[Frame, Frame]:
        """(the captured frame less the echo estimate, the captured frame) (capture thread).

        Both come out delayed alike (by the band-limiting filters at 16 and 24 kHz), so they
        can be crossed over; the echo estimate is subtracted only once the delay is locked.
        """
        started = time.thread_time()
        start, playing = self._pair()
        self._captured += 1
        x = frame.astype(np.float32)
        d = self._cap_fir.push(x) if self._step > 1 else x
        np.copyto(self._rec, np.clip(np.rint(d), -32768, 32767), casting="unsafe")
        self._history[: -self._n] = self._history[self._n :]
        self._history[-self._n :] = self._rec
        every = ESTIMATE_EVERY if self.align is None else LOCKED_ESTIMATE_EVERY
        if playing and self._captured % every == 0:
            self._estimate(start)
        estimate: Float | None = None
        if self.align is not None:
            with self._lock:
                ref = self._read(start - self.align, self._n)
            self._filter.cancel(self._rec, ref, self._err)
            estimate = (self._rec.astype(np.float32) - self._err) * self.depth
        if self._step > 1:
            # The echo estimate back at 48 kHz, and the capture delayed to match it.
            keep = _TAPS - 1
            self._cap_delay[:keep] = self._cap_delay[-keep:]
            self._cap_delay[keep:] = x
            delayed = self._cap_delay[:SAMPLES_PER_FRAME]
            plain = delayed.astype(np.int16)
            if estimate is None:
                cleaned = plain
            else:
                self._stuffed[:: self._step] = estimate
                cleaned = _to_int16(delayed - self._interp.push(self._stuffed))
        else:
            plain = frame
            cleaned = frame if estimate is None else _to_int16(x - estimate)
        self.cpu_s += time.thread_time() - started
        self.frames += 1
        return cleaned, plain


def _to_int16(x: Float) -> Frame:
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)
