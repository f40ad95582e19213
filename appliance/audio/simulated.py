"""Simulated audio: a microphone that plays a WAV file in real time, a speaker that records."""

from __future__ import annotations

import logging
import wave
from pathlib import Path

import numpy as np

from appliance.audio.base import FRAME_MS, SAMPLE_RATE, SAMPLES_PER_FRAME, Frame
from appliance.clock import Clock, SystemClock
from appliance.errors import AudioDeviceError

logger = logging.getLogger(__name__)

# A consumer that falls further behind than this (e.g. nobody read while idle) jumps to
# the live position, as a real capture ring buffer would.
MAX_LAG_FRAMES = 20


def read_wav_mono(path: Path, sample_rate: int = SAMPLE_RATE) -> Frame:
    """Read a 16-bit WAV file as mono int16 samples at `sample_rate`."""
    try:
        with wave.open(str(path), "rb") as wav:
            if wav.getsampwidth() != 2:
                raise AudioDeviceError(f"{path}: only 16-bit PCM WAV files are supported")
            rate, channels = wav.getframerate(), wav.getnchannels()
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    except (OSError, EOFError, wave.Error) as exc:
        raise AudioDeviceError(f"cannot read WAV file {path}: {exc}") from exc
    if channels > 1:
        pcm = pcm.reshape(-1, channels)[:, 0].copy()
    if rate != sample_rate:
        pcm = resample(pcm, rate, sample_rate)
    return pcm


def resample(pcm: Frame, from_rate: int, to_rate: int) -> Frame:
    """Resample mono int16 PCM with LiveKit's resampler (libsoxr)."""
    from livekit import rtc

    resampler = rtc.AudioResampler(from_rate, to_rate, num_channels=1)
    frames = resampler.push(bytearray(pcm.tobytes())) + resampler.flush()
    if not frames:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])


class WavMicrophone:
    """Plays a WAV file (or silence) as if captured live, a period of 10 ms frames at a time."""

    def __init__(
        self,
        path: Path | None,
        *,
        loop: bool = True,
        period_ms: int = FRAME_MS,
        clock: Clock | None = None,
    ) -> None:
        if period_ms <= 0 or period_ms % FRAME_MS:
            raise ValueError(f"period_ms must be a multiple of {FRAME_MS}, not {period_ms}")
        self._clock = clock or SystemClock()
        self._pcm = read_wav_mono(path) if path is not None else np.zeros(0, dtype=np.int16)
        self._pcm.flags.writeable = False  # frames are views into it
        self._loop = loop
        # Like an ALSA device with this period: the frames of a period arrive together at its
        # end, so a reader (and everything it feeds) wakes once per period, not per frame.
        self._period_frames = period_ms // FRAME_MS
        self._t0 = self._clock.monotonic()
        self._next = 0
        self._silence = np.zeros(SAMPLES_PER_FRAME, dtype=np.int16)
        self._silence.flags.writeable = False

    async def read(self) -> Frame:
        now = self._clock.monotonic()
        period_s = self._period_frames * FRAME_MS / 1000
        live = int((now - self._t0) / period_s) * self._period_frames
        if self._next < live - MAX_LAG_FRAMES:
            self._next = live
        due = self._t0 + (self._next // self._period_frames + 1) * period_s
        if due > now:
            await self._clock.sleep(due - now)
        frame = self._frame(self._next)
        self._next += 1
        return frame

    def _frame(self, index: int) -> Frame:
        n = len(self._pcm)
        start = index * SAMPLES_PER_FRAME
        if n == 0 or (not self._loop and start >= n):
            return self._silence
        if self._loop:
            start %= n
            if start + SAMPLES_PER_FRAME <= n:
                return self._pcm[start : start + SAMPLES_PER_FRAME]  # a view: no copy
            return self._pcm[(np.arange(SAMPLES_PER_FRAME) + start) % n]
        frame = self._pcm[start : start + SAMPLES_PER_FRAME]
        if len(frame) == SAMPLES_PER_FRAME:
            return frame
        return np.pad(frame, (0, SAMPLES_PER_FRAME - len(frame)))

    async def aclose(self) -> None:
        return None


class WavSpeaker:
    """Records everything played to a mono 16-bit WAV file."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._wav: wave.Wave_write | None = wave.open(str(path), "wb")  # noqa: SIM115
        except OSError as exc:
            raise AudioDeviceError(f"cannot open {path} for the simulated speaker: {exc}") from exc
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(SAMPLE_RATE)
        self.frames_written = 0

    async def write(self, frame: Frame) -> None:
        if self._wav is None:
            raise AudioDeviceError("the simulated speaker is closed")
        self._wav.writeframes(frame.astype(np.int16, copy=False).tobytes())
        self.frames_written += 1

    async def aclose(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._wav = None
