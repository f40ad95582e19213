"""A kiosk calling through each hosted platform's fake, on the real stack: the platform's own
LiveKit server (the fake's keys), the real backend configured with the platform at the fake
on loopback, a simulated kiosk, and the platform's agent speaking its in-call conventions
(`tests/platforms/agents.py`): the documented request, the join, transcripts, agent state,
tool calls, the platform's end, and the record."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import api

from appliance.audio.base import SAMPLE_RATE
from appliance.call.events import AgentActivity
from appliance.call.ringing import ring_cadence
from appliance.control import follow_lines
from appliance.provisioning_client.enrollment import enroll_device
from appliance.settings import load_settings
from appliance.state import State
from demo.livekit_server import LiveKitServer
from demo.stack import write_wav
from provisioning.http import BackendServer
from provisioning.models import CallRecord
from provisioning.rooms import RecordingRoomService
from tests.e2e.conftest import RunningDevice, run_device
from tests.platforms.agents import (
    AGENTS,
    LiveKitTranscriptionAgent,
    PlatformAgent,
    SipLeg,
    ThinnestAIAgent,
)
from tests.platforms.conftest import FAKES, PLATFORM_KEY, SETTINGS, platform_config
from tests.platforms.fake_base import FAKE_LIVEKIT_KEY, FAKE_LIVEKIT_SECRET, FakePlatform
from tests.platforms.fake_click2call import FakeClick2Call

pytestmark = pytest.mark.e2e


@dataclass
class PlatformRig:
    name: str
    livekit: LiveKitServer
    fake: FakePlatform
    backend: BackendServer
    device: RunningDevice
    agents: asyncio.Queue[PlatformAgent] = field(default_factory=asyncio.Queue)
    lines: list[dict[str, Any]] = field(default_factory=list)

    async def next_agent(self, timeout: float = 20.0) -> PlatformAgent:
        async with asyncio.timeout(timeout):
            return await self.agents.get()

    async def record(self, call_id: str, timeout: float = 15.0) -> CallRecord:
        async with asyncio.timeout(timeout):
            while True:
                calls = {c.call_id: c for c in await self.backend.core.list_calls()}
                record = calls.get(call_id)
                if record is not None and record.ended_at is not None:
                    return record
                await asyncio.sleep(0.1)


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


@asynccontextmanager
async def platform_rig(
    tmp_path: Path,
    name: str,
    *,
    tools: list[str] | None = None,
    agent: type[PlatformAgent] | None = None,
) -> AsyncIterator[PlatformRig]:
    """The platform's LiveKit, its fake (which dispatches its agent), the backend, a kiosk."""
    async with AsyncExitStack() as stack:
        livekit = await stack.enter_async_context(
            LiveKitServer(api_key=FAKE_LIVEKIT_KEY, api_secret=FAKE_LIVEKIT_SECRET)
        )
        fake = FAKES[name](PLATFORM_KEY, livekit_url=livekit.url)
        await stack.enter_async_context(fake)
        agents: list[PlatformAgent] = []
        queue: asyncio.Queue[PlatformAgent] = asyncio.Queue()

        async def start_agent(room: str) -> None:
            far_end = (agent or AGENTS[name])(livekit.url, room)
            agents.append(far_end)
            await far_end.start()
            queue.put_nowait(far_end)

        fake.on_room = start_agent
        backend_dir = tmp_path / "backend"
        backend_dir.mkdir()
        config = platform_config(backend_dir, name, fake.url, None)
        backend = BackendServer(config, port=0, rooms=RecordingRoomService())
        await stack.enter_async_context(backend)
        settings_path = _write_device(tmp_path / "kiosk", backend.url)
        settings = load_settings(settings_path)
        code = await backend.core.create_enrollment_code(ttl_s=600, label="kiosk")
        enrollment = await enroll_device(
            settings.device.state_dir, settings.backend.url, settings.device.name, code
        )
        fleet: dict[str, Any] = {"provider": SETTINGS[name]}
        if tools is not None:
            fleet["tools"] = tools
        await backend.core.set_device_settings(enrollment.device_id, fleet, actor="test")
        device = await stack.enter_async_context(run_device(settings))
        await device.watcher.wait_for(State.READY, 15)
        rig = PlatformRig(name, livekit, fake, backend, device, queue)
        follower = asyncio.create_task(_follow(device, rig.lines))
        try:
            yield rig
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            for far_end in agents:
                await far_end.aclose()


