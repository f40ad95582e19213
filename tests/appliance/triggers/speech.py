"""Test speech: espeak-ng voices at 16 kHz (cached on disk), and noise mixed at a chosen SNR."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt

from appliance.audio.simulated import resample

RATE = 16000
CACHE = Path(os.environ.get("KIOSK_CACHE_DIR", Path.home() / ".cache" / "kiosk-voice")) / "speech"
VOICES = ("en", "en-us", "en-gb", "en+f3", "en-us+m3", "en+f2")
RATES = (130, 170)
# Speech at about -24 dBFS RMS, as a person a metre from a kiosk microphone.
SPEECH_RMS = 2000.0

Pcm = npt.NDArray[np.int16]


def speak(text: str, voice: str = "en", wpm: int = 160, rate: int = RATE) -> Pcm:
    """espeak-ng speech for `text`, resampled to `rate` with LiveKit's resampler; cached."""
    exe = shutil.which("espeak-ng")
    assert exe is not None, "espeak-ng is required (scripts/setup installs it)"
    key = hashlib.sha256(f"{text}|{voice}|{wpm}|{rate}".encode()).hexdigest()[:20]
    path = CACHE / f"{key}.pcm"
    if path.exists():
        return np.fromfile(path, dtype=np.int16)
    out = subprocess.run(
        [exe, "-v", voice, "-s", str(wpm), "--stdout", "--", text],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    # espeak-ng writes a 44-byte WAV header with a placeholder length, at 22050 Hz.
    pcm = np.frombuffer(out[44 : 44 + (len(out) - 44) // 2 * 2], dtype="<i2").astype(np.int16)
    pcm = resample(pcm, 22050, rate)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    pcm.tofile(tmp)
    tmp.replace(path)
    return pcm


def pink_noise(samples: int, rms: float, seed: int) -> Pcm:
    """Pink (1/f) noise, like a room's background, at the given RMS."""
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    freqs = np.fft.rfftfreq(samples)
    freqs[0] = freqs[1]
    noise = np.fft.irfft(spectrum / np.sqrt(freqs), samples)
    noise *= rms / np.sqrt(np.mean(noise**2))
    return noise.astype(np.float32).clip(-32768, 32767).astype(np.int16)


def scene(speech: Pcm, *, snr_db: float | None, seed: int, pad_s: float = 0.7) -> Pcm:
    """`speech` at SPEECH_RMS with silence around it, over pink noise `snr_db` below it."""
    x = speech.astype(np.float32)
    voiced = x[np.abs(x) > 0.05 * np.abs(x).max()] if x.size else x
    gain = SPEECH_RMS / max(float(np.sqrt(np.mean(voiced**2))), 1.0)
    pad = np.zeros(int(pad_s * RATE), dtype=np.float32)
    mix = np.concatenate([pad, x * gain, pad, pad])
    if snr_db is not None:
        mix += pink_noise(mix.size, SPEECH_RMS / 10 ** (snr_db / 20), seed)
    return mix.clip(-32768, 32767).astype(np.int16)
