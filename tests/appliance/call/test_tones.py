"""The kiosk's own limit warning: two clean beeps at -12 dBFS, mixed into what the speaker
plays by the call worker's room, paced at 10 ms, without stopping the far end's voice."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from appliance.audio.base import SAMPLES_PER_FRAME
from appliance.call.livekit_call import LiveKitRoom
from appliance.call.tones import limit_warning


@pytest.mark.unit
def test_the_warning_is_two_beeps_without_clicks() -> None:
    tone = limit_warning()
    assert len(tone) == int(0.4 * 48000)  # 150 ms, 100 ms gap, 150 ms
    peak = np.abs(tone).max() / 32767
    assert 0.24 < peak <= 0.25  # -12 dBFS
    assert abs(int(tone[0])) < 100 and abs(int(tone[-1])) < 100  # ramped edges
    loud = np.abs(tone.astype(np.int32)) > 1000
    # Two bursts: quiet between 160 and 240 ms.
    assert loud[: int(0.15 * 48000)].any() and loud[int(0.25 * 48000) :].any()
    assert not loud[int(0.16 * 48000) : int(0.24 * 48000)].any()


@pytest.mark.integration
async def test_the_room_mixes_the_warning_over_the_far_end() -> None:
    sent: list[bytes] = []

    async def out(frame: bytes) -> None:
        sent.append(frame)

    room = LiveKitRoom(
        call_id="c-1",
        room_name="r",
        on_event=lambda event: None,
        on_agent_audio=out,
        status_topic="kiosk.call_status",
        control_topic="kiosk.control",
        connect_timeout_s=5,
    )
    mixer = room._mixer
    voice = np.full(SAMPLES_PER_FRAME, 1000, dtype=np.int16)
    mixer.add_track("agent")
    room.play_warning()
    mixed: list[np.ndarray] = []
    async with asyncio.timeout(5):
        while len(mixed) < 45:
            mixer.push("agent", voice)
            await asyncio.sleep(0.01)
            frame = mixer.mix()
            if frame is not None:
                mixed.append(frame.copy())
    await room.aclose()
    levels = [int(np.abs(f.astype(np.int32) - 1000).max()) for f in mixed]
    assert max(levels) > 5000  # the beeps, over the voice
    assert min(levels[5:40]) < 100  # and the gap: the voice alone
