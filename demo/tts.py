"""Speech for the demo agent: espeak-ng, resampled to 48 kHz with LiveKit's resampler."""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import wave

import numpy as np
import numpy.typing as npt

from appliance.audio.simulated import resample
from demo.errors import SpeechSynthesisError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 48_000


async def espeak_wav(text: str, *, voice: str = "en", words_per_minute: int = 160) -> bytes:
    """Return the WAV bytes espeak-ng produces for `text`."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SpeechSynthesisError("espeak-ng is not installed (apt-get install espeak-ng)")
    proc = await asyncio.create_subprocess_exec(
        exe,
        "-v",
        voice,
        "-s",
        str(words_per_minute),
        "--stdout",
        "--",
        text,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate()
    except BaseException:
        # Cancelled mid-synthesis (the session ended): end espeak-ng and drain its pipes,
        # so neither the process nor its transport outlives the task.
        if proc.returncode is None:
            proc.kill()
        await asyncio.shield(proc.communicate())
        raise
    if proc.returncode != 0 or not out:
        raise SpeechSynthesisError(
            f"espeak-ng failed with status {proc.returncode}: {err.decode(errors='replace')}"
        )
    return out


def wav_to_pcm(wav_bytes: bytes) -> tuple[npt.NDArray[np.int16], int]:
    """Decode mono 16-bit WAV bytes to (int16 samples, sample rate)."""
    try:
        with wave.open(io.BytesIO(wav_bytes)) as wav:
            if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
                raise SpeechSynthesisError("expected mono 16-bit WAV from espeak-ng")
            rate = wav.getframerate()
            # espeak-ng streams to stdout with a placeholder length: read what is there.
            frames = wav.readframes(len(wav_bytes))
    except (wave.Error, EOFError) as exc:
        raise SpeechSynthesisError("espeak-ng produced unreadable WAV") from exc
    return np.frombuffer(frames, dtype="<i2").astype(np.int16), rate


class SpeechSynthesizer:
    """Text to 48 kHz mono int16 PCM through espeak-ng, cached per text."""

    def __init__(self, *, voice: str = "en", words_per_minute: int = 160) -> None:
        self._voice = voice
        self._wpm = words_per_minute
        self._cache: dict[str, npt.NDArray[np.int16]] = {}
        self._lock = asyncio.Lock()

    async def synthesize(self, text: str) -> npt.NDArray[np.int16]:
        """Return the speech for `text` at 48 kHz (a cached, read-only array)."""
        async with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                return cached
            wav_bytes = await espeak_wav(text, voice=self._voice, words_per_minute=self._wpm)
            pcm, rate = wav_to_pcm(wav_bytes)
            out = resample(pcm, rate, SAMPLE_RATE)
            out.setflags(write=False)
            self._cache[text] = out
            logger.debug("synthesized speech", extra={"samples": out.size})
            return out


async def synthesize(text: str, *, voice: str = "en") -> npt.NDArray[np.int16]:
    """Return espeak-ng speech for `text` at 48 kHz, uncached (for tests and tools)."""
    pcm, rate = wav_to_pcm(await espeak_wav(text, voice=voice))
    return resample(pcm, rate, SAMPLE_RATE)
