"""The call worker's wire: every call event survives it, frames arrive whole and in order,
and what is not a frame of ours is refused."""

from __future__ import annotations

import asyncio
import socket
import struct
import typing
from collections.abc import AsyncIterator

import pytest

from appliance.call.events import (
    AgentActivity,
    AgentAudioStarted,
    AgentStateChanged,
    CallEvent,
    Disconnected,
    EndRequested,
    FarEndAnswered,
    PartyJoined,
    PartyLeft,
    PlatformEnded,
    Reconnected,
    Reconnecting,
    Speaker,
    SpeechActivity,
    ToolCall,
    Transcript,
)
from appliance.call.wire import MAX_PAYLOAD, Channel, WireError, event_message, parse_event
from appliance.state import EndReason

pytestmark = pytest.mark.unit

EVENTS: list[CallEvent] = [
    PartyJoined("agent-1"),
    AgentAudioStarted(),
    PartyLeft("agent-1"),
    Disconnected(room_closed=True, detail="ROOM_DELETED"),
    Disconnected(room_closed=False, detail="call worker exited"),
    EndRequested(EndReason.AGENT_ENDED),
    SpeechActivity("device"),
    Reconnecting(),
    Reconnected(party_present=False),
    Transcript(Speaker.USER, "when does it open", False, "SG_1"),
    AgentStateChanged(AgentActivity.SPEAKING),
    AgentStateChanged(None),
    FarEndAnswered("sip_1"),
    PlatformEnded("call_ended (duration 42 s)"),
    ToolCall("set_volume", "tc-1", {"level": 0.5}),
]


def test_every_kind_of_call_event_is_covered() -> None:
    assert {type(e) for e in EVENTS} == set(typing.get_args(CallEvent))


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_a_call_event_round_trips(event: CallEvent) -> None:
    message = event_message(event)
    assert message["type"] == "event"
    assert parse_event(message) == event


@pytest.mark.parametrize(
    "message",
    [
        {"type": "event", "event": "Nonsense"},
        {"type": "event", "event": "PartyJoined"},
        {"type": "event", "event": "EndRequested", "reason": "bored"},
        {"type": "event", "event": "Reconnecting", "extra": 1},
        {"type": "event", "event": "AgentStateChanged", "state": "dancing"},
        {"type": "event", "event": "ToolCall", "name": "x", "call_id": "1", "args": [1]},
    ],
)
def test_what_is_not_a_call_event_is_refused(message: dict[str, object]) -> None:
    with pytest.raises(WireError):
        parse_event(message)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Channel, socket.socket]]:
    """Our channel over one end of a socketpair, and the raw other end."""
    ours, theirs = socket.socketpair()
    channel = await Channel.over(ours)
    try:
        yield channel, theirs
    finally:
        await channel.aclose()
        theirs.close()


async def test_frames_arrive_whole_and_in_order() -> None:
    a, b = socket.socketpair()
    left, right = await Channel.over(a), await Channel.over(b)
    frame = bytes(range(256)) * 3 + bytes(192)  # 960 bytes: one 10 ms frame
    left.send({"type": "connect", "token": "t"})
    for _ in range(50):
        left.send_audio(frame)
    left.send({"type": "close"})
    await left.drain()
    async with asyncio.timeout(5):
        assert await right.receive() == {"type": "connect", "token": "t"}
        for _ in range(50):
            assert await right.receive() == frame
        assert await right.receive() == {"type": "close"}
        await left.aclose()
        assert await right.receive() is None
    await right.aclose()


@pytest.mark.parametrize(
    "raw",
    [
        struct.pack("!BI", 9, 1) + b"x",  # an unknown kind
        struct.pack("!BI", 2, MAX_PAYLOAD + 1),  # far too long
        struct.pack("!BI", 2, 4) + b"[1]\n",  # JSON, but not an object with a type
        struct.pack("!BI", 2, 3) + b"{{{",  # not JSON
        struct.pack("!BI", 1, 960) + bytes(10),  # cut off inside a frame
    ],
    ids=["kind", "length", "untyped", "json", "truncated"],
)
async def test_what_is_not_a_frame_of_ours_is_refused(
    pair: tuple[Channel, socket.socket], raw: bytes
) -> None:
    channel, theirs = pair
    theirs.sendall(raw)
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(WireError):
        async with asyncio.timeout(5):
            await channel.receive()


async def test_sending_after_close_is_dropped_quietly(pair: tuple[Channel, socket.socket]) -> None:
    channel, _theirs = pair
    await channel.aclose()
    assert channel.closed
    channel.send({"type": "status", "payload": "{}"})
    channel.send_audio(bytes(960))


async def test_a_lost_connection_ends_the_stream_and_is_not_raised_by_drain() -> None:
    """The worker died: `receive` says so once; the microphone's `drain` must not raise
    (it would end the call instead of letting the device rejoin)."""
    ours, theirs = socket.socketpair()
    channel = await Channel.over(ours)
    theirs.close()
    async with asyncio.timeout(5):
        for _ in range(200):  # the first writes may still land in the socket's buffer
            channel.send_audio(bytes(960))
            await channel.drain()
        assert await channel.receive() is None
    await channel.aclose()
