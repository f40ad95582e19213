"""The HTTP transport under the API: malformed HTTP answered in JSON, slow and surplus clients cut.

aiohttp answers a request it cannot parse itself, in `text/plain`, echoing the bad
bytes and logging a traceback. `GuardedSite` serves the same application with a
request handler whose `handle_error` answers `{error, message}` and logs one short
line, and refuses connections beyond a limit before they can use up descriptors.
Header reading is bounded by aiohttp's keep-alive timer, which since 3.14 also runs
from the moment a connection opens (`keepalive_timeout` = our header timeout).
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

logger = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    408: "request_timeout",
    413: "request_too_large",
    431: "headers_too_large",
    503: "overloaded",
    504: "timeout",
}


def _error_body(status: int) -> tuple[str, str]:
    """(code, message) for a status the transport itself answers."""
    code = _CODES.get(status, "internal_error" if status >= 500 else "bad_request")
    message = "malformed HTTP request" if status == 400 else HTTPStatus(status).phrase.lower()
    return code, message


class _JsonErrorRequestHandler(web.RequestHandler):
    """aiohttp's request handler, but its own refusals are JSON and leave no traceback."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        code, text = _error_body(status)
        if status >= 500:
            logger.error("request failed in the HTTP layer", extra={"status": status})
        else:
            # The parser's own message may quote the client's bytes: it is not logged.
            logger.info(
                "request refused", extra={"error_code": code, "status": status, "path": "-"}
            )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; closing the connection")
        response = web.json_response({"error": code, "message": text}, status=status)
        response.force_close()
        return response


class _Refused(asyncio.Protocol):
    """A connection over the limit: one 503 in JSON, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        code, _ = _error_body(503)
        body = json.dumps({"error": code, "message": "too many connections"}).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(head.encode() + body)
        transport.close()


class GuardedSite(web.BaseSite):
    """A TCP site serving `runner` with JSON transport errors and at most `max_connections`."""

    __slots__ = ("_host", "_max_connections", "_port")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, max_connections: int
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._max_connections = max_connections

    @property
    def name(self) -> str:
        """The URL this site serves."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        """Listen; each accepted connection gets a guarded handler or a 503."""
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        # The server's handler settings (timeouts, limits, access log) as AppRunner set them.
        handler_kwargs: dict[str, Any] = server._kwargs

        def protocol() -> asyncio.Protocol:
            if len(server.connections) >= self._max_connections:
                logger.warning("connection refused: too many connections")
                return _Refused()
            return _JsonErrorRequestHandler(server, loop=loop, **handler_kwargs)

        self._server = await loop.create_server(
            protocol, self._host, self._port, reuse_address=True, backlog=1024
        )
