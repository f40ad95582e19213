"""The provisioning client: signed requests over httpx, errors translated at this seam."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from appliance.aio import AsyncResource
from appliance.errors import (
    AwaitingApprovalError,
    BackendProtocolError,
    BackendRefusedError,
    BackendUnreachableError,
    CredentialsRejectedError,
    RateLimitedError,
    ServiceError,
    ServiceMisconfiguredError,
    ServiceOutOfCreditError,
    ServiceUnavailableError,
)
from appliance.provisioning_client.keys import DeviceKey, b64url
from appliance.vocabulary import OnNoAnswer

logger = logging.getLogger(__name__)

SIGNATURE_SCHEME = "kiosk-v1"
MAX_RETRY_AFTER_S = 3600.0
# The longest ring the backend sets (fleet settings' ring_operators.timeout_s); the
# watchdog's bound on `ringing` is made from it.
MAX_RING_S = 600.0
# The backend's refusals for a platform behind it (docs/api.md): told apart by their code, so
# that the platform refusing the fleet's key is never this device's credentials_rejected.
_SERVICE_ERRORS: Mapping[str, type[ServiceError]] = {
    "upstream_key_rejected": ServiceMisconfiguredError,
    "upstream_bad_request": ServiceMisconfiguredError,
    "provider_misconfigured": ServiceMisconfiguredError,
    "upstream_out_of_credit": ServiceOutOfCreditError,
    "upstream_unavailable": ServiceUnavailableError,
}


@dataclass(frozen=True)
class CallGrant:
    """What the backend hands out for one call; the token is never logged or shown."""

    server_url: str
    token: str = field(repr=False)
    room: str
    identity: str
    call_id: str
    expires_at: datetime
    # Whose room: `livekit` (the fleet's own server) or a hosted platform's name.
    provider: str = "livekit"
    # The call rings people first: no agent until someone answers or the ring runs out.
    ring: CallRing | None = None


@dataclass(frozen=True)
class CallRing:
    """A grant's ring: how long people are rung, and what happens if nobody answers."""

    timeout_s: float
    on_no_answer: OnNoAnswer


@dataclass(frozen=True)
class DiagnosticGrant:
    """A token to join and leave a throwaway room with no agent (`appliance doctor`)."""

    server_url: str
    token: str = field(repr=False)
    room: str
    identity: str
    expires_at: datetime


@dataclass(frozen=True)
class DeviceInfo:
    """The backend's view of this device, and the fleet settings it gets (as sent: the
    device checks them before applying any, `appliance/fleet_settings.py`)."""

    device_id: str
    name: str
    status: str
    agent_name: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    # Where calls go, and whether a grant may be held (not for a platform, which opens a
    # session per mint): fetch on the press when False. A backend that does not say: True.
    provider: str | None = "livekit"
    hold_grants: bool = True


@dataclass(frozen=True)
class StatusReport:
    """What the device tells the backend about itself at each check-in."""

    firmware: str | None = None
    board: str | None = None
    state: str | None = None
    last_error: str | None = None


