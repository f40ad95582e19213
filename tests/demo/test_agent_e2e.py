"""End to end: a device joins a room on a real LiveKit server and the demo agent is dispatched."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import numpy.typing as npt
import pytest

from demo.agent import DemoAgent
from demo.agent_session import AgentSession
from demo.livekit_server import LiveKitServer
from demo.signal import best_normalized_xcorr, slip_tolerant_xcorr
from demo.tts import SAMPLE_RATE, synthesize
from tests.demo.conftest import AGENT_NAME
from tests.demo.device import DeviceParticipant, mint_device_token

pytestmark = pytest.mark.e2e

USER_SENTENCE = "Please open the front gate, I have a delivery for the office."
CONTROL_SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


async def _join(lk: LiveKitServer, agent: DemoAgent) -> tuple[DeviceParticipant, AgentSession]:
    device = DeviceParticipant()
    token = mint_device_token(lk.api_key, lk.api_secret, room="call-x", agent_name=AGENT_NAME)
    joined = time.monotonic()
    async with asyncio.timeout(15):
        await device.connect(lk.url, token)
        session = await agent.next_session(timeout=10)
        await device.wait_until(lambda: device.agent_identity is not None)
    assert device.agent_joined_at is not None
    print(f"\ndispatch-to-join: {device.agent_joined_at - joined:.3f} s")
    return device, session


async def test_agent_greets_hears_records_and_leaves(
    livekit_server: LiveKitServer, demo_agent: DemoAgent
) -> None:
    device, session = await _join(livekit_server, demo_agent)
    try:
        assert session.room_name == "call-x"
        assert device.agent_identity == f"agent-{session.job_id}"

        # The greeting arrives as audio, as a final transcript, and with agent states.
        async with asyncio.timeout(20):
            await device.wait_until(lambda: "listening" in device.agent_states)
            await device.wait_until(lambda: len(device.transcripts) >= 1)
            await asyncio.sleep(0.5)  # the jitter buffer's tail
        assert device.agent_states[:3] == ["initializing", "speaking", "listening"]
        greeting = device.transcripts[0]
        assert greeting.text == session.options.greeting
        assert greeting.sender == device.agent_identity
        assert greeting.attributes["lk.transcription_final"] == "true"
        assert greeting.attributes["lk.segment_id"]
        assert session.first_audio_sent_at is not None
        print(
            f"assignment-to-first-audio: {session.first_audio_sent_at - session.assigned_at:.3f} s"
        )

        heard = device.agent_pcm()
        async with asyncio.timeout(10):
            control = await synthesize(CONTROL_SENTENCE)
            user_speech = await synthesize(USER_SENTENCE)
        # Slip-tolerant: under CPU load the device's jitter buffer stretches a few ms now and
        # then, which lowers one global correlation although the greeting is intact.
        peak, lag_s = slip_tolerant_xcorr(heard, session.greeting_pcm, SAMPLE_RATE)
        global_peak, _ = best_normalized_xcorr(heard, session.greeting_pcm, SAMPLE_RATE)
        control_peak, _ = slip_tolerant_xcorr(heard, control, SAMPLE_RATE)
        print(
            f"greeting xcorr {peak:.2f} (global {global_peak:.2f}) at {lag_s:.2f} s; "
            f"control {control_peak:.2f}; agent output underruns {session.output_underruns}; "
            f"chunks {_chunk_peaks(heard, session.greeting_pcm)}"
        )
        assert peak > 0.5
        assert control_peak < 0.3
        assert control_peak < peak / 2

        # A call-status message from the device lands in the session's record.
        status = {"v": 1, "type": "call_status", "state": "in_call"}
        async with asyncio.timeout(5):
            await device.room.local_participant.publish_data(
                json.dumps(status), topic="kiosk.call_status"
            )
            message = await session.wait_for_message(
                lambda m: m.topic == "kiosk.call_status", timeout=5
            )
        assert message.payload == status
        assert message.sender == "device-test"

        # The device speaks; the agent records it, detects the turn and answers.
        async with asyncio.timeout(20):
            await device.publish_mic()
            await device.speak(_padded(user_speech, before_s=1.0, after_s=1.5))
            await device.wait_until(lambda: len(device.transcripts) >= 2)
        received = session.received_pcm()
        mic_peak, _ = slip_tolerant_xcorr(received, user_speech, SAMPLE_RATE)
        mic_global, _ = best_normalized_xcorr(received, user_speech, SAMPLE_RATE)
        mic_control, _ = slip_tolerant_xcorr(received, control, SAMPLE_RATE)
        print(
            f"mic xcorr {mic_peak:.2f} (global {mic_global:.2f}); control {mic_control:.2f}; "
            f"turn {session.turns}"
        )
        assert mic_peak > 0.5
        assert mic_control < 0.3
        assert mic_control < mic_peak / 2
        assert session.turns[0] == pytest.approx(user_speech.size / SAMPLE_RATE, abs=0.6)
        assert device.transcripts[1].text == session.options.answer(session.turns[0])
        assert "thinking" in device.agent_states

        # Leaving ends the call: the device sees the agent go.
        async with asyncio.timeout(10):
            await session.leave()
            await device.agent_left.wait()
        assert session.ended.is_set()
    finally:
        async with asyncio.timeout(10):
            await device.aclose()


async def test_agent_says_goodbye_and_leaves_after_n_turns(livekit_server: LiveKitServer) -> None:
    async with (
        asyncio.timeout(60),
        DemoAgent(
            url=livekit_server.url,
            api_key=livekit_server.api_key,
            api_secret=livekit_server.api_secret,
            agent_name=AGENT_NAME,
            greeting="Hi.",
            end_after_turns=1,
        ) as agent,
    ):
        device, session = await _join(livekit_server, agent)
        try:
            user_speech = await synthesize("Hello there.")
            await device.wait_until(lambda: "listening" in device.agent_states)
            await device.publish_mic()
            await device.speak(_padded(user_speech, before_s=1.0, after_s=1.2))
            await device.agent_left.wait()
            await session.ended.wait()
            texts = [t.text for t in device.transcripts]
            assert texts[0] == "Hi."
            assert texts[-1] == session.options.goodbye
            assert len(session.turns) == 1
            assert session.error is None
        finally:
            await device.aclose()


def _padded(
    pcm: npt.NDArray[np.int16], *, before_s: float, after_s: float
) -> npt.NDArray[np.int16]:
    return np.concatenate(
        [
            np.zeros(int(before_s * SAMPLE_RATE), np.int16),
            pcm,
            np.zeros(int(after_s * SAMPLE_RATE), np.int16),
        ]
    )


def _chunk_peaks(haystack: npt.NDArray[np.int16], needle: npt.NDArray[np.int16]) -> str:
    """Per-half-second peaks and lags, to tell time-stretching from noise when a peak is low."""
    half = SAMPLE_RATE // 2
    out = []
    for start in range(0, needle.size - half, half):
        peak, lag_s = best_normalized_xcorr(haystack, needle[start : start + half], SAMPLE_RATE)
        out.append(f"{peak:.2f}@{lag_s - start / SAMPLE_RATE:+.3f}")
    return " ".join(out)
