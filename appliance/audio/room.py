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


@dataclass(frozen=True)
class ReverbRoom:
    """A reverberant echo path: a speaker that may saturate, a direct sound, a decaying tail.

    `gain_db` is the whole path's energy gain (speaker sample to microphone sample);
    `rt60_s` how long the tail takes to fall by 60 dB; `speaker_clip` the level (fraction of
    full scale) a small, overdriven speaker saturates at (`None`: linear).
    """

    name: str
    delay_ms: float = 60.0
    gain_db: float = -6.0
    rt60_s: float = 0.35
    direct_to_reverb_db: float = 3.0
    speaker_clip: float | None = None
    noise_dbfs: float = -70.0
    seed: int = 1

    def impulse_response(self) -> npt.NDArray[np.float32]:
        """The path's impulse response at 48 kHz (float)."""
        rng = np.random.default_rng(self.seed)
        delay = round(self.delay_ms * SAMPLE_RATE / 1000)
        tail_n = max(1, round(self.rt60_s * SAMPLE_RATE))
        t = np.arange(tail_n) / SAMPLE_RATE
        tail = rng.normal(0.0, 1.0, tail_n) * np.exp(-6.908 * t / max(self.rt60_s, 1e-3))
        onset = round(0.002 * SAMPLE_RATE)  # the first reflections arrive 2 ms after the direct
        tail[:onset] = 0.0
        tail *= np.sqrt(10 ** (-self.direct_to_reverb_db / 10) / max(float(np.sum(tail**2)), 1e-12))
        ir = np.zeros(delay + tail_n, dtype=np.float64)
        ir[delay] = 1.0
        ir[delay:] += tail
        ir *= 10 ** (self.gain_db / 20) / np.sqrt(np.sum(ir**2))
        return ir.astype(np.float32)

    def speaker(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """What the speaker makes of `x` (int16 scale): soft saturation above `speaker_clip`."""
        if self.speaker_clip is None:
            return x
        level = self.speaker_clip * 32768.0
        saturated: npt.NDArray[np.float32] = (level * np.tanh(x / level)).astype(np.float32)
        return saturated


class BlockConvolver:
    """Convolves a stream with a long impulse response, one fixed-size block at a time.

    Uniformly partitioned overlap-save: the response is cut into blocks, each transformed once;
    a block of input costs one FFT, one inverse FFT and a multiply-add per partition, a few
    percent of a core for a 0.4 s response at 48 kHz (one FFT of the whole response per
    10 ms block costs ten times that).
    """

    def __init__(self, ir: npt.NDArray[np.float32], block: int) -> None:
        self._block = block
        parts = -(-len(ir) // block)
        padded = np.zeros(parts * block, dtype=np.float64)
        padded[: len(ir)] = ir
        self._h = np.fft.rfft(padded.reshape(parts, block), 2 * block, axis=1)
        self._x = np.zeros_like(self._h)  # the input's spectra, newest first
        self._last = np.zeros(block, dtype=np.float64)

    def push(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """The next `block` output samples for `block` input samples."""
        self._x[1:] = self._x[:-1]
        self._x[0] = np.fft.rfft(np.concatenate([self._last, x]))
        self._last = np.asarray(x, dtype=np.float64)
        y = np.fft.irfft(np.einsum("pk,pk->k", self._x, self._h), 2 * self._block)
        return y[self._block :]
