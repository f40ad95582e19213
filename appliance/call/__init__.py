"""The call: LiveKit, behind our own events and call object."""

from appliance.call.events import (
    AgentAudioStarted,
    CallEvent,
    Disconnected,
    EndRequested,
    PartyJoined,
    PartyLeft,
)

__all__ = [
    "AgentAudioStarted",
    "CallEvent",
    "Disconnected",
    "EndRequested",
    "PartyJoined",
    "PartyLeft",
]