async def _follow(device: RunningDevice, into: list[dict[str, Any]]) -> None:
    socket = Path(device.daemon.control_socket)
    await _until(socket.exists)
    async for line in follow_lines(socket, "transcript follow"):
        into.append(json.loads(line))


def _write_device(base: Path, backend_url: str) -> Path:
    base.mkdir(parents=True)
    write_wav(base / "microphone.wav", np.zeros(4800, dtype=np.int16))
    config = base / "appliance.toml"
    config.write_text(
        '[device]\nname = "kiosk"\nstate_dir = "state"\n\n'
        f'[backend]\nurl = "{backend_url}"\n\n'
        '[board]\nprofile = "simulated"\n\n'
        "[call]\nidle_timeout_s = 0.0\ncooldown_s = 0.0\nagent_join_timeout_s = 20.0\n\n"
        '[simulated]\nmicrophone_wav = "microphone.wav"\nspeaker_wav = "speaker.wav"\n'
    )
    return config


async def _call(rig: PlatformRig) -> tuple[PlatformAgent, str]:
    """Press; the platform's agent joins; the kiosk is in the call. Returns the call id."""
    rig.device.daemon.press()
    agent = await rig.next_agent()
    await agent.wait_for_kiosk()
    await rig.device.watcher.wait_for(State.IN_CALL, 20)
    # One upstream request, as documented (the fake checked its header, path and fields).
    assert rig.fake.refused == [] and len(rig.fake.received) == 1
    calls = await rig.backend.core.list_calls()
    assert len(calls) == 1
    return agent, calls[0].call_id


def _ending(rig: PlatformRig) -> list[str | None]:
    return [c.reason for c in rig.device.watcher.changes if c.state is State.ENDING]


class LooseThinnestAIAgent(ThinnestAIAgent):
    """Another reading of the same document: the engine joins as a standard participant and
    sends its messages on a topic (002 l. 108-119 name neither)."""

    kind = "standard"

    async def _send(self, message: Mapping[str, Any], topic: str | None = None) -> None:
        await super()._send(message, topic or "engine")


@pytest.mark.parametrize("agent", [ThinnestAIAgent, LooseThinnestAIAgent])
async def test_thinnestai_transcripts_and_call_ended_with_its_reason(
    tmp_path: Path, agent: type[PlatformAgent]
) -> None:
    async with platform_rig(tmp_path, "thinnestai", agent=agent) as rig:
        agent, call_id = await _call(rig)
        await agent.say("Hello, this is thinnestAI.")
        await agent.say("I would like a taxi", user=True)
        await _until(lambda: len(rig.lines) >= 2)
        assert [(line["speaker"], line["text"]) for line in rig.lines] == [
            ("agent", "Hello, this is thinnestAI."),
            ("user", "I would like a taxi"),
        ]
        assert {line["call_id"] for line in rig.lines} == {call_id}
        await agent.end("agent_hangup")
        await rig.device.watcher.wait_for(State.READY, 15)
        assert _ending(rig) == ["platform_ended"]
        record = await rig.record(call_id)
        assert (record.end_reason, record.end_detail) == (
            "platform_ended",
            "agent_hangup (duration 3 s)",
        )


async def test_vatel_tool_calls_answered_with_tool_call_output_and_session_ended(
    tmp_path: Path,
) -> None:
    async with platform_rig(tmp_path, "vatel", tools=["end_call", "device_status"]) as rig:
        agent, call_id = await _call(rig)
        await agent.say("Welcome to Vatel.")
        await agent.say("hello", user=True)
        await _until(lambda: len(rig.lines) >= 2)
        assert [line["speaker"] for line in rig.lines] == ["agent", "user"]
        status = json.loads(await agent.call_tool("device_status", {}))
        assert status["state"] == "in_call"
        refused = await agent.call_tool("set_volume", {"level": 0.2})
        assert refused.startswith("not allowed")
        assert rig.device.daemon.speaker.volume == 1.0
        await agent.end("session_ended")
        await rig.device.watcher.wait_for(State.READY, 15)
        assert _ending(rig) == ["platform_ended"]
        record = await rig.record(call_id)
        assert (record.end_reason, record.end_detail) == ("platform_ended", "session_ended")


