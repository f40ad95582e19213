"""The call-provider seam: who gives a device its LiveKit room for one call.

The fleet's own LiveKit server (tokens minted here, the agent dispatched by the token) and
five hosted platforms that hand out LiveKit credentials from their own API (docs/platforms.md).
Whatever the provider, the device gets the same `{server_url, token, room, identity, call_id,
expires_at}`; fields a platform does not return are read from the LiveKit JWT it returned.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from provisioning.providers.errors import UpstreamUnavailableError


class ProviderKind(StrEnum):
    """Where a device's calls go: a closed vocabulary (fleet settings `provider.kind`)."""

    LIVEKIT = "livekit"  # the fleet's own LiveKit server and agent
    CALL2ME = "call2me"
    VATEL = "vatel"
    THINNESTAI = "thinnestai"
    CLICK2CALL = "click2call"
    HMSVOICEDOCK = "hmsvoicedock"


class CallOutcome(StrEnum):
    """How a call with call control ended, as the platform's CRM is told (Click2Call's
    `call_status`, seed 003 l. 99): a closed vocabulary, the only values of calls.outcome."""

    ANSWERED = "ANSWERED"
    NOT_ANSWERED = "NOT_ANSWERED"
    FAILED = "FAILED"


def call_outcome(value: object) -> CallOutcome:
    """`value` as a CallOutcome, checked before it is stored; ValueError for anything else."""
    if not isinstance(value, str) or value not in set(CallOutcome):
        raise ValueError(f"outcome must be one of {', '.join(CallOutcome)}, not {value!r}")
    return CallOutcome(value)


@dataclass(frozen=True)
class CallRequest:
    """One call (or rejoin) to open for a device; `options` are its provider settings."""

    device_id: str
    identity: str  # ours: device-<device_id>
    name: str
    call_id: str  # ours: c-<16 hex>, what the device reports against
    room: str  # ours: call-<call_id>; platforms choose their own
    agent_name: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderGrant:
    """What the device gets to join, before it is tied to our call id."""

    server_url: str
    token: str = field(repr=False)
    room: str
    identity: str
    expires_at: int  # the LiveKit JWT's `exp`, Unix seconds
    # The platform's own id for the call or session (Click2Call's c2c_…, HMS's uuid), if any.
    upstream_call_id: str | None = None


class CallProvider(Protocol):
    """Opens one call's room for a device. Upstream failures raise `UpstreamError`s."""

    @property
    def kind(self) -> ProviderKind: ...

    @property
    def holds_grants(self) -> bool:
        """Whether a grant may be minted ahead and held by an idle device: only when minting
        creates nothing upstream (no session, no call, no billing, no concurrency slot)."""
        ...

    async def open_call(self, request: CallRequest) -> ProviderGrant:
        """The room, token and identity for this call; bounded in time."""
        ...


@dataclass(frozen=True)
class JwtClaims:
    """The claims of a LiveKit JWT we need: read, never verified (we do not hold the
    platform's secret; LiveKit checks the signature when the device joins)."""

    identity: str | None
    room: str | None
    expires_at: int | None


def unverified_claims(token: str) -> JwtClaims:
    """The identity (`sub`), room (`video.room`) and `exp` of a LiveKit JWT, unverified."""
    parts = token.split(".")
    if len(parts) != 3:
        raise UpstreamUnavailableError("the platform's token is not a JWT")
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise UpstreamUnavailableError("the platform's token has no readable claims") from exc
    if not isinstance(claims, dict):
        raise UpstreamUnavailableError("the platform's token has no readable claims")
    video = claims.get("video")
    room = video.get("room") if isinstance(video, dict) else None
    exp = claims.get("exp")
    sub = claims.get("sub")
    return JwtClaims(
        identity=sub if isinstance(sub, str) and sub else None,
        room=room if isinstance(room, str) and room else None,
        expires_at=int(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None,
    )


def grant_from(
    *,
    server_url: object,
    token: object,
    room: object = None,
    identity: object = None,
    upstream_call_id: object = None,
) -> ProviderGrant:
    """A grant from a platform's answer; what it left out is read from the token."""
    if not isinstance(server_url, str) or not server_url.startswith(("ws://", "wss://")):
        raise UpstreamUnavailableError("the platform's answer has no ws:// or wss:// URL")
    if not isinstance(token, str) or not token:
        raise UpstreamUnavailableError("the platform's answer has no token")
    claims = unverified_claims(token)
    room = room if isinstance(room, str) and room else claims.room
    identity = identity if isinstance(identity, str) and identity else claims.identity
    if room is None or identity is None or claims.expires_at is None:
        raise UpstreamUnavailableError(
            "the platform's answer and token name no room, identity or expiry"
        )
    return ProviderGrant(
        server_url=server_url,
        token=token,
        room=room,
        identity=identity,
        expires_at=claims.expires_at,
        upstream_call_id=str(upstream_call_id) if upstream_call_id is not None else None,
    )
