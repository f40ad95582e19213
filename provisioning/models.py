"""Records the core hands around: devices, enrollment codes, calls, call grants, LiveKit events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any


def _no_settings() -> Mapping[str, Any]:
    return MappingProxyType({})


IDENTITY_PREFIX = "device-"
ROOM_PREFIX = "call-"


def device_id_of_identity(identity: str) -> str | None:
    """The device id in a participant identity the backend assigned, or None for anyone else."""
    device_id = identity.removeprefix(IDENTITY_PREFIX)
    return device_id if device_id and device_id != identity else None


def room_of_call(call_id: str) -> str:
    """The one LiveKit room of a call."""
    return f"{ROOM_PREFIX}{call_id}"


def call_id_of_room(room: str) -> str | None:
    """The call id in a room name the backend chose, or None for any other room."""
    call_id = room.removeprefix(ROOM_PREFIX)
    return call_id if call_id and call_id != room else None


class DeviceStatus(StrEnum):
    """Where a device is in its life: only an approved device gets tokens.

    `pending` waits for an admin (enrolled with a code that requires approval); a
    `rejected` or `revoked` device needs a new key and a new code.
    """

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    REVOKED = "revoked"


class FlagReason(StrEnum):
    """Why the backend flagged a device for an administrator to look at."""

    # A track that is not audio (e.g. video declaring itself a microphone).
    NON_AUDIO_TRACK = "non_audio_track"
    # An audio track from a source other than the microphone.
    NON_MICROPHONE_SOURCE = "non_microphone_source"


@dataclass(frozen=True)
class Device:
    """An enrolled device; `public_key` is the raw 32-byte Ed25519 key.

    `flagged_at`/`flag_reason` are set the first time the backend caught it misbehaving.
    """

    device_id: str
    public_key: bytes = field(repr=False)
    name: str
    status: DeviceStatus
    created_at: float
    flagged_at: float | None = None
    flag_reason: FlagReason | None = None
    # Fleet settings: the device's own overrides, its group and that group's settings.
    group: str | None = None
    settings: Mapping[str, Any] = field(default_factory=_no_settings)
    group_settings: Mapping[str, Any] = field(default_factory=_no_settings)
    # What its last check-in said, and when it was.
    last_seen: float | None = None
    firmware: str | None = None
    board: str | None = None
    state: str | None = None
    last_error: str | None = None
    clock_offset_s: float | None = None

    @property
    def identity(self) -> str:
        """The LiveKit participant identity the backend assigns to this device."""
        return f"{IDENTITY_PREFIX}{self.device_id}"


@dataclass(frozen=True)
class EnrollmentCode:
    """A stored enrollment code: only the SHA-256 of the code is kept."""

    code_hash: str
    label: str
    created_at: float
    expires_at: float
    used_at: float | None
    device_id: str | None
    # A device enrolled with it waits for an admin's approval; and joins this group.
    requires_approval: bool = False
    group: str | None = None


@dataclass(frozen=True)
class CallRecord:
    """One call a device started, and how it ended if it has."""

    call_id: str
    device_id: str
    room: str
    trigger: str
    created_at: float
    token_expires_at: float
    ended_at: float | None = None
    end_reason: str | None = None
    duration_ms: int | None = None
    # The platform's own reason for a `platform_ended` (bounded, printable).
    end_detail: str | None = None
    # The platform's own id for the call, and the outcome it was told (Click2Call).
    upstream_call_id: str | None = None
    outcome: str | None = None


@dataclass(frozen=True)
class HeldGrant:
    """A call token minted ahead for an idle device; it becomes a call only when used."""

    call_id: str
    device_id: str
    room: str
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class CallGrant:
    """What a device needs to join its call; the token is a secret."""

    server_url: str
    token: str = field(repr=False)
    room: str
    identity: str
    call_id: str
    expires_at: float
    # Whose room it is: `livekit` (the fleet's own server) or a platform (docs/platforms.md).
    provider: str = "livekit"
    # The call rings people first: {timeout_s, on_no_answer} (provisioning/ringing.py).
    ring: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class LiveKitEventRecord:
    """A LiveKit webhook event the backend accepted: recorded once per event id.

    `created_at` is LiveKit's own time for the event, `received_at` the backend's.
    """

    event_id: str
    event: str
    room: str
    created_at: float
    received_at: float


@dataclass(frozen=True)
class Nonce:
    """A signed request's nonce, to be remembered until its timestamp leaves the window."""

    device_id: str
    value: str
    expires_at: float


@dataclass(frozen=True)
class Admission:
    """What spending a request's nonce found: was it fresh, and, if so, the device's
    status now (None if the device is gone)."""

    fresh: bool
    status: DeviceStatus | None


@dataclass(frozen=True)
class DeviceReport:
    """What a device says about itself at each check-in (all optional, all short text)."""

    firmware: str | None = None
    board: str | None = None
    state: str | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class AdminAction:
    """One thing an admin did, by whom and when: the fleet's audit trail."""

    at: float
    actor: str
    action: str
    target: str
    detail: Mapping[str, Any] = field(default_factory=_no_settings)
