"""The OpenAPI 3.1 document of the admin API, written by hand; a test holds it to the routes."""

from __future__ import annotations

import copy
from typing import Any

OPENAPI_PATH = "/v1/admin/openapi.json"

_TIME = {"type": ["string", "null"], "format": "date-time"}
_TEXT_OR_NULL = {"type": ["string", "null"]}
_OBJECT = {"type": "object"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _list_of(key: str, item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": [key],
        "properties": {key: {"type": "array", "items": _ref(item)}},
    }


_ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "403": {"$ref": "#/components/responses/Forbidden"},
}
_DEVICE_ID = {"name": "device_id", "in": "path", "required": True, "schema": {"type": "string"}}
_LIMIT = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 200},
}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    status: str = "200",
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One operation: its 2xx answer, the usual refusals, and `extra` ones (404, 409)."""
    responses: dict[str, Any] = {status: ok, **_ERRORS}
    for code in extra:
        responses[code] = {"$ref": f"#/components/responses/E{code}"}
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return operation


def _device_action(verb: str, what: str) -> dict[str, Any]:
    return {
        "post": _op(
            f"{verb} a device ({what}); needs a read-write token",
            _json(_ref("Device"), "the device as it is now"),
            parameters=[_DEVICE_ID],
            extra=("404", "409"),
        )
    }


_PATHS: dict[str, Any] = {
    "/v1/admin/openapi.json": {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": {"200": _json(_OBJECT, "the OpenAPI document")},
        }
    },
    "/v1/admin/devices": {
        "get": _op(
            "Every device, oldest first",
            _json(_list_of("devices", "Device"), "the devices"),
            parameters=[
                {"name": "status", "in": "query", "schema": _ref("DeviceStatus")},
            ],
        )
    },
    "/v1/admin/devices/{device_id}": {
        "get": _op(
            "One device",
            _json(_ref("Device"), "the device"),
            parameters=[_DEVICE_ID],
            extra=("404",),
        )
    },
    "/v1/admin/devices/{device_id}/approve": _device_action("Approve", "pending only"),
    "/v1/admin/devices/{device_id}/reject": _device_action("Reject", "pending only"),
    "/v1/admin/devices/{device_id}/revoke": _device_action("Revoke", "ends its live call"),
    "/v1/admin/devices/{device_id}/settings": {
        "put": _op(
            "Replace a device's own settings; it applies them at its next check-in",
            _json(_ref("Device"), "the device"),
            parameters=[_DEVICE_ID],
            body=_ref("Settings"),
            extra=("404",),
        )
    },
    "/v1/admin/devices/{device_id}/group": {
        "put": _op(
            "Put a device in a group, or in none (null)",
            _json(_ref("Device"), "the device"),
            parameters=[_DEVICE_ID],
            body={
                "type": "object",
                "required": ["group"],
                "properties": {"group": _TEXT_OR_NULL},
            },
            extra=("404",),
        )
    },
    "/v1/admin/groups": {
        "get": _op("Every group and its settings", _json(_list_of("groups", "Group"), "groups"))
    },
    "/v1/admin/groups/{group}/settings": {
        "put": _op(
            "Create or replace a group's settings",
            _json(_ref("Group"), "the group"),
            parameters=[
                {"name": "group", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            body=_ref("Settings"),
        )
    },
    "/v1/admin/calls": {
        "get": _op(
            "Calls, newest first, filtered",
            _json(_list_of("calls", "Call"), "the calls"),
            parameters=[
                {"name": "device_id", "in": "query", "schema": {"type": "string"}},
                {"name": "end_reason", "in": "query", "schema": _ref("EndReason")},
                {
                    "name": "since",
                    "in": "query",
                    "description": "started at or after (ISO 8601 date or date-time, UTC)",
                    "schema": {"type": "string"},
                },
                {
                    "name": "until",
                    "in": "query",
                    "description": "started before (ISO 8601 date or date-time, UTC)",
                    "schema": {"type": "string"},
                },
                _LIMIT,
            ],
        )
    },
    "/v1/admin/enrollment-codes": {
        "get": _op(
            "Enrollment codes as stored (never the code itself), newest first",
            _json(_list_of("enrollment_codes", "EnrollmentCode"), "the codes"),
        ),
        "post": _op(
            "Create an enrollment code; the code is in this answer only",
            _json(_ref("NewEnrollmentCode"), "the code, shown once"),
            status="201",
            body={
                "type": "object",
                "properties": {
                    "ttl_s": {"type": "integer", "minimum": 1, "default": 3600},
                    "label": {"type": "string", "maxLength": 100, "default": ""},
                    "requires_approval": {"type": "boolean", "default": False},
                    "group": _TEXT_OR_NULL,
                },
            },
        ),
    },
    "/v1/admin/actions": {
        "get": _op(
            "Admin actions, newest first: who did what, and when",
            _json(_list_of("actions", "AdminAction"), "the actions"),
            parameters=[_LIMIT],
        )
    },
    "/v1/admin/livekit-events": {
        "get": _op(
            "LiveKit webhook events received, newest first",
            _json(_list_of("events", "LiveKitEvent"), "the events"),
            parameters=[{"name": "room", "in": "query", "schema": {"type": "string"}}, _LIMIT],
        )
    },
    "/v1/admin/webhook-deliveries": {
        "get": _op(
            "Webhook deliveries of fleet events, newest first: last attempts and failures",
            _json(_list_of("deliveries", "Delivery"), "the deliveries"),
            parameters=[
                {
                    "name": "state",
                    "in": "query",
                    "schema": {"enum": ["pending", "delivered", "failed"]},
                },
                {"name": "device_id", "in": "query", "schema": {"type": "string"}},
                _LIMIT,
            ],
        )
    },
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    },
    "DeviceStatus": {"enum": ["pending", "approved", "rejected", "revoked"]},
    "EndReason": {"type": "string", "description": "one of the shared end reasons"},
    "Settings": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "agent_name": {"type": "string"},
            "call": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "max_duration_s": {"type": "number"},
                    "idle_timeout_s": {"type": "number"},
                    "cooldown_s": {"type": "number"},
                },
            },
            "wake_word": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"enabled": {"type": "boolean"}, "model": {"type": "string"}},
            },
            "speaker_volume": {"type": "number", "minimum": 0, "maximum": 1},
        },
    },
    "Device": {
        "type": "object",
        "required": ["device_id", "name", "status", "created_at", "offline"],
        "properties": {
            "device_id": {"type": "string"},
            "name": {"type": "string"},
            "status": _ref("DeviceStatus"),
            "created_at": {"type": "string", "format": "date-time"},
            "group": _TEXT_OR_NULL,
            "settings": _ref("Settings"),
            "effective_settings": _ref("Settings"),
            "last_seen": _TIME,
            "offline": {"type": "boolean"},
            "firmware": _TEXT_OR_NULL,
            "board": _TEXT_OR_NULL,
            "state": _TEXT_OR_NULL,
            "last_error": _TEXT_OR_NULL,
            "clock_offset_s": {"type": ["number", "null"]},
            "flagged_at": _TIME,
            "flag_reason": _TEXT_OR_NULL,
        },
    },
    "Group": {
        "type": "object",
        "required": ["name", "settings"],
        "properties": {"name": {"type": "string"}, "settings": _ref("Settings")},
    },
    "Call": {
        "type": "object",
        "required": ["call_id", "device_id", "room", "trigger", "started_at"],
        "properties": {
            "call_id": {"type": "string"},
            "device_id": {"type": "string"},
            "room": {"type": "string"},
            "trigger": {"type": "string"},
            "started_at": {"type": "string", "format": "date-time"},
            "ended_at": _TIME,
            "end_reason": _TEXT_OR_NULL,
            "duration_ms": {"type": ["integer", "null"]},
            "end_detail": _TEXT_OR_NULL,
            "upstream_call_id": _TEXT_OR_NULL,
            "outcome": _TEXT_OR_NULL,
        },
    },
    "EnrollmentCode": {
        "type": "object",
        "properties": {
            "code_id": {"type": "string", "description": "first 12 hex digits of its hash"},
            "label": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "expires_at": {"type": "string", "format": "date-time"},
            "used_at": _TIME,
            "device_id": _TEXT_OR_NULL,
            "requires_approval": {"type": "boolean"},
            "group": _TEXT_OR_NULL,
        },
    },
    "NewEnrollmentCode": {
        "type": "object",
        "required": ["code"],
        "properties": {
            "code": {"type": "string", "pattern": "^[2-9A-HJKMNP-Z]{4}(-[2-9A-HJKMNP-Z]{4}){3}$"},
            "label": {"type": "string"},
            "ttl_s": {"type": "integer"},
            "requires_approval": {"type": "boolean"},
            "group": _TEXT_OR_NULL,
        },
    },
    "AdminAction": {
        "type": "object",
        "properties": {
            "at": {"type": "string", "format": "date-time"},
            "actor": {"type": "string", "description": "`cli` or `token:<name>`"},
            "action": {"type": "string"},
            "target": {"type": "string"},
            "detail": _OBJECT,
        },
    },
    "Delivery": {
        "type": "object",
        "properties": {
            "event_id": {"type": "string"},
            "type": {"type": "string", "description": "call.started, device.approved, ..."},
            "device_id": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "state": {"enum": ["pending", "delivered", "failed"]},
            "attempts": {"type": "integer"},
            "next_attempt_at": _TIME,
            "last_attempt_at": _TIME,
            "last_status": {"type": ["integer", "null"]},
            "last_error": _TEXT_OR_NULL,
            "finished_at": _TIME,
        },
    },
    "LiveKitEvent": {
        "type": "object",
        "properties": {
            "event_id": {"type": "string"},
            "event": {"type": "string"},
            "room": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "received_at": {"type": "string", "format": "date-time"},
        },
    },
}


def _error_response(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def document() -> dict[str, Any]:
    """The whole document (a fresh copy each time)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Kiosk provisioning admin API",
            "version": "1",
            "description": (
                "Fleet administration. Every operation but this document needs "
                "`Authorization: Bearer <admin token>`; a `read` token may only GET. "
                "Tokens are made with `provisioning admin-token create`."
            ),
        },
        "security": [{"adminToken": []}],
        "paths": copy.deepcopy(_PATHS),
        "components": {
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer", "description": "kadm_…"}
            },
            "schemas": copy.deepcopy(_SCHEMAS),
            "responses": {
                "BadRequest": _error_response("malformed request (bad_request)"),
                "Unauthorized": _error_response("no valid admin token (admin_token_required)"),
                "Forbidden": _error_response("a read token asked for a change (read_only_token)"),
                "E404": _error_response("no such device (unknown_device)"),
                "E409": _error_response("not allowed in the device's status (invalid_state)"),
            },
        },
    }
