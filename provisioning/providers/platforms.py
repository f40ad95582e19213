"""The five hosted platforms, each mapping its documented request and answer (docs/platforms.md).

None of them holds grants: each mint creates something upstream (a session, a call, a room
with an agent dispatched into it, a concurrency slot, a bill), and their tokens are short
(HMS 5 min, thinnestAI 10 min), so a token minted ahead for an idle device would spend money
and slots for presses that may never come. Their devices fetch on the press.

Citations are to the documents in `seeds/` (../shared/seeds/ from the repository) by line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx

from provisioning.providers.base import CallRequest, ProviderGrant, ProviderKind, grant_from
from provisioning.providers.upstream import Upstream, post_json

# Vatel's document gives only its SDK call, generateSessionToken(agentId, {transport:
# TRANSPORT_WEBRTC}) (seed 001 lines 30-32), not the HTTP request under it: this path, the
# body and the Bearer header are assumptions, the path configurable (`[platforms.vatel]
# session_path`) until someone captures a real request.
VATEL_SESSION_PATH = "/v1/agents/{agent_id}/session-token"


def _correlation(request: CallRequest) -> dict[str, str]:
    """What ties the platform's records to ours: device, call, and the site if set."""
    found = {"device_id": request.device_id, "call_id": request.call_id}
    if "site" in request.options:
        found["site"] = request.options["site"]
    return found


def _context(request: CallRequest, kind: ProviderKind) -> dict[str, str]:
    return {"device_id": request.device_id, "call_id": request.call_id, "provider": kind.value}