async def test_hmsvoicedock_transcription_streams_and_agent_state(tmp_path: Path) -> None:
    async with platform_rig(tmp_path, "hmsvoicedock") as rig:
        states: list[AgentActivity | None] = []
        rig.device.daemon.conversation.add_observer(states.append)
        agent, call_id = await _call(rig)
        assert isinstance(agent, LiveKitTranscriptionAgent)
        await agent.set_state("speaking")
        await agent.say("Hello from the assistant.")
        await agent.set_state("listening")
        await agent.say("opening", user=True, final=False)
        await agent.say("opening hours", user=True)
        await _until(lambda: len(rig.lines) >= 3)
        assert [(line["speaker"], line["final"]) for line in rig.lines] == [
            ("agent", True),
            ("user", False),
            ("user", True),
        ]
        assert states[:2] == [AgentActivity.SPEAKING, AgentActivity.LISTENING]
        # The assistant leaves (HMS gives its reason only in its webhook: 004 l. 634-641).
        await agent.end("user_hangup")
        await rig.device.watcher.wait_for(State.READY, 15)
        assert _ending(rig) == ["agent_left"]
        record = await rig.record(call_id)
        assert record.end_reason == "agent_left"
        assert states[-1] is None


async def test_call2me_transcripts_without_a_topic(tmp_path: Path) -> None:
    async with platform_rig(tmp_path, "call2me") as rig:
        agent, call_id = await _call(rig)
        await agent.say("Hi, Call2Me here.")
        await _until(lambda: len(rig.lines) >= 1)
        assert rig.lines[0]["speaker"] == "agent" and rig.lines[0]["text"] == "Hi, Call2Me here."
        # 000 l. 10-17: the call ends with the room; the agent leaving is agent_left.
        await agent.end("done")
        await rig.device.watcher.wait_for(State.READY, 15)
        assert (await rig.record(call_id)).end_reason == "agent_left"


async def test_call2me_token_expired_is_a_new_session_continuing_the_call(tmp_path: Path) -> None:
    async with platform_rig(tmp_path, "call2me") as rig:
        first, call_id = await _call(rig)
        kiosk = await first.wait_for_kiosk()
        # Call2Me's server drops the kiosk whose token ran out (000 l. 66).
        async with api.LiveKitAPI(
            rig.livekit.http_url, FAKE_LIVEKIT_KEY, FAKE_LIVEKIT_SECRET
        ) as lkapi:
            await lkapi.room.remove_participant(
                api.RoomParticipantIdentity(room=first.room_name, identity=kiosk)
            )
        # The device rejoins; the backend's answer is a fresh Call2Me session in a new room.
        second = await rig.next_agent()
        await second.wait_for_kiosk()
        assert second.room_name != first.room_name
        await rig.device.watcher.wait_for(State.IN_CALL, 20)
        assert len(rig.fake.received) == 2 and rig.fake.refused == []
        await second.say("Still here.")
        await _until(lambda: any(line["text"] == "Still here." for line in rig.lines))
        await second.end("done")
        await rig.device.watcher.wait_for(State.READY, 15)
        # One call on the record, from the press to the end.
        assert [c.call_id for c in await rig.backend.core.list_calls()] == [call_id]
        assert (await rig.record(call_id)).end_reason == "agent_left"
        assert [c.state for c in rig.device.watcher.changes].count(State.REJOINING) >= 1


