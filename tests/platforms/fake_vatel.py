"""Vatel's session token, from seeds/001_1eb63e0f4fd9c90e.txt.

Its HTTP request is not in the document (only the SDK's generateSessionToken, l. 30-32): the
path, body and Bearer header here are the same assumption the backend makes
(`VATEL_SESSION_PATH`), written out independently.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.platforms.fake_base import FakePlatform, short_id


class FakeVatel(FakePlatform):
    path = "/v1/agents/{agent_id}/session-token"  # assumption
    allowed_fields = frozenset({"agent_id", "transport"})
    required_fields = frozenset({"transport"})
    # l. 2: "short-lived"; no figure is given: 10 minutes here.
    ttl_s = 600

    def check(self, body: Mapping[str, Any]) -> str | None:
        # l. 31: transport TRANSPORT_WEBRTC.
        return None if body.get("transport") == "webrtc" else "transport must be webrtc"

    def answer(self, request: web.Request, body: Mapping[str, Any]) -> Mapping[str, Any]:
        agent_id = request.match_info["agent_id"]
        room = f"vatel-{agent_id}-{short_id()}"
        identity = f"user-{short_id()}"
        # l. 2, 33: webrtc_token (LiveKit JWT), url, room, identity; token is the platform's
        # session JWT, not for LiveKit (a string that is no LiveKit token here).
        return {
            "webrtc_token": self.mint(identity=identity, room=room, ttl_s=self.ttl_s),
            "url": self.livekit_url,
            "room": room,
            "identity": identity,
            "token": "vatel-session-jwt-not-for-livekit",
        }
