"""Signal helpers shared by the demo agent and the tests: normalized cross-correlation."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def _as_float(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    return arr


def best_normalized_xcorr(
    haystack: npt.ArrayLike, needle: npt.ArrayLike, rate: int
) -> tuple[float, float]:
    """Return (peak, lag_s): the best normalized cross-correlation of `needle` in `haystack`.

    The score at each lag is <h[lag:lag+n], needle> / (|h[lag:lag+n]| * |needle|), so it lies
    in [-1, 1] and is independent of level; lag_s is where the needle starts in the haystack.
    """
    h = _as_float(haystack)
    n = _as_float(needle)
    if n.size == 0 or h.size == 0:
        return 0.0, 0.0
    needle_norm = float(np.sqrt(np.dot(n, n)))
    if needle_norm == 0.0:
        return 0.0, 0.0
    if h.size < n.size:
        h = np.concatenate([h, np.zeros(n.size - h.size)])
    lags = h.size - n.size + 1
    size = 1 << int(np.ceil(np.log2(h.size + n.size)))
    spectrum = np.fft.rfft(h, size) * np.conj(np.fft.rfft(n, size))
    dots = np.fft.irfft(spectrum, size)[:lags]
    energy = np.concatenate([[0.0], np.cumsum(h * h)])
    window_energy = np.maximum(energy[n.size :] - energy[:lags], 0.0)
    # A floor keeps near-silent windows (where FFT round-off dominates) from scoring high.
    floor = 1e-6 * float(np.dot(n, n))
    scores = dots / (np.sqrt(np.maximum(window_energy, floor)) * needle_norm)
    best = int(np.argmax(scores))
    return float(scores[best]), best / rate


def slip_tolerant_xcorr(
    haystack: npt.ArrayLike,
    needle: npt.ArrayLike,
    rate: int,
    *,
    segment_s: float = 0.5,
    max_slip_s: float = 0.1,
) -> tuple[float, float]:
    """Return (score, lag_s): normalized cross-correlation that tolerates jitter-buffer slips.

    A receiver's jitter buffer stretches or shrinks audio by some milliseconds now and then,
    which lowers one global correlation although every word is intact. Here the needle is
    aligned once (best_normalized_xcorr), then each voiced `segment_s` piece is re-aligned
    within `max_slip_s` of that; the score is the energy-weighted mean of the pieces' peaks.
    """
    h = _as_float(haystack)
    n = _as_float(needle)
    _peak, lag_s = best_normalized_xcorr(h, n, rate)
    lag = round(lag_s * rate)
    seg = max(1, round(segment_s * rate))
    slip = round(max_slip_s * rate)
    level = rms(n)
    weighted = 0.0
    total = 0.0
    for start in range(0, n.size, seg):
        piece = n[start : start + seg]
        energy = float(np.dot(piece, piece))
        if piece.size < seg // 2 or rms(piece) < 0.1 * level:
            continue  # silence and stubs carry no evidence either way
        lo = max(0, lag + start - slip)
        window = h[lo : lag + start + piece.size + slip]
        piece_peak, _ = best_normalized_xcorr(window, piece, rate)
        weighted += energy * piece_peak
        total += energy
    if total == 0.0:
        return 0.0, lag_s
    return weighted / total, lag_s


def rms(pcm: npt.ArrayLike) -> float:
    """Return the root-mean-square level of `pcm` (in sample units)."""
    x = _as_float(pcm)
    if x.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(x * x)))
