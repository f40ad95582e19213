"""The device-facing HTTP API of docs/api.md, as a thin aiohttp adapter over the core."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from aiohttp import web

from provisioning.config import Config
from provisioning.core import Clock, ProvisioningCore
from provisioning.errors import BadRequestError, ProvisioningError, RateLimitedError
from provisioning.models import Device
from provisioning.signing import HEADER_DEVICE_ID, SignedRequest
from provisioning.storage import Storage

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
CORE_KEY = web.AppKey("core", ProvisioningCore)

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
        logger.info(
            "request refused",
            extra={
                "error_code": exc.code,
                "device_id": request.headers.get(HEADER_DEVICE_ID),
                "path": request.rel_url.raw_path,
            },
        )
        headers = None
        if isinstance(exc, RateLimitedError):
            headers = {"Retry-After": str(exc.retry_after_s)}
        return _error(exc.status, exc.code, exc.message, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        allow = exc.headers.get("Allow")
        return _error(exc.status, code, exc.reason, {"Allow": allow} if allow else None)
    except Exception:
        logger.exception("request failed", extra={"path": request.rel_url.raw_path})
        return _error(500, "internal_error", "internal error")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
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


def _int_field(data: dict[str, Any], key: str) -> int:
    if key not in data:
        raise BadRequestError(f"missing field: {key}")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequestError(f"field {key} must be an integer")
    return value


async def _signed(request: web.Request) -> SignedRequest:
    body = await request.read()
    return SignedRequest.from_headers(
        request.method, request.rel_url.raw_path, body, request.headers
    )


def _authenticate(request: web.Request, signed: SignedRequest) -> Device:
    return request.app[CORE_KEY].authenticate(signed)


async def _enroll(request: web.Request) -> web.Response:
    signed = await _signed(request)
    data = _json_object(signed.body)
    device = request.app[CORE_KEY].enroll(
        code=_str_field(data, "code"),
        public_key=_str_field(data, "public_key"),
        name=_str_field(data, "name", ""),
        request=signed,
    )
    return web.json_response(
        {"device_id": device.device_id, "identity": device.identity}, status=201
    )


async def _device(request: web.Request) -> web.Response:
    signed = await _signed(request)
    device = _authenticate(request, signed)
    return web.json_response(
        {
            "device_id": device.device_id,
            "name": device.name,
            "status": device.status.value,
            "agent_name": request.app[CORE_KEY].agent_name,
        }
    )


async def _start_call(request: web.Request) -> web.Response:
    signed = await _signed(request)
    device = _authenticate(request, signed)
    data = _json_object(signed.body)
    # Only the trigger is read: room, identity and grants are the backend's alone.
    grant = request.app[CORE_KEY].start_call(device, _str_field(data, "trigger"))
    return web.json_response(
        {
            "server_url": grant.server_url,
            "token": grant.token,
            "room": grant.room,
            "identity": grant.identity,
            "call_id": grant.call_id,
            "expires_at": iso_utc(grant.expires_at),
        },
        status=201,
    )


async def _end_call(request: web.Request) -> web.Response:
    signed = await _signed(request)
    device = _authenticate(request, signed)
    data = _json_object(signed.body)
    call = request.app[CORE_KEY].end_call(
        device,
        request.match_info["call_id"],
        reason=_str_field(data, "reason"),
        duration_ms=_int_field(data, "duration_ms"),
    )
    assert call.ended_at is not None
    return web.json_response({"call_id": call.call_id, "ended_at": iso_utc(call.ended_at)})


def create_app(core: ProvisioningCore, *, max_body_bytes: int = MAX_BODY_BYTES) -> web.Application:
    """The aiohttp application serving docs/api.md over `core`."""
    app = web.Application(middlewares=[_error_middleware], client_max_size=max_body_bytes)
    app[CORE_KEY] = core
    app.router.add_post("/v1/enroll", _enroll)
    app.router.add_get("/v1/device", _device, allow_head=False)
    app.router.add_post("/v1/calls", _start_call)
    app.router.add_post("/v1/calls/{call_id}/end", _end_call)
    return app


class BackendServer:
    """Runs the HTTP API with its own storage and core: `async with BackendServer(cfg) as s`.

    `host` and `port` override the config; port 0 picks a free port, see `port`/`url`.
    """

    def __init__(
        self,
        config: Config,
        *,
        host: str | None = None,
        port: int | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.config = config
        self._host = config.server.host if host is None else host
        self._port = config.server.port if port is None else port
        self._clock = clock
        self._storage: Storage | None = None
        self._core: ProvisioningCore | None = None
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None

    @property
    def core(self) -> ProvisioningCore:
        """The core behind the API (for administration from the same process)."""
        if self._core is None:
            raise RuntimeError("server is not started")
        return self._core

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
        """Open the database and start listening."""
        self._storage = Storage(self.config.database.path)
        try:
            self._core = ProvisioningCore(self._storage, self.config, clock=self._clock)
            self._runner = web.AppRunner(create_app(self._core))
            await self._runner.setup()
            site = web.TCPSite(self._runner, self._host, self._port)
            await site.start()
            self._bound_port = int(self._runner.addresses[0][1])
        except BaseException:
            await self.aclose()
            raise
        logger.info("provisioning API listening", extra={"url": self.url})

    async def aclose(self) -> None:
        """Stop listening and close the database; safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        storage, self._storage = self._storage, None
        if storage is not None:
            storage.close()
        self._core = None
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
