"""The admin API: JSON under `/v1/admin/`, a Bearer admin token on every request, over the core.

A `read` token may only GET; which routes write is decided by their method, in one place
(`AdminApi.add_routes`). Refusals are the backend's usual `{error, message}`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from appliance.vocabulary import EndReason
from provisioning.admin.errors import AdminAuthError, ReadOnlyTokenError
from provisioning.admin.openapi import OPENAPI_PATH, document
from provisioning.admin.tokens import AdminToken, AdminTokens
from provisioning.core import ProvisioningCore
from provisioning.errors import BadRequestError
from provisioning.models import AdminAction, CallRecord, Device, DeviceStatus, EnrollmentCode
from provisioning.webhooks_out import Delivery, DeliveryState, WebhookOutbox

PREFIX = "/v1/admin"
DEFAULT_LIMIT = 200
MAX_LIMIT = 1000
MAX_BODY_BYTES = 16 * 1024
TOKEN_KEY = web.RequestKey("admin_token", AdminToken)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def iso(epoch_s: float | None) -> str | None:
    """`2026-11-22T20:10:00Z` (whole seconds, UTC), or None."""
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(int(epoch_s), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str, name: str) -> float:
    """An ISO 8601 date or date-time (UTC unless it says otherwise) as epoch seconds."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError as exc:
        raise BadRequestError(f"{name} must be an ISO 8601 date or date-time") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def end_reason(value: str | None) -> str | None:
    """A filter's end reason, checked against the shared vocabulary."""
    if value is None or value == "":
        return None
    if value not in EndReason.__members__.values():
        choices = ", ".join(sorted(r.value for r in EndReason))
        raise BadRequestError(f"end_reason must be one of {choices}")
    return value


