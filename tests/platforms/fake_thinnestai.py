"""thinnestAI's voice session, from seeds/002_8334befbcd4bec58.txt."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.platforms.fake_base import FakePlatform, short_id


class FakeThinnestAI(FakePlatform):
    # l. 15-16: POST /voice/start, Authorization: Bearer YOUR_API_KEY.
    path = "/voice/start"
    # l. 94-99: agent_id (required), context, recording, max_duration.
    allowed_fields = frozenset({"agent_id", "context", "recording", "max_duration"})
    required_fields = frozenset({"agent_id"})
    # l. 158: "Tokens are valid for 10 minutes".
    ttl_s = 600

    def answer(self, request: web.Request, body: Mapping[str, Any]) -> Mapping[str, Any]:
        session = f"session_{short_id()}"
        # l. 25-30: session_id, token, websocket_url, livekit_url; no room, no identity.
        return {
            "session_id": session,
            "token": self.mint(identity=f"user-{short_id()}", room=session, ttl_s=self.ttl_s),
            "websocket_url": f"wss://voice.thinnest.ai/ws/{session}",
            "livekit_url": self.livekit_url,
        }
