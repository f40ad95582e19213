"""Audio measurements shared by the self-test, the tests and the benchmark."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from appliance.audio.base import SAMPLE_RATE, Frame

Signal = npt.NDArray[np.int16]


def energy(x: npt.NDArray[np.generic]) -> float:
    """Mean square of the samples (0 for none)."""
    return float(np.mean(np.square(x.astype(np.float64)))) if x.size else 0.0


def dbfs(x: npt.NDArray[np.generic]) -> float:
    """RMS level relative to int16 full scale, in dB (-120 for silence)."""
    e = energy(x)
    return 10 * float(np.log10(e / 32768.0**2)) if e > 0 else -120.0


def ratio_db(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> float:
    """10·log10(energy(a) / energy(b)), capped at ±120 dB."""
    ea, eb = energy(a), energy(b)
    if ea <= 0 or eb <= 0:
        return 120.0 if ea > 0 else -120.0
    return float(np.clip(10 * np.log10(ea / eb), -120, 120))


def clipped_fraction(x: Signal) -> float:
    """Share of samples at (or one step from) full scale."""
    return float(np.mean(np.abs(x.astype(np.int32)) >= 32766)) if x.size else 0.0


def estimate_delay_ms(reference: Signal, recorded: Signal, max_ms: float = 500.0) -> float | None:
    """Where `reference` best lines up in `recorded` (ms), by cross-correlation; None if flat."""
    max_lag = int(max_ms * SAMPLE_RATE / 1000)
    n = len(reference) + len(recorded)
    size = 1 << (n - 1).bit_length()
    ref = np.fft.rfft(reference.astype(np.float64), size)
    rec = np.fft.rfft(recorded.astype(np.float64), size)
    corr = np.fft.irfft(rec * np.conj(ref), size)[: max_lag + 1]
    if not np.any(corr > 0):
        return None
    return float(np.argmax(corr)) * 1000 / SAMPLE_RATE


def probe_sound(seconds: float, *, seed: int = 7, level_dbfs: float = -12.0) -> Signal:
    """A speech-band test sound: noise bursts with a syllable-rate envelope, -12 dBFS RMS."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    noise = rng.normal(0, 1, n)
    spectrum = np.fft.rfft(noise)
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    band = (freqs > 200) & (freqs < 4000)
    spectrum *= band / np.sqrt(np.maximum(freqs, 100) / 100)  # pink-ish in the speech band
    shaped = np.fft.irfft(spectrum, n)
    t = np.arange(n) / SAMPLE_RATE
    envelope = 0.35 + 0.65 * np.abs(np.sin(np.pi * 3.3 * t + 0.7 * np.sin(2 * np.pi * 0.4 * t)))
    x = shaped * envelope
    x *= 32768 * 10 ** (level_dbfs / 20) / max(np.sqrt(np.mean(x**2)), 1e-9)
    return np.clip(x, -32768, 32767).astype(np.int16)


def frames_of(signal: Signal, frame: int) -> list[Frame]:
    """`signal` cut into frames of `frame` samples (the tail zero-padded)."""
    pad = (-len(signal)) % frame
    padded = np.pad(signal, (0, pad))
    return [padded[i : i + frame] for i in range(0, len(padded), frame)]
