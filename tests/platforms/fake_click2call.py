"""The Click2Call CRM bridge's /click2call, from seeds/003_a96bc7841f5ec315.txt."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.platforms.fake_base import FakePlatform, short_id


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

    def check(self, body: Mapping[str, Any]) -> str | None:
        # l. 19: "Send the customer number as exactly 10 digits".
        ok = re.fullmatch(r"[0-9]{10}", str(body.get("customer_number")))
        return None if ok else "customer_number must be 10 digits"

    def answer(self, request: web.Request, body: Mapping[str, Any]) -> Mapping[str, Any]:
        suffix = short_id()
        room = f"c2c-{suffix}"  # l. 24: room "c2c-ab12cd34"
        # l. 22-27: call_id, room, ws_url, token (the agent JWT), customer_number.
        return {
            "call_id": f"c2c_{suffix}",
            "room": room,
            "ws_url": self.livekit_url,
            "token": self.mint(identity=f"agent-{body['agent_id']}", room=room, ttl_s=self.ttl_s),
            "customer_number": body["customer_number"],
        }
