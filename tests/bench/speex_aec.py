"""speexdsp's echo canceller and residual-echo suppressor as an `AudioProcessor`, for comparison.

Loaded with ctypes from Debian's libspeexdsp1 (no new Python dependency). Its suppression
levels are exposed (`SPEEX_PREPROCESS_SET_ECHO_SUPPRESS`, `..._ACTIVE`), which is what the
double-talk comparison with WebRTC's AEC3 is about. The capture thread runs the whole canceller
in lockstep: each captured frame is paired with the frame played `delay` frames earlier (the
device's own delay figure), and the adaptive filter covers the rest.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections import deque

import numpy as np

from appliance.audio.base import SAMPLE_RATE, SAMPLES_PER_FRAME, Frame
from appliance.audio.processing import AudioProcessor, ProcessingOptions

ECHO_SET_SAMPLING_RATE = 24
PREPROCESS_SET_DENOISE = 0
PREPROCESS_SET_ECHO_STATE = 24
PREPROCESS_SET_ECHO_SUPPRESS = 20
PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE = 22

_Int16p = ctypes.POINTER(ctypes.c_int16)


def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("speexdsp") or "libspeexdsp.so.1"
    lib = ctypes.CDLL(name)
    lib.speex_echo_state_init.restype = ctypes.c_void_p
    lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.speex_echo_cancellation.argtypes = [ctypes.c_void_p, _Int16p, _Int16p, _Int16p]
    lib.speex_echo_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.speex_preprocess_state_init.restype = ctypes.c_void_p
    lib.speex_preprocess_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.speex_preprocess_run.argtypes = [ctypes.c_void_p, _Int16p]
    lib.speex_preprocess_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.speex_echo_state_destroy.argtypes = [ctypes.c_void_p]
    lib.speex_preprocess_state_destroy.argtypes = [ctypes.c_void_p]
    return lib


class SpeexProcessor(AudioProcessor):
    """Speex MDF echo canceller + preprocessor (noise and residual echo suppression)."""

    def __init__(
        self,
        options: ProcessingOptions,
        *,
        filter_ms: int = 500,
        suppress_db: int = -40,
        suppress_active_db: int = -15,
    ) -> None:
        super().__init__(ProcessingOptions(False, False, False, False))
        self.options = options
        self._lib = _lib()
        self._filter = filter_ms * SAMPLE_RATE // 1000
        self._suppress = (suppress_db, suppress_active_db)
        self._played: deque[Frame] = deque(maxlen=100)
        self._lock = threading.Lock()
        self._states: tuple[int, int] | None = None
        self._out = np.zeros(SAMPLES_PER_FRAME, dtype=np.int16)
        self._silence = np.zeros(SAMPLES_PER_FRAME, dtype=np.int16)

    def _open(self) -> tuple[int, int]:
        lib = self._lib
        echo = lib.speex_echo_state_init(SAMPLES_PER_FRAME, self._filter)
        rate = ctypes.c_int(SAMPLE_RATE)
        lib.speex_echo_ctl(echo, ECHO_SET_SAMPLING_RATE, ctypes.byref(rate))
        pre = lib.speex_preprocess_state_init(SAMPLES_PER_FRAME, SAMPLE_RATE)
        lib.speex_preprocess_ctl(pre, PREPROCESS_SET_ECHO_STATE, ctypes.c_void_p(echo))
        denoise = ctypes.c_int(int(self.options.noise_suppression))
        lib.speex_preprocess_ctl(pre, PREPROCESS_SET_DENOISE, ctypes.byref(denoise))
        for request, value in zip(
            (PREPROCESS_SET_ECHO_SUPPRESS, PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE),
            self._suppress,
            strict=True,
        ):
            level = ctypes.c_int(value)
            lib.speex_preprocess_ctl(pre, request, ctypes.byref(level))
        return echo, pre

    @property
    def active(self) -> bool:
        return self._states is not None

    def set_active(self, active: bool) -> None:
        if active and self._states is None:
            self._states = self._open()

    def process_render(self, frame: Frame) -> None:
        if self.render_tap is not None:
            self.render_tap.append((self._captured, frame.copy()))
        with self._lock:
            self._played.append(frame.copy())

    def process_capture(self, frame: Frame) -> Frame:
        if self.raw_tap is not None:
            self.raw_tap.append(frame.copy())
        self._captured += 1
        states = self._states
        if states is None:
            return frame
        echo, pre = states
        # The frame played `delay` frames ago is the reference for this capture.
        lag = max(0, self.stream_delay_ms // 10)
        with self._lock:
            played = list(self._played)
        reference = played[-1 - lag] if len(played) > lag else self._silence
        rec = np.ascontiguousarray(frame, dtype=np.int16)
        ref = np.ascontiguousarray(reference, dtype=np.int16)
        out = np.empty(SAMPLES_PER_FRAME, dtype=np.int16)
        self._lib.speex_echo_cancellation(
            echo,
            rec.ctypes.data_as(_Int16p),
            ref.ctypes.data_as(_Int16p),
            out.ctypes.data_as(_Int16p),
        )
        self._lib.speex_preprocess_run(pre, out.ctypes.data_as(_Int16p))
        return out
