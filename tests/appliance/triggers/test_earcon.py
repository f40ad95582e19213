"""The earcon is written in real time, so a small jitter buffer never drops part of it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from appliance.audio.base import SAMPLES_PER_FRAME, Frame
from appliance.clock import ManualClock
from appliance.triggers.earcon import LEAD_FRAMES, Earcon, chime

pytestmark = pytest.mark.unit


class RecordingSpeaker:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.writes: list[tuple[float, Frame]] = []

    async def write(self, frame: Frame) -> None:
        self.writes.append((self.clock.monotonic(), frame))

    async def aclose(self) -> None:
        return None


async def test_chime_is_paced_at_real_time_after_a_short_lead() -> None:
    clock = ManualClock()
    speaker = RecordingSpeaker(clock)
    earcon = Earcon(speaker, clock=clock)
    frames = len(chime()) // SAMPLES_PER_FRAME
    t0 = clock.monotonic()
    earcon.play()
    await clock.advance(0)
    assert len(speaker.writes) == LEAD_FRAMES + 1  # the lead, then wait for real time
    for _ in range(frames):
        await clock.advance(0.01)
    await asyncio.wait_for(earcon.wait(), 1)
    times = [round((t - t0) * 1000) for t, _ in speaker.writes]
    assert len(times) == frames
    # Never more than the lead ahead of real time: frame i is written at (i - lead) * 10 ms.
    assert times == [max(0, (i - LEAD_FRAMES) * 10) for i in range(frames)]
    played = np.concatenate([f for _, f in speaker.writes])
    assert np.array_equal(played, chime())
