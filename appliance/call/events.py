"""What a call tells the supervisor; nothing here knows about LiveKit."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

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


class Speaker(StrEnum):
    """Who said a transcribed line: the person at the kiosk, or the far end."""

    USER = "user"
    AGENT = "agent"


class AgentActivity(StrEnum):
    """The far end's `lk.agent.state`, as far as the kiosk shows it."""

    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


@dataclass(frozen=True)
class Transcript:
    """A line of the conversation; an interim line is replaced by the next one of its segment."""

    speaker: Speaker
    text: str
    final: bool = True
    segment_id: str = ""


@dataclass(frozen=True)
class AgentStateChanged:
    """The agent listens, thinks or speaks; None for any other state (initializing, idle)."""

    state: AgentActivity | None


@dataclass(frozen=True)
class FarEndAnswered:
    """The far end picked up (a phone's SIP participant became `active`)."""

    identity: str


@dataclass(frozen=True)
class PlatformEnded:
    """The platform ended the call in the room (`call_ended`, `session_ended`); `reason` is
    the platform's own word for why, as received (bounded and sanitized by the caller)."""

    reason: str


@dataclass(frozen=True)
class ToolCall:
    """The far end asks the kiosk to do something; answered by `call_id`."""

    name: str
    call_id: str
    args: dict[str, Any] = field(default_factory=dict)


CallEvent = (
    PartyJoined
    | AgentAudioStarted
    | PartyLeft
    | Disconnected
    | EndRequested
    | SpeechActivity
    | Reconnecting
    | Reconnected
    | Transcript
    | AgentStateChanged
    | FarEndAnswered
    | PlatformEnded
    | ToolCall
)
