"""The mixer: every track summed (never interleaved), limited, stalls isolated, no allocations."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from appliance.audio.base import SAMPLES_PER_FRAME
from appliance.audio.measure import probe_sound
from appliance.call.mixer import CEILING, Mixer

pytestmark = pytest.mark.unit

N = SAMPLES_PER_FRAME


def corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def run(mixer: Mixer, feeds: dict[str, np.ndarray], frames: int) -> np.ndarray:
    """Push one frame per track (when it has one left), then mix once: 10 ms at a time."""
    out = []
    for i in range(frames):
        for key, signal in feeds.items():
            chunk = signal[i * N : (i + 1) * N]
            if len(chunk):
                mixer.push(key, chunk)
        frame = mixer.mix()
        out.append(np.zeros(N, np.int16) if frame is None else frame.copy())
    return np.concatenate(out)


def test_two_voices_are_summed_not_interleaved() -> None:
    a = probe_sound(2.0, seed=1, level_dbfs=-20)
    b = probe_sound(2.0, seed=2, level_dbfs=-20)
    mixer = Mixer()
    mixer.add_track("agent")
    mixer.add_track("person")
    out = run(mixer, {"agent": a, "person": b}, 200)
    # One output frame per 10 ms, not one per input frame: 2 s in, 2 s out.
    assert len(out) == len(a)
    # The prefill delays both by the same frame; the sum is exact (no limiting here).
    delay = N  # the prefill: two frames queued, one mixed
    expected = a[: len(a) - delay].astype(np.int32) + b[: len(b) - delay]
    assert np.array_equal(out[delay:], expected)
    assert corr(out[delay:], a[:-delay]) > 0.6
    assert corr(out[delay:], b[:-delay]) > 0.6


def test_a_stalled_track_does_not_stall_the_others() -> None:
    a = probe_sound(1.0, seed=1, level_dbfs=-20)
    b = probe_sound(0.3, seed=2, level_dbfs=-20)  # then stops sending
    mixer = Mixer()
    mixer.add_track("a")
    mixer.add_track("b")
    out = run(mixer, {"a": a, "b": b}, 100)
    delay = N  # the prefill: two frames queued, one mixed
    tail = slice(40 * N, 100 * N)  # long after b stalled: a alone, sample for sample
    assert np.array_equal(out[tail], a[tail.start - delay : tail.stop - delay])
    assert mixer.stats("b")[0] == 1  # one underrun, counted once


def test_a_track_that_comes_back_is_prefilled_again() -> None:
    mixer = Mixer(prefill_frames=2)
    mixer.add_track("a")
    one = np.full(N, 1000, np.int16)
    mixer.push("a", one)
    assert mixer.mix() is None  # one frame is not a prefill
    mixer.push("a", one)
    first = mixer.mix()
    assert first is not None and int(first[0]) == 1000
    assert mixer.mix() is not None
    assert mixer.mix() is None  # dry


def test_loud_voices_are_limited_under_the_ceiling_without_clipping() -> None:
    a = probe_sound(1.0, seed=1, level_dbfs=-3)
    b = probe_sound(1.0, seed=2, level_dbfs=-3)
    mixer = Mixer()
    mixer.add_track("a")
    mixer.add_track("b")
    out = run(mixer, {"a": a, "b": b}, 100)
    assert mixer.limited_frames > 0
    assert np.abs(out.astype(np.int32)).max() <= CEILING + 1
    # Still both voices, each clearly.
    delay = N  # the prefill: two frames queued, one mixed
    assert corr(out[delay:], a[:-delay]) > 0.5
    assert corr(out[delay:], b[:-delay]) > 0.5


def test_frames_of_any_length_are_reframed() -> None:
    a = probe_sound(0.5, seed=3, level_dbfs=-20)
    mixer = Mixer()
    mixer.add_track("a")
    out = []
    pos = 0
    for size in [300, 700, 480, 1, 959] * 10:
        mixer.push("a", a[pos : pos + size])
        pos += size
        while (frame := mixer.mix()) is not None:
            out.append(frame.copy())
            if sum(len(f) for f in out) + N > pos:
                break
    joined = np.concatenate(out)
    assert np.array_equal(joined, a[: len(joined)])


def test_a_full_ring_drops_the_oldest() -> None:
    mixer = Mixer(depth_frames=4, prefill_frames=1)
    mixer.add_track("a")
    for value in range(1, 7):
        mixer.push("a", np.full(N, value, np.int16))
    assert mixer.stats("a")[1] == 2 * N
    got = []
    while (frame := mixer.mix()) is not None:
        got.append(int(frame[0]))
    assert got == [3, 4, 5, 6]


def test_no_track_no_frame_and_removed_tracks_are_gone() -> None:
    mixer = Mixer()
    assert mixer.mix() is None
    mixer.add_track("a")
    mixer.push("a", np.ones(3 * N, np.int16))
    mixer.remove_track("a")
    mixer.push("a", np.ones(N, np.int16))  # late frames of a removed track are ignored
    assert mixer.mix() is None
    assert mixer.tracks == []


def test_mixing_allocates_nothing_per_frame() -> None:
    mixer = Mixer()
    signals = {f"t{i}": probe_sound(1.0, seed=i, level_dbfs=-6) for i in range(4)}
    for key in signals:
        mixer.add_track(key)
    run(mixer, signals, 20)  # warm up
    frames = [{k: s[i * N : (i + 1) * N] for k, s in signals.items()} for i in range(20, 100)]
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        for chunk in frames:
            for key, samples in chunk.items():
                mixer.push(key, samples)
            mixer.mix()
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # No buffer is made per frame (one float32 frame would be 1920 bytes); what is traced is
    # numpy's own scratch for the peak's reduction (about 1 kB, freed at once) and a few
    # small objects.
    assert peak - start < 1920, peak - start
    assert end - start < 960, end - start  # over 80 frames: nothing kept per frame
