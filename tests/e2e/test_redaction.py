"""No token in any log: every kind of LiveKit refusal forced on the real stack, every log read.

The device runs against the real backend; a transport between them hands it a bad token
(expired, wrong secret, unknown key, not yet valid, no join grant, another room) in place of
the one the backend minted. The device's own handler (stderr, as `appliance run` sets it up),
every record in the process (device, backend, agent, LiveKit SDK at debug), whatever the
SDK wrote to the process's stdout/stderr, and the LiveKit server's log are then searched.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import jwt
import pytest
from livekit import api

from appliance.settings import LoggingSettings
from appliance.state import EndReason, State
from appliance.status.journal import setup_logging
from appliance.status.redact import JWT_MASK
from demo.stack import LocalStack
from tests.e2e.conftest import run_device

pytestmark = pytest.mark.e2e

Grant = dict[str, Any]
WINDOW = 40  # no run of this many characters of a token may show anywhere
_RUN = re.compile(rf"[A-Za-z0-9_-]{{{WINDOW},}}")


class SwapToken(httpx.AsyncBaseTransport):
    """Real HTTP to the backend, but each call grant's token is replaced by `make(grant)`."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.make: Callable[[Grant], str] | None = None
        self.real_tokens: list[str] = []
        self.bad_tokens: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if not (request.method == "POST" and request.url.path == "/v1/calls"):
            return response
        body = await response.aread()
        await response.aclose()
        assert response.is_success, body
        assert self.make is not None
        grant = json.loads(body)
        self.real_tokens.append(grant["token"])
        grant["token"] = self.make(grant)
        self.bad_tokens.append(grant["token"])
        return httpx.Response(response.status_code, json=grant, request=request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _refusals(stack: LocalStack) -> dict[str, tuple[Callable[[Grant], str], EndReason]]:
    key, secret = stack.livekit.api_key, stack.livekit.api_secret

    def token(
        grant: Grant,
        *,
        api_key: str = key,
        api_secret: str = secret,
        ttl_s: float = 600,
        room: str | None = None,
        room_join: bool = True,
    ) -> str:
        return (
            api.AccessToken(api_key, api_secret)
            .with_identity(grant["identity"])
            .with_ttl(datetime.timedelta(seconds=ttl_s))
            .with_grants(api.VideoGrants(room_join=room_join, room=room or grant["room"]))
            .to_jwt()
        )

    def not_yet_valid(grant: Grant) -> str:
        now = int(time.time())
        claims = {
            "sub": grant["identity"],
            "iss": key,
            "nbf": now + 3600,
            "exp": now + 7200,
            "video": {"roomJoin": True, "room": grant["room"]},
        }
        return jwt.encode(claims, secret, algorithm="HS256")

    # Refused, a fresh token fetched (swapped again), refused again: token_refused.
    refused = EndReason.TOKEN_REFUSED
    return {
        "expired": (lambda g: token(g, ttl_s=-600), refused),
        "wrong_secret": (lambda g: token(g, api_secret=secrets.token_urlsafe(36)), refused),
        "unknown_key": (lambda g: token(g, api_key="API" + secrets.token_hex(6)), refused),
        "not_yet_valid": (not_yet_valid, refused),
        "no_join_grant": (lambda g: token(g, room_join=False), refused),
        # The room comes from the token, so LiveKit lets the device into the other room;
        # no agent is dispatched there and the device gives up waiting for one.
        "another_room": (
            lambda g: token(g, room="call-elsewhere-" + secrets.token_hex(4)),
            EndReason.AGENT_TIMEOUT,
        ),
    }


@contextmanager
def daemon_logging(device_id: str) -> Iterator[None]:
    """The daemon's own logging (stderr, as `appliance run` sets it up), first in line;
    pytest's capture handlers stay behind it and see what it lets through."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    setup_logging(LoggingSettings(level="debug", journal="off"), device_id=device_id)
    for handler in saved_handlers:
        root.addHandler(handler)
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)


def _leaks(text: str, tokens: list[str]) -> list[str]:
    """The runs of `text` that share 40 characters with a token, or contain a whole one."""
    windows = {
        segment[i : i + WINDOW]
        for token in tokens
        for segment in token.split(".")
        for i in range(len(segment) - WINDOW + 1)
    }
    found = [token[:12] + "…" for token in tokens if token in text]
    for run in _RUN.findall(text):
        if any(run[i : i + WINDOW] in windows for i in range(len(run) - WINDOW + 1)):
            found.append(run[:60])
    return found


async def test_no_token_in_any_log_when_livekit_refuses_the_call(
    stack: LocalStack,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LIVEKIT_RTC_DEBUG", "1")  # the SDK's debug lines too
    caplog.set_level(logging.DEBUG)
    refusals = _refusals(stack)
    # Fetch-on-press: every token the device joins with comes through the swap.
    files = stack.write_device(
        "kiosk-redact", None, hold_grant=False, agent_join_timeout_s=3, cooldown_s=0
    )
    settings = await stack.enroll(files)
    swap = SwapToken()
    outcomes: dict[str, EndReason | None] = {}
    with daemon_logging("d-redaction-test"):
        async with run_device(settings, transport=swap) as device:
            await device.watcher.wait_for(State.READY, 15)
            for name, (make, _expected) in refusals.items():
                swap.make = make
                calls = len(device.timelines)
                device.daemon.press()
                async with asyncio.timeout(30):
                    while len(device.timelines) == calls or device.daemon.supervisor.state not in (
                        State.READY,
                        State.TOKEN_REJECTED,
                    ):
                        await asyncio.sleep(0.1)
                outcomes[name] = device.timelines[-1].end_reason
    assert outcomes == {name: expected for name, (_make, expected) in refusals.items()}
    # Each refusal cost two tokens (the fresh one was refused too); the other room one.
    assert len(swap.bad_tokens) == 2 * len(refusals) - 1

    assert stack.livekit.log_path is not None
    server_log = stack.livekit.log_path.read_text(errors="replace")
    out, err = capfd.readouterr()
    logs = {"server log": server_log, "records": caplog.text, "stdout": out, "stderr": err}
    tokens = swap.bad_tokens + swap.real_tokens
    for where, text in logs.items():
        assert _leaks(text, tokens) == [], f"a token in the {where}"
        assert stack.livekit.api_secret not in text, f"the API secret in the {where}"

    # The refusals did quote the tokens, and were masked on the way: by the SDK's logger,
    # in the error our supervisor logged, and in the server's log.
    assert f"invalid token: {JWT_MASK}" in caplog.text
    assert any(r.name == "livekit" and JWT_MASK in r.getMessage() for r in caplog.records), (
        "the LiveKit SDK's own logger"
    )
    assert any(
        r.name == "appliance.call.run" and JWT_MASK in r.getMessage() for r in caplog.records
    ), "the call's 'LiveKit refused the token'"
    assert f"invalid token: {JWT_MASK}" in err, "the daemon's stderr handler"
    assert f"invalid token: {JWT_MASK}" in server_log
