"""A loopback fake of a hosted platform's API: an aiohttp server on 127.0.0.1, a free port.

It checks what it receives (the auth header, the path, no unexpected body fields), records
each request, mints real LiveKit JWTs (livekit-api) for the room it names, and can be told
to fail the next requests with a status (and Retry-After) or to answer too late.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from aiohttp import web
from livekit.api import AccessToken, VideoGrants

FAKE_LIVEKIT_KEY = "platform-key"
FAKE_LIVEKIT_SECRET = "platform-secret-0123456789abcdef0123456789"


@dataclass
class Failure:
    """The next answer: `status` with `body`, and a Retry-After if given."""

    status: int
    body: Mapping[str, Any] = field(default_factory=dict)
    retry_after: str | None = None


@dataclass
class Received:
    """One request as the fake saw it."""

    path: str
    headers: Mapping[str, str]
    body: Mapping[str, Any]


class FakePlatform:
    """Base of each fake: subclasses give `path`, `auth_header`, `allowed_fields` and `answer`."""

    path: str = "/"
    auth_header: str = "Authorization"
    auth_prefix: str = "Bearer "
    allowed_fields: frozenset[str] = frozenset()
    required_fields: frozenset[str] = frozenset()
    livekit_url: str = "ws://127.0.0.1:7880"
    # Whether the platform's agent (or phone) comes into the room as the token is minted;
    # Click2Call dials only when asked to (`/connect`).
    dispatch_on_mint: bool = True

    def __init__(self, api_key: str, *, livekit_url: str | None = None) -> None:
        self.api_key = api_key
        if livekit_url is not None:
            self.livekit_url = livekit_url
        self.received: list[Received] = []
        self.refused: list[str] = []  # why a request was refused by the fake's own checks
        self.failures: list[Failure] = []
        self.delay_s = 0.0
        # Each room a token was minted for; `on_room` (a test's) is started for each, as the
        # platform dispatches its agent (or dials its phone) into the room it created.
        self.rooms: list[str] = []
        self.on_room: Callable[[str], Coroutine[Any, Any, None]] | None = None
        self._dispatched: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakePlatform:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._dispatched:
            task.cancel()
        await asyncio.gather(*self._dispatched, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    def mint(self, *, identity: str, room: str, ttl_s: int) -> str:
        """A real LiveKit JWT for `room`, as the platform's server would sign it."""
        self.rooms.append(room)
        return (
            AccessToken(FAKE_LIVEKIT_KEY, FAKE_LIVEKIT_SECRET)
            .with_identity(identity)
            .with_ttl(timedelta(seconds=ttl_s))
            .with_grants(VideoGrants(room_join=True, room=room, can_publish=True))
            .to_jwt()
        )

    def add_routes(self, app: web.Application) -> None:
        """More of the platform's API (Click2Call's call control)."""

    def dispatch(self, room: str) -> None:
        """Start the test's `on_room` for `room`: the platform brings its far end in."""
        if self.on_room is not None:
            task = asyncio.get_running_loop().create_task(self.on_room(room))
            self._dispatched.add(task)
            task.add_done_callback(self._dispatched.discard)

    def answer(self, request: web.Request, body: Mapping[str, Any]) -> Mapping[str, Any]:
        raise NotImplementedError

    def check(self, body: Mapping[str, Any]) -> str | None:
        """A reason to refuse the body with 400, or None (subclasses add their own)."""
        return None

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return self._refuse(400, "body is not JSON")
        self.received.append(Received(request.path, dict(request.headers), body))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if request.headers.get(self.auth_header) != self.auth_prefix + self.api_key:
            return self._refuse(401, "Invalid API key")
        if not isinstance(body, dict):
            return self._refuse(400, "body is not an object")
        unexpected = set(body) - self.allowed_fields
        if unexpected:
            return self._refuse(400, f"unexpected fields {sorted(unexpected)}")
        missing = self.required_fields - set(body)
        if missing:
            return self._refuse(400, f"missing fields {sorted(missing)}")
        problem = self.check(body)
        if problem is not None:
            return self._refuse(400, problem)
        if self.failures:
            failure = self.failures.pop(0)
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
            return web.json_response(dict(failure.body), status=failure.status, headers=headers)
        answer = web.json_response(dict(self.answer(request, body)))
        if self.dispatch_on_mint and self.rooms:
            self.dispatch(self.rooms[-1])
        return answer

    def _refuse(self, status: int, detail: str) -> web.Response:
        self.refused.append(detail)
        return web.json_response({"detail": detail}, status=status)


def short_id() -> str:
    return secrets.token_hex(4)


Handler = Callable[[web.Request], Awaitable[web.Response]]