def limit_of(query: Mapping[str, str]) -> int:
    """The `limit` query parameter (1..1000, default 200)."""
    text = query.get("limit", str(DEFAULT_LIMIT))
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise BadRequestError(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(text)


def device_json(core: ProvisioningCore, device: Device) -> dict[str, Any]:
    """A device as the API shows it (never its key)."""
    return {
        "device_id": device.device_id,
        "name": device.name,
        "status": device.status.value,
        "created_at": iso(device.created_at),
        "group": device.group,
        "settings": dict(device.settings),
        "effective_settings": core.settings_of(device),
        "last_seen": iso(device.last_seen),
        "offline": core.offline(device),
        "firmware": device.firmware,
        "board": device.board,
        "state": device.state,
        "last_error": device.last_error,
        "clock_offset_s": device.clock_offset_s,
        "flagged_at": iso(device.flagged_at),
        "flag_reason": None if device.flag_reason is None else device.flag_reason.value,
    }


def call_json(call: CallRecord) -> dict[str, Any]:
    """A call record as the API shows it."""
    return {
        "call_id": call.call_id,
        "device_id": call.device_id,
        "room": call.room,
        "trigger": call.trigger,
        "started_at": iso(call.created_at),
        "ended_at": iso(call.ended_at),
        "end_reason": call.end_reason,
        "duration_ms": call.duration_ms,
        "end_detail": call.end_detail,
        "upstream_call_id": call.upstream_call_id,
        "outcome": call.outcome,
    }


def code_json(code: EnrollmentCode) -> dict[str, Any]:
    """An enrollment code as stored: a prefix of its hash, never the code."""
    return {
        "code_id": code.code_hash[:12],
        "label": code.label,
        "created_at": iso(code.created_at),
        "expires_at": iso(code.expires_at),
        "used_at": iso(code.used_at),
        "device_id": code.device_id,
        "requires_approval": code.requires_approval,
        "group": code.group,
    }


def delivery_json(delivery: Delivery) -> dict[str, Any]:
    """One fleet event's webhook delivery: its state and last attempt."""
    return {
        "event_id": delivery.event_id,
        "type": delivery.kind,
        "device_id": delivery.device_id,
        "created_at": iso(delivery.created_at),
        "state": delivery.state.value,
        "attempts": delivery.attempts,
        "next_attempt_at": None if delivery.finished_at else iso(delivery.next_attempt_at),
        "last_attempt_at": iso(delivery.last_attempt_at),
        "last_status": delivery.last_status,
        "last_error": None if delivery.last_error is None else delivery.last_error.value,
        "finished_at": iso(delivery.finished_at),
    }


def delivery_state(value: str | None) -> DeliveryState | None:
    """A filter's delivery state (pending, delivered, failed), checked."""
    if value is None or value == "":
        return None
    try:
        return DeliveryState(value)
    except ValueError as exc:
        choices = ", ".join(s.value for s in DeliveryState)
        raise BadRequestError(f"state must be one of {choices}") from exc


def action_json(action: AdminAction) -> dict[str, Any]:
    """One admin action."""
    return {
        "at": iso(action.at),
        "actor": action.actor,
        "action": action.action,
        "target": action.target,
        "detail": dict(action.detail),
    }


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; `BadRequestError` for anything else."""
    body = await request.read()
    if len(body) > MAX_BODY_BYTES:
        raise BadRequestError(f"body must be at most {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadRequestError("body must be a JSON object") from exc
    if not isinstance(data, dict):
        raise BadRequestError("body must be a JSON object")
    return data


def bearer(request: web.Request) -> str:
    """The token in `Authorization: Bearer …`; `AdminAuthError` if there is none."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AdminAuthError()
    return value.strip()


def _refused(exc: AdminAuthError) -> web.Response:
    return web.json_response(
        {"error": exc.code, "message": exc.message},
        status=exc.status,
        headers={"WWW-Authenticate": 'Bearer realm="kiosk-admin"'},
    )


class AdminApi:
    """The `/v1/admin/` routes over `core` (and the webhook outbox), authenticated by `tokens`."""

    def __init__(
        self, core: ProvisioningCore, tokens: AdminTokens, deliveries: WebhookOutbox
    ) -> None:
        self._core = core
        self._tokens = tokens
        self._deliveries = deliveries

    def add_routes(self, app: web.Application) -> None:
        """Register every admin route; a route that is not GET needs a read-write token."""
        p = PREFIX
        routes: list[tuple[str, str, Handler]] = [
            ("GET", f"{p}/devices", self.list_devices),
            ("GET", f"{p}/devices/{{device_id}}", self.get_device),
            ("POST", f"{p}/devices/{{device_id}}/approve", self.approve),
            ("POST", f"{p}/devices/{{device_id}}/reject", self.reject),
            ("POST", f"{p}/devices/{{device_id}}/revoke", self.revoke),
            ("PUT", f"{p}/devices/{{device_id}}/settings", self.set_device_settings),
            ("PUT", f"{p}/devices/{{device_id}}/group", self.set_device_group),
            ("GET", f"{p}/groups", self.list_groups),
            ("PUT", f"{p}/groups/{{group}}/settings", self.set_group_settings),
            ("GET", f"{p}/calls", self.list_calls),
            ("GET", f"{p}/enrollment-codes", self.list_codes),
            ("POST", f"{p}/enrollment-codes", self.create_code),
            ("GET", f"{p}/actions", self.list_actions),
            ("GET", f"{p}/livekit-events", self.list_livekit_events),
            ("GET", f"{p}/webhook-deliveries", self.list_deliveries),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, self._authorized(handler, write=method != "GET"))
        app.router.add_get(OPENAPI_PATH, self.openapi, allow_head=False)

    def _authorized(self, handler: Handler, *, write: bool) -> Handler:
        async def authorized(request: web.Request) -> web.StreamResponse:
            try:
                token = await self._tokens.authenticate(bearer(request))
            except AdminAuthError as exc:
                return _refused(exc)
            if write and not token.can_write:
                raise ReadOnlyTokenError()
            request[TOKEN_KEY] = token
            return await handler(request)

        return authorized

    async def openapi(self, request: web.Request) -> web.Response:
        """The OpenAPI 3.1 document of these routes (no token needed)."""
        return web.json_response(document())

    async def list_devices(self, request: web.Request) -> web.Response:
        devices = await self._core.list_devices()
        status = request.query.get("status")
        if status:
            if status not in DeviceStatus.__members__.values():
                choices = ", ".join(s.value for s in DeviceStatus)
                raise BadRequestError(f"status must be one of {choices}")
            devices = [d for d in devices if d.status.value == status]
        return web.json_response({"devices": [device_json(self._core, d) for d in devices]})

    async def get_device(self, request: web.Request) -> web.Response:
        device = await self._core.get_device(request.match_info["device_id"])
        return web.json_response(device_json(self._core, device))

    async def approve(self, request: web.Request) -> web.Response:
        device = await self._core.approve_device(
            request.match_info["device_id"], actor=request[TOKEN_KEY].actor
        )
        return web.json_response(device_json(self._core, device))

    async def reject(self, request: web.Request) -> web.Response:
        device = await self._core.reject_device(
            request.match_info["device_id"], actor=request[TOKEN_KEY].actor
        )
        return web.json_response(device_json(self._core, device))

    async def revoke(self, request: web.Request) -> web.Response:
        device = await self._core.revoke_device(
            request.match_info["device_id"], actor=request[TOKEN_KEY].actor
        )
        return web.json_response(device_json(self._core, device))

    async def set_device_settings(self, request: web.Request) -> web.Response:
        settings = await json_body(request)
        device = await self._core.set_device_settings(
            request.match_info["device_id"], settings, actor=request[TOKEN_KEY].actor
        )
        return web.json_response(device_json(self._core, device))

    async def set_device_group(self, request: web.Request) -> web.Response:
        data = await json_body(request)
        if "group" not in data:
            raise BadRequestError("missing field: group")
        group = data["group"]
        if group is not None and not isinstance(group, str):
            raise BadRequestError("field group must be a string or null")
        device = await self._core.set_device_group(
            request.match_info["device_id"], group, actor=request[TOKEN_KEY].actor
        )
        return web.json_response(device_json(self._core, device))

    async def list_groups(self, request: web.Request) -> web.Response:
        groups = await self._core.list_groups()
        return web.json_response(
            {"groups": [{"name": k, "settings": dict(v)} for k, v in sorted(groups.items())]}
        )

    async def set_group_settings(self, request: web.Request) -> web.Response:
        settings = await json_body(request)
        group = request.match_info["group"]
        await self._core.set_group_settings(group, settings, actor=request[TOKEN_KEY].actor)
        groups = await self._core.list_groups()
        return web.json_response({"name": group, "settings": dict(groups.get(group, {}))})

    async def list_calls(self, request: web.Request) -> web.Response:
        query = request.query
        calls = await self._core.list_calls(
            query.get("device_id") or None,
            end_reason=end_reason(query.get("end_reason")),
            since=parse_time(query["since"], "since") if query.get("since") else None,
            until=parse_time(query["until"], "until") if query.get("until") else None,
        )
        newest = list(reversed(calls))[: limit_of(query)]
        return web.json_response({"calls": [call_json(c) for c in newest]})

    async def list_codes(self, request: web.Request) -> web.Response:
        codes = await self._core.list_enrollment_codes()
        return web.json_response({"enrollment_codes": [code_json(c) for c in codes]})

    async def create_code(self, request: web.Request) -> web.Response:
        data = await json_body(request)
        ttl_s = data.get("ttl_s", 3600)
        label = data.get("label", "")
        requires_approval = data.get("requires_approval", False)
        group = data.get("group")
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int):
            raise BadRequestError("field ttl_s must be an integer")
        if not isinstance(label, str):
            raise BadRequestError("field label must be a string")
        if not isinstance(requires_approval, bool):
            raise BadRequestError("field requires_approval must be true or false")
        if group is not None and not isinstance(group, str):
            raise BadRequestError("field group must be a string or null")
        code = await self._core.create_enrollment_code(
            ttl_s,
            label,
            requires_approval=requires_approval,
            group=group,
            actor=request[TOKEN_KEY].actor,
        )
        return web.json_response(
            {
                "code": code,
                "label": label,
                "ttl_s": ttl_s,
                "requires_approval": requires_approval,
                "group": group,
            },
            status=201,
            headers={"Cache-Control": "no-store"},
        )

    async def list_actions(self, request: web.Request) -> web.Response:
        actions = await self._core.list_admin_actions(limit_of(request.query))
        return web.json_response({"actions": [action_json(a) for a in actions]})

    async def list_livekit_events(self, request: web.Request) -> web.Response:
        events = await self._core.list_livekit_events(request.query.get("room") or None)
        newest = list(reversed(events))[: limit_of(request.query)]
        return web.json_response(
            {
                "events": [
                    {
                        "event_id": e.event_id,
                        "event": e.event,
                        "room": e.room,
                        "created_at": iso(e.created_at),
                        "received_at": iso(e.received_at),
                    }
                    for e in newest
                ]
            }
        )

    async def list_deliveries(self, request: web.Request) -> web.Response:
        deliveries = await self._deliveries.list_deliveries(
            limit=limit_of(request.query),
            state=delivery_state(request.query.get("state")),
            device_id=request.query.get("device_id") or None,
        )
        return web.json_response({"deliveries": [delivery_json(d) for d in deliveries]})