@dataclass(frozen=True)
class _Platform:
    upstream: Upstream
    transport: httpx.AsyncBaseTransport | None = None
    holds_grants: ClassVar[bool] = False

    async def _post(
        self, request: CallRequest, kind: ProviderKind, path: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await post_json(
            self.upstream, path, body, context=_context(request, kind), transport=self.transport
        )


@dataclass(frozen=True)
class Call2Me(_Platform):
    """`POST /v1/livekit/token` {agent_id, user_identity, metadata} → {url, token, room_name}
    (seed 000 lines 23-38); the identity is read from the token."""

    kind: ClassVar[ProviderKind] = ProviderKind.CALL2ME

    async def open_call(self, request: CallRequest) -> ProviderGrant:
        """One token for one device and one agent."""
        options = request.options
        body = {
            "agent_id": options["agent_id"],
            "user_identity": request.identity,
            "metadata": {**options.get("metadata", {}), **_correlation(request)},
        }
        data = await self._post(request, self.kind, "/v1/livekit/token", body)
        return grant_from(
            server_url=data.get("url"), token=data.get("token"), room=data.get("room_name")
        )


@dataclass(frozen=True)
class Vatel(_Platform):
    """The session token with WebRTC transport: `url`, `webrtc_token` (the LiveKit JWT),
    `room`, `identity`; `token` is Vatel's own session JWT and is never handed on
    (seed 001 lines 2, 33). The HTTP shape is an assumption (`VATEL_SESSION_PATH`)."""

    kind: ClassVar[ProviderKind] = ProviderKind.VATEL
    session_path: str = VATEL_SESSION_PATH

    async def open_call(self, request: CallRequest) -> ProviderGrant:
        """A WebRTC session credential for the agent."""
        agent_id = request.options["agent_id"]
        path = self.session_path.replace("{agent_id}", quote(agent_id, safe=""))
        body = {"agent_id": agent_id, "transport": "webrtc"}
        data = await self._post(request, self.kind, path, body)
        # The SDK answers {data, status}; the credential may come bare or under `data`.
        inner = data.get("data")
        payload: Mapping[str, Any] = inner if isinstance(inner, dict) else data
        return grant_from(
            server_url=payload.get("url"),
            token=payload.get("webrtc_token"),
            room=payload.get("room"),
            identity=payload.get("identity"),
        )


@dataclass(frozen=True)
class ThinnestAI(_Platform):
    """`POST /voice/start` {agent_id, context, recording?, max_duration?} → {session_id,
    token, websocket_url, livekit_url} (seed 002 lines 15-30, 94-99); no room or identity in
    the answer: both are read from the token."""

    kind: ClassVar[ProviderKind] = ProviderKind.THINNESTAI

    async def open_call(self, request: CallRequest) -> ProviderGrant:
        """A voice session for the agent."""
        options = request.options
        body: dict[str, Any] = {
            "agent_id": options["agent_id"],
            "context": {**options.get("context", {}), **_correlation(request)},
        }
        for key in ("recording", "max_duration"):
            if key in options:
                body[key] = options[key]
        data = await self._post(request, self.kind, "/voice/start", body)
        return grant_from(
            server_url=data.get("livekit_url"),
            token=data.get("token"),
            upstream_call_id=data.get("session_id"),
        )


@dataclass(frozen=True)
class Click2Call(_Platform):
    """`POST /api/c2c/click2call` with `X-api-key` {case_id, customer_number, agent_id,
    customer_crm_id, did?} → {call_id, room, ws_url, token, customer_number}: the room and
    the kiosk's token; nobody is dialled yet (seed 003 lines 14, 19-28)."""

    kind: ClassVar[ProviderKind] = ProviderKind.CLICK2CALL

    async def open_call(self, request: CallRequest) -> ProviderGrant:
        """The room and token; the dial (`/connect`) comes after the device has joined."""
        options = request.options
        body = {
            key: options[key]
            for key in ("case_id", "customer_number", "agent_id", "customer_crm_id", "did")
            if key in options
        }
        data = await self._post(request, self.kind, "/api/c2c/click2call", body)
        return grant_from(
            server_url=data.get("ws_url"),
            token=data.get("token"),
            room=data.get("room"),
            upstream_call_id=data.get("call_id"),
        )

    async def control(
        self, upstream_call_id: str, step: CallStep, context: Mapping[str, str]
    ) -> None:
        """One call-control step on the bridge's call (003 l. 55-57, 67, 78, 85-87): `connect`
        dials the phone once the device has joined and published its microphone, `answered`
        reports `{status: "ANSWERED"}` (the answer signal in webhook mode), `hangup` ends it
        (idempotent). Server to server, with the same key as the call's creation."""
        path, body = _STEPS[step]
        await post_json(
            self.upstream,
            f"/api/c2c/calls/{quote(upstream_call_id, safe='')}/{path}",
            body,
            context={**context, "provider": self.kind.value, "step": step},
            transport=self.transport,
        )


# Click2Call's call-control steps: (path under /api/c2c/calls/{id}/, body).
CallStep = Literal["connect", "answered", "hangup"]
_STEPS: dict[str, tuple[str, dict[str, Any]]] = {
    "connect": ("connect", {}),
    "answered": ("status", {"status": "ANSWERED"}),
    "hangup": ("hangup", {}),
}


@dataclass(frozen=True)
class HmsVoiceDock(_Platform):
    """`POST /v1/web-calls` in reference, hybrid or transient mode → {success, call_id,
    room_name, token, server_url} (seed 004 lines 37-152). The device's and call's ids go in
    as metadata, the documented way to correlate a web call (lines 94-111)."""

    kind: ClassVar[ProviderKind] = ProviderKind.HMSVOICEDOCK

    async def open_call(self, request: CallRequest) -> ProviderGrant:
        """A web call: HMS creates the room and dispatches the assistant."""
        options = request.options
        metadata = {**options.get("metadata", {}), **_correlation(request)}
        body: dict[str, Any]
        if "assistant" in options:  # transient: the whole assistant inline (lines 74-87)
            body = {"assistant": {**options["assistant"], "metadata": metadata}}
        else:  # reference, or hybrid with the fleet's overrides (lines 56-72)
            override = {**options.get("assistant_override", {}), "metadata": metadata}
            body = {"assistant_id": options["assistant_id"], "assistant_override": override}
        data = await self._post(request, self.kind, "/v1/web-calls", body)
        return grant_from(
            server_url=data.get("server_url"),
            token=data.get("token"),
            room=data.get("room_name"),
            upstream_call_id=data.get("call_id"),
        )
