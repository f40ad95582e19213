"""The Click2Call CRM bridge's API, from seeds/003_a96bc7841f5ec315.txt: /click2call, then
the call control: /connect (dial), /status (the answer report), /hangup."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.platforms.fake_base import FakePlatform, short_id


@dataclass
class BridgeCall:
    """One call the bridge made a room for."""

    room: str
    dialed: bool = False
    answered: bool = False
    hung_up: bool = False


class FakeClick2Call(FakePlatform):
    # l. 14, 20: POST BASE/api/c2c/click2call with X-api-key: YOUR_INBOUND_KEY.
    path = "/api/c2c/click2call"
    auth_header = "X-api-key"
    auth_prefix = ""
    # l. 19-20, 28: case_id, customer_number, agent_id, customer_crm_id, did optional;
    # "no agen_number, no trunk_id".
    allowed_fields = frozenset({"case_id", "customer_number", "agent_id", "customer_crm_id", "did"})
    required_fields = frozenset({"case_id", "customer_number", "agent_id", "customer_crm_id"})
    # The document gives no token lifetime: 10 minutes here.
    ttl_s = 600
    # l. 19: "Creates the room + mints the agent token. Does not dial yet."
    dispatch_on_mint = False

    def __init__(self, api_key: str, *, livekit_url: str | None = None) -> None:
        super().__init__(api_key, livekit_url=livekit_url)
        self.calls: dict[str, BridgeCall] = {}
        # (step, call id, body) of each call-control request, in order.
        self.control: list[tuple[str, str, Mapping[str, Any]]] = []
        # l. 15, 62-67: the kiosk joins and publishes its microphone first, then /connect.
        # A test on a real LiveKit server sets this to check it (the room's participants).
        self.published: Callable[[str], Awaitable[bool]] | None = None

    def check(self, body: Mapping[str, Any]) -> str | None:
        # l. 19: "Send the customer number as exactly 10 digits".
        ok = re.fullmatch(r"[0-9]{10}", str(body.get("customer_number")))
        return None if ok else "customer_number must be 10 digits"

    def answer(self, request: web.Request, body: Mapping[str, Any]) -> Mapping[str, Any]:
        suffix = short_id()
        room = f"c2c-{suffix}"  # l. 24: room "c2c-ab12cd34"
        self.calls[f"c2c_{suffix}"] = BridgeCall(room)
        # l. 22-27: call_id, room, ws_url, token (the agent JWT), customer_number.
        return {
            "call_id": f"c2c_{suffix}",
            "room": room,
            "ws_url": self.livekit_url,
            "token": self.mint(identity=f"agent-{body['agent_id']}", room=room, ttl_s=self.ttl_s),
            "customer_number": body["customer_number"],
        }

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/c2c/calls/{call_id}/{step}", self._control)

    async def _control(self, request: web.Request) -> web.Response:
        # The browser snippet sends no key (l. 55-57, 67, 78); a server may send its own.
        key = request.headers.get(self.auth_header)
        if key is not None and key != self.api_key:
            return self._refuse(401, "Invalid API key")
        step, call_id = request.match_info["step"], request.match_info["call_id"]
        raw = await request.read()
        try:
            body = await request.json() if raw else {}
        except ValueError:
            return self._refuse(400, "body is not JSON")
        self.control.append((step, call_id, body))
        call = self.calls.get(call_id)
        if call is None:
            return self._refuse(404, "unknown call")
        if step == "connect":
            # l. 85: dials the customer, starts answer detection, returns {"status": "ringing"}.
            if call.hung_up or call.dialed:
                return self._refuse(409, "call already dialed or ended")
            if self.published is not None and not await self.published(call.room):
                return self._refuse(409, "join the room and publish the mic first")
            call.dialed = True
            self.dispatch(call.room)
            return web.json_response({"status": "ringing"})
        if step == "status":
            # l. 52-60, 87: the browser reports {status, ...}; ANSWERED is the answer signal.
            if body.get("status") not in ("ANSWERED", "NOT_ANSWERED", "FAILED"):
                return self._refuse(400, "unknown status")
            call.answered = call.answered or body["status"] == "ANSWERED"
            return web.json_response({"ok": True})
        if step == "hangup":
            # l. 86: ends the call, deletes the room, computes the outcome. Idempotent.
            call.hung_up = True
            outcome = "ANSWERED" if call.answered else "NOT_ANSWERED"
            return web.json_response({"status": "ended", "call_status": outcome})
        return self._refuse(404, f"no step {step!r}")
