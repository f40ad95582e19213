"""Unit tests of the demo's signal helpers and endpointer."""

from __future__ import annotations

import numpy as np
import pytest

from demo.conversation import Endpointer
from demo.signal import best_normalized_xcorr, slip_tolerant_xcorr

pytestmark = pytest.mark.unit

RATE = 48_000


def _chirp(seconds: float, f0: float, f1: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (8000 * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / (2 * seconds)) * t)).astype(np.int16)


def test_xcorr_finds_needle_at_its_lag_whatever_its_level() -> None:
    needle = _chirp(0.5, 200, 3000)
    rng = np.random.default_rng(1)
    haystack = rng.normal(0, 300, RATE * 2)
    start = 31_234
    haystack[start : start + needle.size] += 0.25 * needle

    peak, lag_s = best_normalized_xcorr(haystack, needle, RATE)

    assert peak > 0.9
    assert lag_s == pytest.approx(start / RATE, abs=1 / RATE)


def test_xcorr_of_unrelated_signals_is_low() -> None:
    peak, _ = best_normalized_xcorr(_chirp(1.0, 200, 3000), _chirp(0.5, 3000, 200), RATE)
    assert peak < 0.3


def test_xcorr_handles_silence_and_short_haystacks() -> None:
    needle = _chirp(0.5, 200, 3000)
    assert best_normalized_xcorr(np.zeros(RATE), needle, RATE)[0] < 0.01
    # Only part of the needle present: the score falls with the share of its energy present.
    partial, lag_s = best_normalized_xcorr(needle[: needle.size // 4], needle, RATE)
    assert 0.3 < partial < 0.7
    assert lag_s == 0.0
    assert best_normalized_xcorr(needle, np.zeros(100), RATE) == (0.0, 0.0)


def test_endpointer_reports_a_turn_after_speech_then_silence() -> None:
    endpointer = Endpointer(threshold_rms=500, min_speech_s=0.2, end_silence_s=0.8)
    loud = np.full(480, 3000, np.int16)
    quiet = np.zeros(480, np.int16)
    results = [endpointer.push(quiet) for _ in range(50)]
    results += [endpointer.push(loud) for _ in range(150)]
    results += [endpointer.push(quiet) for _ in range(79)]
    assert all(r is None for r in results)
    assert endpointer.push(quiet) == pytest.approx(1.5)


def test_endpointer_ignores_clicks_shorter_than_min_speech() -> None:
    endpointer = Endpointer(threshold_rms=500, min_speech_s=0.2, end_silence_s=0.8)
    loud = np.full(480, 3000, np.int16)
    quiet = np.zeros(480, np.int16)
    results = [endpointer.push(loud) for _ in range(5)]
    results += [endpointer.push(quiet) for _ in range(200)]
    assert all(r is None for r in results)


def test_slip_tolerant_xcorr_survives_a_jitter_buffer_slip() -> None:
    needle = _chirp(2.0, 200, 3000)
    rng = np.random.default_rng(2)
    # 20 ms of audio dropped in the middle, as a jitter buffer's accelerate would.
    slipped = np.concatenate([needle[:RATE], needle[RATE + 960 :]]).astype(np.float64)
    haystack = np.concatenate([np.zeros(5000), slipped, np.zeros(5000)])
    haystack += rng.normal(0, 200, haystack.size)

    global_peak, _ = best_normalized_xcorr(haystack, needle, RATE)
    score, lag_s = slip_tolerant_xcorr(haystack, needle, RATE)
    control, _ = slip_tolerant_xcorr(haystack, _chirp(2.0, 3000, 200), RATE)

    assert global_peak < 0.8
    assert score > 0.9
    assert lag_s == pytest.approx(5000 / RATE, abs=0.03)
    assert control < 0.3
