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
    # The hosted platform ended the call in the room (thinnestAI's call_ended, Vatel's
    # session_ended); its own reason goes with the report as `detail`.
    PLATFORM_ENDED = "platform_ended"


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


class DeviceTool(StrEnum):
    """What an agent may ask a kiosk to do in a call, if the fleet's `tools` allow it."""

    END_CALL = "end_call"
    SET_VOLUME = "set_volume"  # {"level": 0.0-1.0}
    DEVICE_STATUS = "device_status"
    PULSE_RELAY = "pulse_relay"  # the board's relay output (a door opener), {"seconds"}


# The fleet's `tools` when it sets none: ending the call is what an agent's end-call
# message already does; everything else is opted into.
DEFAULT_TOOLS = frozenset({DeviceTool.END_CALL})


class Trigger(StrEnum):
    """What started a call."""

    BUTTON = "button"
    WAKE_WORD = "wake_word"
    COMMAND = "command"  # `appliance press` on the control socket
