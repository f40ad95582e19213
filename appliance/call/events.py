"""What a call tells the supervisor; nothing here knows about LiveKit."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.state import EndReason


@dataclass(frozen=True)
class AgentJoined:
    """The agent participant is in the room."""

    identity: str


@dataclass(frozen=True)
class AgentAudioStarted:
    """The first audible frame of the agent's voice reached the speaker."""


@dataclass(frozen=True)
class AgentLeft:
    """The agent participant left the room."""

    identity: str


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
    """The SDK got the connection back; `agent_present` says whether the agent is in the room."""

    agent_present: bool


@dataclass(frozen=True)
class SpeechActivity:
    """Someone spoke in the last moment: "device" (the person) or "agent"."""

    side: str


@dataclass(frozen=True)
class EndRequested:
    """Something on the device asked to end the call."""

    reason: EndReason


CallEvent = (
    AgentJoined
    | AgentAudioStarted
    | AgentLeft
    | Disconnected
    | EndRequested
    | SpeechActivity
    | Reconnecting
    | Reconnected
)
