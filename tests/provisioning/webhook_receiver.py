"""A webhook receiver on 127.0.0.1 written from docs/webhooks.md: it verifies, records, dedupes.

It can be taken down (the port refuses connections) and brought back on the same port,
answer a chosen status, or hold requests for a while to make senders overlap.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

SECRET = "whsec-test-0123456789abcdefghij"


def expected_signature(secret: str, event_id: str, timestamp: str, body: bytes) -> str:
    """docs/webhooks.md: v1, base64(HMAC-SHA256(secret, "{id}.{timestamp}." + body))."""
    mac = hmac.new(secret.encode(), f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


@dataclass
class Received:
    """One request: its id, type, device, parsed body, and the status it was answered."""

    event_id: str
    type: str
    device_id: str
    body: dict[str, Any]
    raw: bytes
    headers: dict[str, str]
    status: int


class WebhookReceiver:
    """`url`, `received` (every request), `accepted` (answered 2xx, first time per id)."""

    def __init__(
        self, clock: Callable[[], float], *, secret: str = SECRET, path: str = "/hooks/fleet"
    ) -> None:
        self._clock = clock
        self._secret = secret
        self.received: list[Received] = []
        self.accepted: list[Received] = []
        self.duplicates: list[Received] = []
        self.refused_signatures = 0
        # Answer this status instead of 200 (with these headers), or by event id.
        self.status = 200
        self.status_headers: dict[str, str] = {}
        self.status_for: dict[str, int] = {}
        # Seconds each request is held before it is answered.
        self.hold_s = 0.0
        self.in_flight: set[str] = set()
        self.overlaps: list[str] = []
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0
        self.path = path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await self.up()

    async def up(self) -> None:
        """Listen (again, on the same port once it has one)."""
        assert self._runner is not None and self._site is None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        self.port = int(self._runner.addresses[0][1])

    async def down(self) -> None:
        """Stop listening: connections are refused."""
        assert self._site is not None
        site, self._site = self._site, None
        await site.stop()

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def verified(self, headers: dict[str, str], raw: bytes) -> bool:
        event_id = headers.get("Webhook-Id", "")
        timestamp = headers.get("Webhook-Timestamp", "")
        if not event_id or not timestamp.isdigit():
            return False
        if abs(self._clock() - int(timestamp)) > 300:
            return False
        want = expected_signature(self._secret, event_id, timestamp, raw)
        return any(hmac.compare_digest(want, s) for s in headers["Webhook-Signature"].split())

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        headers = {k: v for k, v in request.headers.items()}
        if not self.verified(headers, raw):
            self.refused_signatures += 1
            return web.Response(status=401)
        body = json.loads(raw)
        event_id = headers["Webhook-Id"]
        if event_id in self.in_flight:
            self.overlaps.append(event_id)
        self.in_flight.add(event_id)
        try:
            if self.hold_s:
                await asyncio.sleep(self.hold_s)
        finally:
            self.in_flight.discard(event_id)
        status = self.status_for.pop(event_id, self.status)
        item = Received(
            event_id=event_id,
            type=body["type"],
            device_id=body["data"].get("device_id", ""),
            body=body,
            raw=raw,
            headers=headers,
            status=status,
        )
        self.received.append(item)
        if 200 <= status < 300:
            if any(a.event_id == event_id for a in self.accepted):
                self.duplicates.append(item)
            else:
                self.accepted.append(item)
        return web.Response(status=status, headers=self.status_headers if status >= 300 else None)

    def accepted_per_device(self) -> dict[str, list[str]]:
        """Accepted event ids in arrival order, per device."""
        out: dict[str, list[str]] = {}
        for item in self.accepted:
            out.setdefault(item.device_id, []).append(item.event_id)
        return out
