"""A room LiveKit closes (deleted: a revocation) ends the call as room_closed, whichever of
its participants LiveKit tells the device about first."""

from __future__ import annotations

from dataclasses import dataclass

from livekit import rtc

from appliance.call.events import CallEvent, Disconnected, PartyLeft
from appliance.call.livekit_call import LiveKitRoom
from appliance.vocabulary import PartyKind


@dataclass
class Gone:
    """What the SDK hands over of a participant that left: who, and why."""

    identity: str
    disconnect_reason: int


async def _no_audio(frame: bytes) -> None:
    return None


def _call(events: list[CallEvent]) -> LiveKitRoom:
    return LiveKitRoom(
        call_id="c-1",
        room_name="call-c-1",
        on_event=events.append,
        on_agent_audio=_no_audio,
        status_topic="kiosk.call_status",
        control_topic="kiosk.control",
        connect_timeout_s=5.0,
    )


async def test_the_agent_gone_with_its_deleted_room_is_the_rooms_end_not_the_agents() -> None:
    events: list[CallEvent] = []
    call = _call(events)
    call._parties["agent-1"] = PartyKind.AGENT
    call._on_participant_disconnected(Gone("agent-1", rtc.DisconnectReason.ROOM_DELETED))  # type: ignore[arg-type]
    call._on_disconnected(rtc.DisconnectReason.ROOM_DELETED)  # the device's own, after
    assert events == [Disconnected(room_closed=True, detail="ROOM_DELETED")]


async def test_an_agent_that_leaves_is_the_last_party_leaving() -> None:
    events: list[CallEvent] = []
    call = _call(events)
    call._parties["agent-1"] = PartyKind.AGENT
    call._on_participant_disconnected(Gone("agent-1", rtc.DisconnectReason.CLIENT_INITIATED))  # type: ignore[arg-type]
    assert events == [PartyLeft("agent-1", PartyKind.AGENT, remaining=0)]
