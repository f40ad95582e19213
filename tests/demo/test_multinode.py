"""Two LiveKit nodes on one Redis: a call works whichever node the device and the agent reach."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit import api

from appliance.audio.simulated import read_wav_mono
from appliance.state import State
from demo.agent_session import AgentState
from demo.livekit_server import LiveKitServer, build_config
from demo.redis_server import RedisServer, RedisServerNotFoundError
from demo.signal import slip_tolerant_xcorr
from demo.stack import LocalStack
from tests.e2e import test_call
from tests.e2e.conftest import RunningDevice, device, user_pcm

# The device fixture (enrolled, running, READY) and its microphone WAV, on this module's stack.
__all__ = ["device", "user_pcm"]
RATE = test_call.RATE

# livekit-server pkg/routing/redisrouter.go: the Redis hash from room name to hosting node ID.
ROOM_NODE_MAP = "room_node_map"
# pkg/service/roommanager.go logs this on the node that runs a participant's RTC session.
RTC_SESSION_LINE = "starting RTC session"


@pytest.fixture(
    params=[(0, 1), (1, 0)],
    ids=["device-on-node1-agent-on-node2", "device-on-node2-agent-on-node1"],
)
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LocalStack]:
    device_node, agent_node = request.param
    local = LocalStack(
        workdir=tmp_path / "stack",
        livekit_nodes=2,
        device_node=device_node,
        agent_node=agent_node,
    )
    try:
        async with asyncio.timeout(90):
            await local.start()
        yield local
    finally:
        async with asyncio.timeout(60):
            await local.aclose()


@pytest.mark.unit
async def test_missing_redis_names_the_package(tmp_path: Path) -> None:
    redis = RedisServer(binary=tmp_path / "nope")
    async with asyncio.timeout(5):
        with pytest.raises(RedisServerNotFoundError, match="`redis-server` package"):
            await redis.start()


@pytest.mark.unit
def test_nodes_share_redis_and_keys_and_the_stack_checks_its_node_indexes() -> None:
    single = build_config(port=1, rtc_udp_port=2, api_key="k", api_secret="s")
    node = build_config(port=1, rtc_udp_port=2, api_key="k", api_secret="s", redis_address="a:1")
    assert "redis" not in single
    assert node == {**single, "redis": {"address": "a:1"}}
    second = LiveKitServer(api_key="k", api_secret="s", redis_address="a:1")
    assert (second.api_key, second.api_secret, second.redis_address) == ("k", "s", "a:1")
    with pytest.raises(ValueError, match="go together"):
        LiveKitServer(api_key="k")
    with pytest.raises(ValueError, match="agent_node=2"):
        LocalStack(livekit_nodes=2, agent_node=2)


@pytest.mark.integration
async def test_redis_answers_on_loopback_keeps_nothing_and_stops() -> None:
    redis = RedisServer()
    try:
        async with asyncio.timeout(15):
            await redis.start()
        assert redis.address.startswith("127.0.0.1:")
        assert await redis.command("PING") == "PONG"
        for key, value in [
            ("bind", b"127.0.0.1"),
            ("protected-mode", b"yes"),
            ("save", b""),
            ("appendonly", b"no"),
        ]:
            assert await redis.command("CONFIG", "GET", key) == [key.encode(), value]
        assert redis.log_path is not None
        workdir = redis.log_path.parent
    finally:
        async with asyncio.timeout(10):
            await redis.aclose()
    assert not workdir.exists()
    with pytest.raises(OSError):
        async with asyncio.timeout(5):
            await redis.command("PING")


async def _rooms_and_identities(node: LiveKitServer, room: str) -> tuple[list[str], set[str]]:
    """What `node`'s RoomService reports: rooms named `room`, and who is in it."""
    async with (
        asyncio.timeout(10),
        api.LiveKitAPI(node.http_url, node.api_key, node.api_secret) as lkapi,
    ):
        rooms = await lkapi.room.list_rooms(api.ListRoomsRequest(names=[room]))
        people = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    return [r.name for r in rooms.rooms], {p.identity for p in people.participants}


def _rtc_sessions(node: LiveKitServer, room: str) -> str:
    """The lines of `node`'s log where it started an RTC session in `room`."""
    assert node.log_path is not None
    lines = node.log_path.read_text(errors="replace").splitlines()
    return "\n".join(line for line in lines if RTC_SESSION_LINE in line and room in line)


@pytest.mark.e2e
async def test_call_works_with_device_and_agent_on_different_nodes(
    stack: LocalStack, device: RunningDevice
) -> None:
    assert stack.redis is not None
    nodes = stack.livekit_nodes
    assert len({n.node_id for n in nodes}) == 2 and all(n.node_id for n in nodes)
    assert len({n.port for n in nodes}) == 2 and len({n.rtc_udp_port for n in nodes}) == 2
    assert stack.device_livekit is not stack.agent_livekit

    device.daemon.press()
    session = await stack.agent.next_session(timeout=30)
    await device.watcher.wait_for(State.IN_CALL, 30)
    room = session.room_name

    # Redis routing is in use: the room is hosted on one node, and whichever it is, one of
    # the two participants signals through the other node.
    host_id = await asyncio.wait_for(stack.redis.command("HGET", ROOM_NODE_MAP, room), 10)
    assert isinstance(host_id, bytes), f"room {room} is not in Redis' {ROOM_NODE_MAP}"
    (host,) = [n for n in nodes if n.node_id == host_id.decode()]
    (other,) = [n for n in nodes if n is not host]
    relayed = "device" if stack.device_livekit is other else "agent"
    print(f"\nroom on node {nodes.index(host) + 1}; the {relayed} signals through the other")

    # Both nodes' RoomService see the one room and both participants, from the shared state.
    agent_identity = f"agent-{session.job_id}"
    seen = [await _rooms_and_identities(node, room) for node in nodes]
    assert seen[0] == seen[1]
    names, identities = seen[0]
    assert names == [room]
    assert agent_identity in identities and len(identities) == 2, identities

    # Both RTC sessions, the relayed participant's too, run on the host; none on the other.
    host_sessions = _rtc_sessions(host, room)
    for identity in identities:
        assert f'"participant": "{identity}"' in host_sessions, host_sessions
    assert _rtc_sessions(other, room) == ""

    # Audio crossed the nodes both ways: the agent hears the microphone, and its greeting
    # reaches the device's speaker.
    await test_call._wait_for_audio(session, 1.0, 30)
    async with asyncio.timeout(30):
        while session.state is not AgentState.LISTENING:  # the greeting has been sent
            await asyncio.sleep(0.1)
    await asyncio.sleep(1.5)  # the device's jitter buffer plays out the greeting's tail
    device.daemon.press()
    await device.watcher.wait_for(State.READY, 20)

    assert "first_agent_audio" in device.timelines[0].stages_ms
    speaker = read_wav_mono(device.daemon.settings.simulated.speaker_wav)  # type: ignore[arg-type]
    greeting_peak, _ = slip_tolerant_xcorr(speaker, session.greeting_pcm, RATE)
    assert greeting_peak > 0.5, f"speaker output lacks the agent's greeting ({greeting_peak:.2f})"
