"""What a call tells the supervisor; nothing here knows about LiveKit."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.state import EndReason
from appliance.vocabulary import PartyKind


@dataclass(frozen=True)
class PartyJoined:
    """A remote party (agent, person, SIP participant) is in the room."""

    identity: str
    kind: PartyKind = PartyKind.AGENT


@dataclass(frozen=True)
class AgentAudioStarted:
    """The first audible frame of the agent's voice reached the speaker."""


@dataclass(frozen=True)
class PartyLeft:
    """A remote party left the room; `remaining` parties are still in it."""

    identity: str
    kind: PartyKind = PartyKind.AGENT
    remaining: int = 0


@dataclass(frozen=True)
class Disconnected:
    """We lost the room: the server closed it or the connection broke for good."""

    room_closed: bool
    detail: str


@dataclass(frozen=True)
class Reconnecting:
    """The SDK lost the connection and is trying to resume it (the call may come back)."""


@dataclass(frozen=True)
class Reconnected:
    """The SDK got the connection back; `party_present` says whether any
    remote party is in the room."""

    party_present: bool


@dataclass(frozen=True)
class SpeechActivity:
    """Someone spoke in the last moment: "device" (the person) or "agent"."""

    side: str


@dataclass(frozen=True)
class EndRequested:
    """Something on the device asked to end the call."""

    reason: EndReason


CallEvent = (
    PartyJoined
    | AgentAudioStarted
    | PartyLeft
    | Disconnected
    | EndRequested
    | SpeechActivity
    | Reconnecting
    | Reconnected
)
