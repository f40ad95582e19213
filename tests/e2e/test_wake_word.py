"""The wake word spoken into the simulated microphone starts a real call; the agent ends it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import numpy as np
import pytest
from livekit import api, rtc

from appliance.audio.simulated import read_wav_mono
from appliance.state import State
from appliance.triggers.earcon import chime
from demo.agent_session import AgentSession
from demo.signal import best_normalized_xcorr, slip_tolerant_xcorr
from demo.stack import USER_SENTENCE, LocalStack
from tests.appliance.triggers.speech import speak
from tests.e2e.conftest import RunningDevice, run_device

pytestmark = pytest.mark.e2e

RATE = 48000
END_CALL = json.dumps({"v": 1, "type": "end_call"}).encode()


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


@pytest.fixture
def wake_pcm() -> np.ndarray:
    return speak("okay nabu", "en", 150, rate=RATE)


@pytest.fixture
def sentence_pcm() -> np.ndarray:
    return speak(USER_SENTENCE, "en", 160, rate=RATE)


@pytest.fixture
async def device(
    stack: LocalStack, wake_pcm: np.ndarray, sentence_pcm: np.ndarray
) -> AsyncIterator[RunningDevice]:
    # Silence while the device starts, the wake word, a pause, then what the person says.
    mic = np.concatenate([_silence(5), wake_pcm, _silence(3), sentence_pcm, _silence(30)]).astype(
        np.int16
    )
    files = stack.write_device("kiosk-1", mic, agent_join_timeout_s=20)
    with files.config.open("a") as f:  # [simulated] is the last table written
        f.write('loop_microphone = false\n\n[wake]\nengine = "micro"\n')
    settings = await asyncio.wait_for(stack.enroll(files), 10)
    async with run_device(settings) as running:
        yield running


async def _join_as_bystander(stack: LocalStack, room: str) -> rtc.Room:
    token = (
        api.AccessToken(stack.livekit.api_key, stack.livekit.api_secret)
        .with_identity("bystander")
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .to_jwt()
    )
    bystander = rtc.Room()
    await asyncio.wait_for(bystander.connect(stack.livekit.url, token), 10)
    return bystander


async def test_wake_word_starts_a_call_and_only_the_agent_can_end_it(
    stack: LocalStack,
    device: RunningDevice,
    wake_pcm: np.ndarray,
    sentence_pcm: np.ndarray,
) -> None:
    await device.watcher.wait_for(State.READY, 15)
    assert device.daemon.wake_word is not None and device.daemon.wake_word.listener.active
    session: AgentSession = await stack.agent.next_session(timeout=30)
    await device.watcher.wait_for(State.IN_CALL, 20)
    assert device.timelines == [] and not device.daemon.wake_word.listener.active
    detections = device.daemon.wake_word.listener.detections
    assert [d.keyword for d in detections] == ["Okay Nabu"]

    # The person's sentence reaches the agent; the wake word, said before the call, does not.
    async with asyncio.timeout(30):
        while slip_tolerant_xcorr(session.received_pcm(), sentence_pcm, RATE)[0] < 0.6:
            await asyncio.sleep(0.5)
    heard_wake, _ = slip_tolerant_xcorr(session.received_pcm(), wake_pcm, RATE)
    assert heard_wake < 0.3, f"audio from before the trigger left the device ({heard_wake:.2f})"

    # An end-call message from anyone but the agent is ignored.
    bystander = await _join_as_bystander(stack, session.room_name)
    try:
        await bystander.local_participant.publish_data(
            END_CALL, reliable=True, topic="kiosk.control"
        )
        await asyncio.sleep(1.0)
        assert device.daemon.supervisor.state is State.IN_CALL
    finally:
        await bystander.disconnect()

    await session.room.local_participant.publish_data(
        END_CALL, reliable=True, topic="kiosk.control"
    )
    await device.watcher.wait_for(State.READY, 15)
    assert device.timelines[0].trigger == "wake_word"
    assert device.timelines[0].end_reason is not None
    assert device.timelines[0].end_reason.value == "agent_ended"
    # The device left: its microphone is no longer in the room.
    async with asyncio.timeout(10):
        while session.room.remote_participants:
            await asyncio.sleep(0.1)

    # The earcon was played, before the agent's greeting.
    speaker = read_wav_mono(device.daemon.settings.simulated.speaker_wav)
    earcon_peak, earcon_at = best_normalized_xcorr(speaker, chime(), RATE)
    greeting_peak, greeting_at = slip_tolerant_xcorr(speaker, session.greeting_pcm, RATE)
    assert earcon_peak > 0.9 and greeting_peak > 0.5
    assert earcon_at < greeting_at


@pytest.fixture
async def hangup_device(stack: LocalStack, wake_pcm: np.ndarray) -> AsyncIterator[RunningDevice]:
    # The wake word starts a call, and said again during it, ends it.
    mic = np.concatenate([_silence(5), wake_pcm, _silence(8), wake_pcm, _silence(30)])
    files = stack.write_device("kiosk-2", mic.astype(np.int16), agent_join_timeout_s=20)
    with files.config.open("a") as f:  # [simulated] is the last table written
        f.write('loop_microphone = false\n\n[wake]\nengine = "micro"\nhangup_word = true\n')
    settings = await asyncio.wait_for(stack.enroll(files), 10)
    async with run_device(settings) as running:
        yield running


async def test_the_hang_up_word_ends_the_call_it_started(
    stack: LocalStack, hangup_device: RunningDevice
) -> None:
    device = hangup_device
    await device.watcher.wait_for(State.READY, 15)
    await stack.agent.next_session(timeout=30)
    await device.watcher.wait_for(State.IN_CALL, 20)
    assert device.daemon.wake_word is not None
    assert device.daemon.wake_word.listener.active, "a hang-up word listens during the call"
    await device.watcher.wait_for(State.READY, 20)
    assert [d.keyword for d in device.daemon.wake_word.listener.detections] == ["Okay Nabu"] * 2
    timeline = device.timelines[0]
    assert timeline.trigger == "wake_word"
    assert timeline.end_reason is not None and timeline.end_reason.value == "user"