async def _ringing_call(rig: PlatformRig) -> tuple[SipLeg, str]:
    """Press; the kiosk joins and publishes first and shows ringing; the backend has the
    bridge dial (/connect), and the phone's leg comes into the room, ringing."""
    assert isinstance(rig.fake, FakeClick2Call)
    rig.fake.published = functools.partial(_kiosk_published, rig.livekit)
    rig.device.daemon.press()
    await rig.device.watcher.wait_for(State.RINGING, 20)
    leg = await rig.next_agent()
    assert isinstance(leg, SipLeg)
    await leg.wait_for_kiosk()
    await leg.ring()
    # The bridge dialed only once the kiosk's microphone was in the room: a /connect that
    # came before LiveKit listed it was refused and asked again (core._dial).
    assert set(rig.fake.refused) <= {"join the room and publish the mic first"}
    assert [step for step, _c, _b in rig.fake.control].count("connect") == 1 + len(rig.fake.refused)
    (call,) = await rig.backend.core.list_calls()
    return leg, call.call_id


async def _kiosk_published(livekit: LiveKitServer, room: str) -> bool:
    """Whether a standard participant (the kiosk) has an audio track published in `room`."""
    async with api.LiveKitAPI(livekit.http_url, FAKE_LIVEKIT_KEY, FAKE_LIVEKIT_SECRET) as lkapi:
        found = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    return any(
        p.kind == api.ParticipantInfo.Kind.STANDARD
        and any(t.type == api.TrackType.AUDIO for t in p.tracks)
        for p in found.participants
    )


def _steps(fake: FakePlatform) -> list[tuple[str, object]]:
    assert isinstance(fake, FakeClick2Call)
    return [(step, dict(body)) for step, _call, body in fake.control]


async def test_click2call_rings_the_phone_until_it_answers(tmp_path: Path) -> None:
    async with platform_rig(tmp_path, "click2call") as rig:
        leg, call_id = await _ringing_call(rig)
        await asyncio.sleep(1.0)
        # The phone's leg is in the room, ringing: not yet a call.
        assert rig.device.daemon.supervisor.state is State.RINGING
        await leg.speak(ring_cadence()[: SAMPLE_RATE // 2])  # its ringback, as early media
        await leg.answer()  # sip.callStatus becomes active (003 l. 58-60)
        await rig.device.watcher.wait_for(State.IN_CALL, 10)
        # The person's voice; heard well before its last half second of silence has played.
        await leg.speak(ring_cadence()[: SAMPLE_RATE * 3 // 2])
        answered = [c for c in rig.device.watcher.changes if c.state is State.IN_CALL]
        assert answered[0].reason == "answered"
        await _until(lambda: len(_steps(rig.fake)) >= 2)  # the answer, relayed upstream
        await leg.aclose()  # the customer hangs up (003 l. 48-50)
        await rig.device.watcher.wait_for(State.READY, 15)
        assert _ending(rig) == ["sip_left"]
        record = await rig.record(call_id)
        assert record.end_reason == "sip_left"
        # Join and publish first, then dial; the answer reported; hung up when it ended.
        assert _steps(rig.fake) == [
            ("connect", {}),
            ("status", {"status": "ANSWERED"}),
            ("hangup", {}),
        ]
        assert (record.upstream_call_id, record.outcome) == (rig.fake.control[0][1], "ANSWERED")
        stages = rig.device.timelines[-1].stages_ms
        # The answer; the first far-end audio after it (the ringback was not the voice).
        assert stages["first_agent_audio"] >= stages["agent_joined"]


async def test_click2call_a_phone_that_is_not_answered_ends_no_answer(tmp_path: Path) -> None:
    async with platform_rig(tmp_path, "click2call") as rig:
        leg, call_id = await _ringing_call(rig)
        await leg.aclose()  # the bridge gives up: NOT_ANSWERED (003 l. 16, 99)
        await rig.device.watcher.wait_for(State.READY, 15)
        assert _ending(rig) == ["no_answer"]
        assert State.IN_CALL not in [c.state for c in rig.device.watcher.changes]
        record = await rig.record(call_id)
        assert (record.end_reason, record.outcome) == ("no_answer", "NOT_ANSWERED")
        await _until(lambda: len(_steps(rig.fake)) >= 2)
        assert _steps(rig.fake) == [("connect", {}), ("hangup", {})]
