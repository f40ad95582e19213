"""Call2Me's token API, from seeds/000_f92437d9e72453ef.txt."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.platforms.fake_base import FakePlatform, short_id


class FakeCall2Me(FakePlatform):
    # l. 23-24: POST /v1/livekit/token, Authorization: Bearer YOUR_API_KEY.
    path = "/v1/livekit/token"
    # l. 26-30: agent_id, user_identity, metadata.
    allowed_fields = frozenset({"agent_id", "user_identity", "metadata"})
    required_fields = frozenset({"agent_id", "user_identity"})
    # l. 66: "typically valid for 60 minutes from issue".
    ttl_s = 3600

    def answer(self, request: web.Request, body: Mapping[str, Any]) -> Mapping[str, Any]:
        # l. 34-38: {url, token, room_name}; the room as in the example, agent_user_session.
        room = f"{body['agent_id']}_{body['user_identity']}_session_{short_id()}"
        token = self.mint(identity=body["user_identity"], room=room, ttl_s=self.ttl_s)
        return {"url": self.livekit_url, "token": token, "room_name": room}
