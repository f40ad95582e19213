"""The device's states, how calls end, and the records observers receive."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from appliance.vocabulary import EndReason

__all__ = ["CALL_STATES", "FAULT_STATES", "CallTimeline", "EndReason", "State", "StateChange"]


class State(Enum):
    """What the device is doing; the supervisor is the only writer."""

    STARTING = "starting"
    # Enrolled with a code that needs an admin's approval: waits, checking in, until then.
    AWAITING_APPROVAL = "awaiting_approval"
    READY = "ready"
    CONNECTING = "connecting"
    # In the room, and the far end has not answered yet: operators being rung (a fleet
    # setting), a phone ringing behind a platform. A ring sound plays until a party joins.
    RINGING = "ringing"
    IN_CALL = "in_call"
    ENDING = "ending"
    REJOINING = "rejoining"
    BACKEND_UNREACHABLE = "backend_unreachable"
    CREDENTIALS_REJECTED = "credentials_rejected"
    RATE_LIMITED = "rate_limited"
    CALL_FAILED = "call_failed"
    TOKEN_REJECTED = "token_rejected"
    AUDIO_FAULT = "audio_fault"
    # The backend is fine; the hosted platform behind it refused the call (docs/platforms.md):
    # the fleet's key or request (401/403/400), no credit (402), down or slow (5xx, timeout).
    SERVICE_MISCONFIGURED = "service_misconfigured"
    SERVICE_OUT_OF_CREDIT = "service_out_of_credit"
    SERVICE_UNAVAILABLE = "service_unavailable"
    STOPPING = "stopping"

    @property
    def is_fault(self) -> bool:
        """A state that shows a failure; triggers still try a call from here."""
        return self in FAULT_STATES

    @property
    def carries_call_audio(self) -> bool:
        """Whether a call is using (or about to use) the microphone and speaker."""
        return self in CALL_STATES or self is State.ENDING

    @property
    def in_call_attempt(self) -> bool:
        """A call is under way (not yet ending): a trigger or a long press ends it."""
        return self in CALL_STATES

    @property
    def accepts_calls(self) -> bool:
        """Whether a trigger starts a call in this state."""
        # No call without a microphone and speaker: AUDIO_FAULT waits for the devices.
        return self is State.READY or (self.is_fault and self is not State.AUDIO_FAULT)


# A call under way, from the trigger until it starts ending.
CALL_STATES = frozenset({State.CONNECTING, State.RINGING, State.IN_CALL, State.REJOINING})

FAULT_STATES = frozenset(
    {
        State.BACKEND_UNREACHABLE,
        State.CREDENTIALS_REJECTED,
        State.RATE_LIMITED,
        State.CALL_FAILED,
        State.TOKEN_REJECTED,
        State.AUDIO_FAULT,
        State.SERVICE_MISCONFIGURED,
        State.SERVICE_OUT_OF_CREDIT,
        State.SERVICE_UNAVAILABLE,
    }
)


@dataclass(frozen=True)
class StateChange:
    """One transition, as every observer (log, LEDs, systemd, the call) sees it."""

    previous: State
    state: State
    call_id: str | None = None
    room: str | None = None
    reason: str | None = None
    muted: bool = False


@dataclass
class CallTimeline:
    """Milliseconds from the trigger to each stage of one call."""

    trigger: str
    call_id: str | None = None
    stages_ms: dict[str, float] = field(default_factory=dict)
    end_reason: EndReason | None = None

    STAGES = ("trigger", "token", "connected", "agent_joined", "first_agent_audio", "ended")

    def format(self) -> str:
        """One line per stage, in order, for people."""
        lines = [f"call {self.call_id or '-'} (trigger: {self.trigger})"]
        for stage in self.STAGES:
            value = self.stages_ms.get(stage)
            shown = f"{value:8.0f} ms" if value is not None else "        -"
            lines.append(f"  {stage:<18}{shown}")
        if self.end_reason is not None:
            lines.append(f"  end reason: {self.end_reason.value}")
        return "\n".join(lines)