def canonical_message(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """The bytes a device signs for one request (docs/api.md)."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join([SIGNATURE_SCHEME, method.upper(), path, timestamp, nonce, digest]).encode()


class ProvisioningClient(AsyncResource):
    """Signed requests to the backend. One instance keeps its connection warm across calls."""

    def __init__(
        self,
        base_url: str,
        key: DeviceKey,
        *,
        device_id: str | None = None,
        timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._device_id = device_id
        self._wall_clock = wall_clock
        self._clock_offset_s: float | None = None
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def enroll(self, code: str, name: str) -> tuple[str, str]:
        """Enroll with a one-time code; returns (device_id, identity)."""
        body = {"code": code, "public_key": self._key.public_key_b64, "name": name}
        data = await self._request("POST", "/v1/enroll", body, signed_as=None)
        device_id, identity = _get(data, "device_id", str), _get(data, "identity", str)
        self._device_id = device_id
        return device_id, identity

    async def check_in(self, report: StatusReport | None = None) -> DeviceInfo:
        """Check in (the heartbeat): tell the backend how this device is, and hear who it
        is and which fleet settings it gets; proves the key and the enrollment still work."""
        body = {k: v for k, v in vars(report or StatusReport()).items() if v is not None}
        data = await self._request("POST", "/v1/checkin", body, signed_as=self._require_id())
        settings = data.get("settings", {})
        if not isinstance(settings, dict):
            raise BackendProtocolError("backend answer's settings is not an object")
        provider = data.get("call_provider", {"kind": "livekit", "hold_grants": True})
        if not isinstance(provider, dict) or not isinstance(provider.get("hold_grants"), bool):
            raise BackendProtocolError("backend answer's call_provider is not understood")
        kind = provider.get("kind")
        return DeviceInfo(
            device_id=_get(data, "device_id", str),
            name=_get(data, "name", str),
            status=_get(data, "status", str),
            agent_name=_get(data, "agent_name", str),
            settings=settings,
            provider=kind if isinstance(kind, str) else None,
            hold_grants=provider["hold_grants"],
        )

    async def create_call(self, trigger: str) -> CallGrant:
        """Get a token for a fresh call room (recorded as a call at once)."""
        data = await self._request(
            "POST", "/v1/calls", {"trigger": trigger}, signed_as=self._require_id()
        )
        return _grant(data)

    async def hold_grant(self) -> CallGrant:
        """Get a token to hold while idle; it becomes a call only through `start_held_call`."""
        data = await self._request("POST", "/v1/grants", {}, signed_as=self._require_id())
        return _grant(data)

    async def diagnostic_grant(self) -> DiagnosticGrant:
        """A minute's token for a throwaway room of this device's own: no agent, no call."""
        data = await self._request(
            "POST", "/v1/diagnostics/livekit", {}, signed_as=self._require_id()
        )
        return DiagnosticGrant(
            server_url=_get(data, "server_url", str),
            token=_get(data, "token", str),
            room=_get(data, "room", str),
            identity=_get(data, "identity", str),
            expires_at=_timestamp(_get(data, "expires_at", str)),
        )

    async def start_held_call(self, call_id: str, trigger: str) -> None:
        """Tell the backend the held grant `call_id` was used for a call (idempotent)."""
        await self._request(
            "POST",
            f"/v1/calls/{call_id}/start",
            {"trigger": trigger},
            signed_as=self._require_id(),
        )

    async def rejoin_call(self, call_id: str, trigger: str) -> CallGrant:
        """A fresh token for the same room of a call that has not ended."""
        data = await self._request(
            "POST",
            f"/v1/calls/{call_id}/rejoin",
            {"trigger": trigger},
            signed_as=self._require_id(),
        )
        return _grant(data)

    async def report_progress(self, call_id: str, event: str) -> None:
        """News of a call in progress for a platform with call control: `joined` (in the
        room, microphone published: Click2Call dials the phone) or `answered`."""
        await self._request(
            "POST",
            f"/v1/calls/{call_id}/progress",
            {"event": event},
            signed_as=self._require_id(),
        )

    async def end_call(
        self, call_id: str, reason: str, duration_ms: int, *, detail: str | None = None
    ) -> None:
        """Record how one of our calls ended (and the platform's reason, if any)."""
        body: dict[str, str | int] = {"reason": reason, "duration_ms": duration_ms}
        if detail:
            body["detail"] = detail
        await self._request(
            "POST",
            f"/v1/calls/{call_id}/end",
            body,
            signed_as=self._require_id(),
        )

    def _require_id(self) -> str:
        if self._device_id is None:
            raise BackendProtocolError("this client has no device id: enroll first")
        return self._device_id

    def signed_headers(
        self, method: str, path: str, body: bytes, device_id: str | None
    ) -> dict[str, str]:
        """The authentication headers for one request."""
        timestamp = str(int(self._wall_clock()))
        nonce = secrets.token_hex(16)
        signature = self._key.sign(canonical_message(method, path, timestamp, nonce, body))
        headers = {
            "X-Device-Timestamp": timestamp,
            "X-Device-Nonce": nonce,
            "X-Device-Signature": b64url(signature),
        }
        if device_id is not None:
            headers["X-Device-Id"] = device_id
        return headers

    async def _request(
        self, method: str, path: str, payload: dict[str, Any] | None, *, signed_as: str | None
    ) -> dict[str, Any]:
        body = b"" if payload is None else json.dumps(payload).encode()
        headers = self.signed_headers(method, path, body, signed_as)
        if payload is not None:
            headers["Content-Type"] = "application/json"
        sent = self._wall_clock()
        try:
            response = await self._http.request(method, path, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise BackendUnreachableError(f"backend timed out on {method} {path}") from exc
        except httpx.TransportError as exc:
            raise BackendUnreachableError(f"backend unreachable on {method} {path}: {exc}") from exc
        self._note_clock_offset(response, sent, self._wall_clock())
        return _decode(method, path, response)

    @property
    def clock_offset_s(self) -> float | None:
        """The backend's clock minus ours, from the last answer's `Date` header (±1 s)."""
        return self._clock_offset_s

    def _note_clock_offset(self, response: httpx.Response, sent: float, received: float) -> None:
        date = response.headers.get("Date")
        if date is None:
            return
        try:
            backend_time = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return
        # `Date` has whole seconds; compare with the middle of the exchange.
        self._clock_offset_s = backend_time + 0.5 - (sent + received) / 2


def _decode(method: str, path: str, response: httpx.Response) -> dict[str, Any]:
    status = response.status_code
    try:
        data = response.json() if response.content else {}
    except ValueError:
        data = None
    code = data.get("error") if isinstance(data, dict) else None
    if status == 429 and code == "upstream_rate_limited" and isinstance(data, dict):
        raise RateLimitedError(
            _retry_after(response), f"the platform is busy on {path}: {data.get('message', '')}"
        )
    service = _SERVICE_ERRORS.get(code) if isinstance(code, str) and status >= 500 else None
    if service is not None and isinstance(data, dict):
        raise service(status, str(code), f"{method} {path}: {data.get('message', '')}")
    if status >= 500:
        raise BackendUnreachableError(f"backend error {status} on {method} {path}")
    if not isinstance(data, dict):
        raise BackendProtocolError(f"backend answered {status} without a JSON object on {path}")
    code = str(data.get("error", "unknown"))
    message = str(data.get("message", ""))
    if status == 403 and code == "device_pending":
        raise AwaitingApprovalError(f"{method} {path}: {message}")
    if status in (401, 403):
        raise CredentialsRejectedError(status, code, message)
    if status == 429:
        raise RateLimitedError(_retry_after(response), f"rate limited on {path}: {message}")
    if status >= 400:
        raise BackendRefusedError(status, code, f"{method} {path}: {message}")
    return data


def _timestamp(raw: str) -> datetime:
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BackendProtocolError(f"expires_at is not a timestamp: {raw!r}") from exc


def _grant(data: dict[str, Any]) -> CallGrant:
    expires_at = _timestamp(_get(data, "expires_at", str))
    return CallGrant(
        server_url=_get(data, "server_url", str),
        token=_get(data, "token", str),
        room=_get(data, "room", str),
        identity=_get(data, "identity", str),
        call_id=_get(data, "call_id", str),
        expires_at=expires_at,
        provider=data["provider"] if isinstance(data.get("provider"), str) else "livekit",
        ring=_ring(data.get("ring")),
    )


def _ring(value: object) -> CallRing | None:
    """The grant's ring; None when the backend sends none (an older one, or no ring)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BackendProtocolError("backend answer's ring is not understood")
    timeout = value.get("timeout_s")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise BackendProtocolError("backend answer's ring is not understood")
    try:
        on_no_answer = OnNoAnswer(str(value.get("on_no_answer")))
    except ValueError:
        # A choice newer than this device: waiting for whoever comes is the safe reading.
        on_no_answer = OnNoAnswer.AGENT
    return CallRing(min(float(timeout), MAX_RING_S), on_no_answer)


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds, if it is a sane number (never nan, inf or over an hour)."""
    value = response.headers.get("Retry-After")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


def _get(data: dict[str, Any], key: str, kind: type[str]) -> str:
    value = data.get(key)
    if not isinstance(value, kind):
        raise BackendProtocolError(f"backend answer lacks {key!r}")
    return value
