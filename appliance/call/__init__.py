"""The call: LiveKit, behind our own events and call object."""

from appliance.call.events import (
    AgentAudioStarted,
    AgentJoined,
    AgentLeft,
    CallEvent,
    Disconnected,
    EndRequested,
)

__all__ = [
    "AgentAudioStarted",
    "AgentJoined",
    "AgentLeft",
    "CallEvent",
    "Disconnected",
    "EndRequested",
]
