"""The room model behind the closed loop, and the delay the echo canceller is told."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.audio.delay import StreamDelay
from appliance.audio.room import BlockConvolver, ReverbRoom

pytestmark = pytest.mark.unit


def test_block_convolution_is_the_convolution() -> None:
    ir = ReverbRoom("r", delay_ms=20.0, rt60_s=0.3).impulse_response()
    x = np.random.default_rng(3).normal(0, 1000, 48000)
    conv = BlockConvolver(ir, 480)
    y = np.concatenate([conv.push(x[i : i + 480]) for i in range(0, len(x), 480)])
    assert np.allclose(y, np.convolve(x, ir)[: len(x)], atol=1e-6)


def test_a_room_has_its_delay_gain_and_decay() -> None:
    room = ReverbRoom("r", delay_ms=60.0, gain_db=-6.0, rt60_s=0.4, direct_to_reverb_db=3.0)
    ir = room.impulse_response()
    assert int(np.argmax(np.abs(ir))) == 60 * 48
    assert 10 * np.log10(np.sum(ir.astype(np.float64) ** 2)) == pytest.approx(-6.0, abs=0.01)
    tail = ir[60 * 48 + 96 :].astype(np.float64) ** 2
    early, late = np.sum(tail[: 48 * 50]), np.sum(tail[48 * 200 : 48 * 250])
    # 200 ms later the tail is 200 / 400 * 60 dB = 30 dB down.
    assert 10 * np.log10(early / late) == pytest.approx(30.0, abs=3.0)


def test_a_saturating_speaker_squashes_peaks_only() -> None:
    room = ReverbRoom("r", speaker_clip=0.5)
    x = np.array([1000.0, 30000.0], dtype=np.float32)
    y = room.speaker(x)
    assert y[0] == pytest.approx(1000.0, rel=0.01)
    assert y[1] < 0.5 * 32768


def test_the_delay_is_held_until_the_device_really_changes() -> None:
    delay = StreamDelay(acoustic_ms=5.0)
    for i in range(200):
        # Buffers fill and drain by a period every other frame: the figure must not follow.
        delay.add_playback(30.0 + 10.0 * (i % 2))
        delay.add_capture(10.0 + 10.0 * (i % 3 == 0))
        held = delay.value_ms()
    assert held == pytest.approx(30.0 + 10.0 + 5.0, abs=10.0)
    assert delay.changes == 0
    for _ in range(200):  # a larger buffer after a restart: a real change
        delay.add_playback(80.0)
    assert delay.value_ms() == pytest.approx(80.0 + 10.0 + 5.0)
    assert delay.changes == 1
