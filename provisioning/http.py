"""The device-facing HTTP API of docs/api.md, as a thin aiohttp adapter over the core."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from aiohttp import web

from provisioning.admin import AdminStores, add_admin_routes
from provisioning.backend import open_backend
from provisioning.config import Config
from provisioning.core import Clock, ProvisioningCore
from provisioning.diagnostics import DIAGNOSTIC_PATH, Diagnostics
from provisioning.errors import (
    BadRequestError,
    ProvisioningError,
    RateLimitedError,
    RequestTimeoutError,
    StorageUnavailableError,
)
from provisioning.http_server import GuardedSite
from provisioning.livekit_events import WEBHOOK_PATH
from provisioning.logs import printable
from provisioning.models import CallGrant, Device, DeviceReport
from provisioning.operators import Operators, add_operator_routes
from provisioning.providers import UpstreamUnavailableError
from provisioning.ringing import JOIN_PATH
from provisioning.rooms import RoomService
from provisioning.signing import HEADER_DEVICE_ID, SignedRequest
from provisioning.sweeper import Sweeper
from provisioning.token_response import token_response

logger = logging.getLogger(__name__)

# Device requests are a few hundred bytes; these bound the work a body can cause.
MAX_BODY_BYTES = 16 * 1024
MAX_JSON_DEPTH = 8
MAX_NUMBER_CHARS = 20
STORAGE_RETRY_AFTER_S = 2
LINGERING_S = 1.0
SHUTDOWN_TIMEOUT_S = 5.0
CORE_KEY = web.AppKey("core", ProvisioningCore)
BODY_TIMEOUT_KEY = web.AppKey("body_timeout_s", float)

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def iso_utc(epoch_s: float) -> str:
    """`2026-11-22T20:10:00Z` for an epoch time (whole seconds)."""
    return datetime.fromtimestamp(int(epoch_s), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProvisioningError as exc:
        context = {
            "error_code": exc.code,
            "device_id": printable(request.headers.get(HEADER_DEVICE_ID, "-"), 40),
            "path": printable(request.rel_url.raw_path, 100),
        }
        headers = None
        if isinstance(exc, RateLimitedError):
            headers = {"Retry-After": str(exc.retry_after_s)}
        elif isinstance(exc, StorageUnavailableError):
            headers = {"Retry-After": str(STORAGE_RETRY_AFTER_S)}
        elif isinstance(exc, UpstreamUnavailableError):
            headers = {"Retry-After": str(exc.retry_after_s)}
        if exc.status >= 500:
            logger.warning("request failed: %s", exc.message, extra=context)
        else:
            logger.info("request refused", extra=context)
        response = _error(exc.status, exc.code, exc.message, headers)
        if isinstance(exc, RequestTimeoutError):
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        allow = exc.headers.get("Allow")
        return _error(exc.status, code, exc.reason, {"Allow": allow} if allow else None)
    except Exception:
        logger.exception("request failed", extra={"path": printable(request.rel_url.raw_path)})
        return _error(500, "internal_error", "internal error")


def _number(text: str) -> int | float:
    if len(text) > MAX_NUMBER_CHARS:
        raise BadRequestError(f"numbers must be at most {MAX_NUMBER_CHARS} characters")
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _no_constant(name: str) -> Any:
    raise BadRequestError(f"{name} is not JSON")


def json_object(body: bytes) -> dict[str, Any]:
    """Parse a request body as a JSON object, refusing deep nesting and long numbers first."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestError("body must be UTF-8 JSON") from exc
    depth = 0
    for bracket in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise BadRequestError(f"JSON must be nested at most {MAX_JSON_DEPTH} deep")
    try:
        data = json.loads(text, parse_int=_number, parse_float=_number, parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BadRequestError("body must be a JSON object") from exc
    if not isinstance(data, dict):
        raise BadRequestError("body must be a JSON object")
    return data


def _str_field(data: dict[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if value is None:
        raise BadRequestError(f"missing field: {key}")
    if not isinstance(value, str):
        raise BadRequestError(f"field {key} must be a string")
    return value


def _optional_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequestError(f"field {key} must be a string")
    return value


def _int_field(data: dict[str, Any], key: str) -> int:
    if key not in data:
        raise BadRequestError(f"missing field: {key}")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequestError(f"field {key} must be an integer")
    return value


async def _body(request: web.Request) -> bytes:
    if request.content.is_eof():  # the usual case: it came with the headers, no timer needed
        return await request.read()
    try:
        async with asyncio.timeout(request.app[BODY_TIMEOUT_KEY]):
            return await request.read()
    except TimeoutError as exc:
        raise RequestTimeoutError("the request body did not arrive in time") from exc


async def _signed(request: web.Request) -> SignedRequest:
    body = await _body(request)
    return SignedRequest.from_headers(
        request.method, request.rel_url.raw_path, body, request.headers
    )


async def _authenticate(request: web.Request, signed: SignedRequest) -> Device:
    return await request.app[CORE_KEY].authenticate(signed)


async def _enroll(request: web.Request) -> web.Response:
    # The body is checked before the signature: a malformed one costs no crypto or database.
    body = await _body(request)
    data = json_object(body)
    signed = SignedRequest.from_headers(
        request.method, request.rel_url.raw_path, body, request.headers
    )
    device = await request.app[CORE_KEY].enroll(
        code=_str_field(data, "code"),
        public_key=_str_field(data, "public_key"),
        name=_str_field(data, "name", ""),
        request=signed,
    )
    return web.json_response(
        {"device_id": device.device_id, "identity": device.identity, "status": device.status.value},
        status=201,
    )


async def _device(request: web.Request) -> web.Response:
    # The heartbeat of devices that do not report their status (`POST /v1/checkin` does).
    signed = await _signed(request)
    return _device_response(request, await request.app[CORE_KEY].check_in(signed, DeviceReport()))


async def _check_in(request: web.Request) -> web.Response:
    signed = await _signed(request)
    data = json_object(signed.body or b"{}")
    report = DeviceReport(**{key: _report_field(data, key) for key in _REPORT_FIELDS})
    return _device_response(request, await request.app[CORE_KEY].check_in(signed, report))


_REPORT_FIELDS = ("firmware", "board", "state", "last_error")
MAX_REPORT_CHARS = 64


def _report_field(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_REPORT_CHARS or not value.isprintable():
        raise BadRequestError(
            f"field {key} must be printable text of at most {MAX_REPORT_CHARS} characters"
        )
    return value


def _device_response(request: web.Request, device: Device) -> web.Response:
    core = request.app[CORE_KEY]
    return web.json_response(
        {
            "device_id": device.device_id,
            "name": device.name,
            "status": device.status.value,
            "agent_name": core.agent_of(device),
            "settings": core.device_settings_of(device),
            "call_provider": core.call_provider_of(device),
        }
    )


def _grant_response(grant: CallGrant, status: int) -> web.Response:
    more: dict[str, Any] = {"provider": grant.provider}
    if grant.ring is not None:
        more["ring"] = dict(grant.ring)  # the call rings people first (ringing.py)
    return token_response(grant, call_id=grant.call_id, more=more, status=status)


async def _operator_join(request: web.Request) -> web.Response:
    """The operator page trades a ringing call's join-link ticket for an operator token."""
    data = json_object(await _body(request))
    grant = await request.app[CORE_KEY].join_ringing_call(data.get("ticket"))
    return token_response(grant, call_id=grant.call_id)


async def _start_call(request: web.Request) -> web.Response:
    signed = await _signed(request)
    data = json_object(signed.body)
    # Only the trigger is read: room, identity and grants are the backend's alone.
    grant = await request.app[CORE_KEY].start_call(signed, _str_field(data, "trigger"))
    return _grant_response(grant, 201)


async def _hold_grant(request: web.Request) -> web.Response:
    signed = await _signed(request)
    json_object(signed.body or b"{}")
    return _grant_response(await request.app[CORE_KEY].hold_grant(signed), 201)


async def _start_held_call(request: web.Request) -> web.Response:
    signed = await _signed(request)
    data = json_object(signed.body)
    device = await _authenticate(request, signed)
    call = await request.app[CORE_KEY].start_held_call(
        device, request.match_info["call_id"], _str_field(data, "trigger")
    )
    return web.json_response(
        {"call_id": call.call_id, "room": call.room, "started_at": iso_utc(call.created_at)}
    )


async def _rejoin_call(request: web.Request) -> web.Response:
    signed = await _signed(request)
    data = json_object(signed.body)
    device = await _authenticate(request, signed)
    grant = await request.app[CORE_KEY].rejoin_call(
        device, request.match_info["call_id"], _str_field(data, "trigger")
    )
    return _grant_response(grant, 201)


async def _end_call(request: web.Request) -> web.Response:
    signed = await _signed(request)
    data = json_object(signed.body)
    # A revoked device may still report how its own calls ended.
    device = await request.app[CORE_KEY].authenticate(signed, allow_revoked=True)
    call = await request.app[CORE_KEY].end_call(
        device,
        request.match_info["call_id"],
        reason=_str_field(data, "reason"),
        duration_ms=_int_field(data, "duration_ms"),
        detail=_optional_str(data, "detail"),
    )
    assert call.ended_at is not None
    return web.json_response({"call_id": call.call_id, "ended_at": iso_utc(call.ended_at)})


async def _call_progress(request: web.Request) -> web.Response:
    signed = await _signed(request)
    data = json_object(signed.body)
    device = await _authenticate(request, signed)
    call = await request.app[CORE_KEY].call_progress(
        device, request.match_info["call_id"], _str_field(data, "event")
    )
    return web.json_response({"call_id": call.call_id, "outcome": call.outcome})


DIAGNOSTICS_KEY = web.AppKey("diagnostics", Diagnostics)


async def _diagnostic_grant(request: web.Request) -> web.Response:
    # A throwaway room for `appliance doctor` to join and leave (diagnostics.py).
    signed = await _signed(request)
    json_object(signed.body or b"{}")
    return token_response(await request.app[DIAGNOSTICS_KEY].grant(signed))


async def _livekit_webhook(request: web.Request) -> web.Response:
    # LiveKit's signed event; the bare JWT in Authorization is never logged.
    body = await _body(request)
    outcome = await request.app[CORE_KEY].receive_livekit_webhook(
        body, request.headers.get("Authorization")
    )
    return web.json_response({"outcome": outcome.value})


def create_app(
    core: ProvisioningCore,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    body_timeout_s: float = 10.0,
    admin: AdminStores | None = None,
    diagnostics: Diagnostics | None = None,
) -> web.Application:
    """The aiohttp application serving docs/api.md over `core`; with `admin`, the admin API
    and the console too (docs/admin.md); with `diagnostics`, the doctor's grants."""
    app = web.Application(middlewares=[_error_middleware], client_max_size=max_body_bytes)
    app[CORE_KEY] = core
    app[BODY_TIMEOUT_KEY] = body_timeout_s
    app.router.add_post("/v1/enroll", _enroll)
    app.router.add_get("/v1/device", _device, allow_head=False)
    app.router.add_post("/v1/checkin", _check_in)
    app.router.add_post("/v1/calls", _start_call)
    app.router.add_post("/v1/calls/{call_id}/end", _end_call)
    app.router.add_post("/v1/calls/{call_id}/progress", _call_progress)
    app.router.add_post("/v1/grants", _hold_grant)
    if diagnostics is not None:
        app[DIAGNOSTICS_KEY] = diagnostics
        app.router.add_post(DIAGNOSTIC_PATH, _diagnostic_grant)
    app.router.add_post("/v1/calls/{call_id}/start", _start_held_call)
    app.router.add_post("/v1/calls/{call_id}/rejoin", _rejoin_call)
    app.router.add_post(WEBHOOK_PATH, _livekit_webhook)
    app.router.add_post(JOIN_PATH, _operator_join)
    if admin is not None:
        add_admin_routes(app, core, admin, operators=Operators(core, core.livekit))
    return app


class BackendServer:
    """Runs the HTTP API over `open_backend(config)`: `async with BackendServer(cfg) as s`.

    `host` and `port` override the config; port 0 picks a free port, see `port`/`url`.
    `rooms` replaces the LiveKit room service client (tests).
    """

    def __init__(
        self,
        config: Config,
        *,
        host: str | None = None,
        port: int | None = None,
        clock: Clock = time.time,
        rooms: RoomService | None = None,
    ) -> None:
        self.config = config
        self._rooms = rooms
        self._host = config.server.host if host is None else host
        self._port = config.server.port if port is None else port
        self._clock = clock
        self._stack = AsyncExitStack()
        self._core: ProvisioningCore | None = None
        self._sweeper: Sweeper | None = None
        self._bound_port: int | None = None

    @property
    def core(self) -> ProvisioningCore:
        """The core behind the API (for administration from the same process)."""
        if self._core is None:
            raise RuntimeError("server is not started")
        return self._core

    @property
    def sweeper(self) -> Sweeper:
        """The call sweeper (tests run a pass with `sweep()`)."""
        if self._sweeper is None:
            raise RuntimeError("server is not started")
        return self._sweeper

    @property
    def port(self) -> int:
        """The port actually bound."""
        if self._bound_port is None:
            raise RuntimeError("server is not started")
        return self._bound_port

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. `http://127.0.0.1:43121`."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Open the backend and start listening."""
        server = self.config.server
        try:
            backend = await self._stack.enter_async_context(
                open_backend(self.config, clock=self._clock, rooms=self._rooms, sweep=True)
            )
            self._core = backend.core
            self._sweeper = backend.sweeper
            admin = AdminStores.over(backend.storage.db, clock=self._clock)
            app = create_app(
                backend.core,
                body_timeout_s=server.body_timeout_s,
                admin=admin,
                diagnostics=Diagnostics(backend.core, self.config.livekit, clock=self._clock),
            )
            add_operator_routes(app, Operators(backend.core, self.config.livekit), admin.tokens)
            # No access log: one line per request is a flood under load; refusals are logged.
            runner = web.AppRunner(
                app,
                access_log=None,
                keepalive_timeout=server.header_timeout_s,
                # A body left unread after a refusal is drained for at most this long.
                lingering_time=LINGERING_S,
                # Stopping waits this long for open requests (aiohttp's default is 60 s).
                shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            )
            await runner.setup()
            self._stack.push_async_callback(runner.cleanup)
            site = GuardedSite(
                runner, self._host, self._port, max_connections=server.max_connections
            )
            await site.start()
            self._bound_port = int(runner.addresses[0][1])
        except BaseException:
            await self.aclose()
            raise
        logger.info("provisioning API listening", extra={"url": self.url})

    async def aclose(self) -> None:
        """Stop listening and close the database; safe to call twice."""
        stack, self._stack = self._stack, AsyncExitStack()
        await stack.aclose()
        self._core = None
        self._sweeper = None
        self._bound_port = None

    async def __aenter__(self) -> BackendServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
