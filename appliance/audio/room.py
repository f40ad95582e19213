"""A simulated room: what the microphone hears of the speaker (delay, attenuation, reflections)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from appliance.audio.base import SAMPLE_RATE, Frame


@dataclass(frozen=True)
class RoomEcho:
    """An echo path: a direct sound after `delay_ms`, reflections, and background noise."""

    delay_ms: float = 30.0
    gain: float = 0.5
    reflections: tuple[tuple[float, float], ...] = ((7.0, 0.3), (19.0, 0.12))
    """(extra delay in ms after the direct sound, gain relative to it)."""
    noise_dbfs: float = -70.0
    seed: int = 1
    sample_rate: int = field(default=SAMPLE_RATE)

    def impulse_response(self) -> npt.NDArray[np.float32]:
        """The path's impulse response (float, at `sample_rate`)."""
        delay = round(self.delay_ms * self.sample_rate / 1000)
        taps = [(delay, self.gain)]
        taps += [
            (delay + round(extra * self.sample_rate / 1000), self.gain * g)
            for extra, g in self.reflections
        ]
        ir = np.zeros(max(t for t, _ in taps) + 1, dtype=np.float32)
        for tap, g in taps:
            ir[tap] += g
        return ir

    def apply(self, speaker: Frame, near_end: Frame | None = None) -> Frame:
        """The microphone signal for a whole recording: echo of `speaker`, plus near-end, noise."""
        n = len(speaker) if near_end is None else max(len(speaker), len(near_end))
        out = np.zeros(n, dtype=np.float32)
        echo = np.convolve(speaker.astype(np.float32), self.impulse_response())[:n]
        out[: len(echo)] += echo
        if near_end is not None:
            out[: len(near_end)] += near_end.astype(np.float32)
        rng = np.random.default_rng(self.seed)
        out += rng.normal(0.0, 32768 * 10 ** (self.noise_dbfs / 20), n).astype(np.float32)
        return np.clip(out, -32768, 32767).astype(np.int16)


class StreamingRoom:
    """The same path applied frame by frame, for a live simulated speaker and microphone."""

    def __init__(self, echo: RoomEcho) -> None:
        self._ir = echo.impulse_response()
        self._history = np.zeros(len(self._ir) - 1, dtype=np.float32)
        self._rng = np.random.default_rng(echo.seed)
        self._noise = 32768 * 10 ** (echo.noise_dbfs / 20)

    def mic(self, speaker_frame: Frame, near_end: Frame) -> Frame:
        """The microphone frame while `speaker_frame` plays and `near_end` is spoken."""
        x = np.concatenate([self._history, speaker_frame.astype(np.float32)])
        echo = np.convolve(x, self._ir, mode="valid")
        self._history = x[len(x) - len(self._history) :] if len(self._history) else self._history
        out = echo + near_end + self._rng.normal(0.0, self._noise, len(near_end))
        return np.clip(out, -32768, 32767).astype(np.int16)
