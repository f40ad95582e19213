"""Closed vocabularies shared by the device and the backend: why a call ended, what started it.

Dependency-free on purpose: the backend imports this module too, and checks every
end reason and trigger a device sends against it (docs/api.md lists them).
"""

from __future__ import annotations

from enum import StrEnum


class EndReason(StrEnum):
    """Why a call ended (or never started)."""

    USER = "user"
    AGENT_LEFT = "agent_left"
    ROOM_CLOSED = "room_closed"
    CONNECTION_LOST = "connection_lost"
    AGENT_TIMEOUT = "agent_timeout"
    MAX_DURATION = "max_duration"
    CONNECT_FAILED = "connect_failed"
    AUDIO_FAULT = "audio_fault"
    SHUTDOWN = "shutdown"
    IDLE = "idle"  # nobody spoke for call.idle_timeout_s
    AGENT_ENDED = "agent_ended"  # the agent sent an end-call message
    CANCELLED = "cancelled"  # a long press
    TOKEN_REFUSED = "token_refused"  # LiveKit refused the call's token twice (clock? keys?)
    DEVICE_RESTARTED = "device_restarted"  # the daemon died during the call; reported on restart
    # Set by the backend only: the device left the room itself, and its own report of why
    # never came (LiveKit's participant_left said CLIENT_INITIATED).
    DEVICE_LEFT = "device_left"
    # The last remote party left; the reason names its kind (PartyKind).
    PERSON_LEFT = "person_left"  # a person (an operator's browser) was the last to leave
    SIP_LEFT = "sip_left"  # a SIP participant (a phone, a hosted platform's bridge) was last
    OPERATOR_ENDED = "operator_ended"  # an operator the backend vouched for ended the call
    # The call rang people first (the fleet's ring_operators) and nobody answered in time.
    NO_ANSWER = "no_answer"


class OnNoAnswer(StrEnum):
    """What a call that rings people first does when nobody answers in time."""

    AGENT = "agent"  # the agent is dispatched into the room
    END = "end"  # the call ends `no_answer`


class PartyKind(StrEnum):
    """Who the kiosk is talking to: a remote party of the call, by LiveKit participant kind."""

    AGENT = "agent"
    PERSON = "person"
    SIP = "sip"


# Why the call ended when the last remote party of each kind left.
LAST_PARTY_LEFT = {
    PartyKind.AGENT: EndReason.AGENT_LEFT,
    PartyKind.PERSON: EndReason.PERSON_LEFT,
    PartyKind.SIP: EndReason.SIP_LEFT,
}


class Trigger(StrEnum):
    """What started a call."""

    BUTTON = "button"
    WAKE_WORD = "wake_word"
    COMMAND = "command"  # `appliance press` on the control socket
