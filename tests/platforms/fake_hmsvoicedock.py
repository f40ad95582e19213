"""HMS VoiceDock's web calls, from seeds/004_7b9f6638bbfe4dbb.txt."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.platforms.fake_base import FakePlatform


class FakeHmsVoiceDock(FakePlatform):
    # l. 37-42: POST /v1/web-calls, Authorization: Bearer YOUR_API_KEY.
    path = "/v1/web-calls"
    # l. 49-52: assistant_id, assistant_override, assistant.
    allowed_fields = frozenset({"assistant_id", "assistant_override", "assistant"})
    # l. 151, 173: the token lives 5 minutes.
    ttl_s = 300

    def check(self, body: Mapping[str, Any]) -> str | None:
        # l. 159-162: the four configuration errors, in the document's words.
        if "assistant_id" not in body and "assistant" not in body:
            return "Must provide assistant_id, assistant, or both"
        if "assistant_override" in body and "assistant_id" not in body:
            return "assistant_override requires assistant_id"
        if "assistant" in body and "assistant_override" in body:
            return "Cannot provide both assistant and assistant_override"
        if "assistant" in body and not {"stt_config", "llm_config", "tts_config"} <= set(
            body["assistant"]
        ):
            return "Transient assistant must provide: stt_config, llm_config, tts_config"
        return None

    def answer(self, request: web.Request, body: Mapping[str, Any]) -> Mapping[str, Any]:
        call_id = str(uuid.uuid4())
        room = f"web-{call_id[:8]}"  # l. 143: "web-3f2a1b4c"
        # l. 140-146: success, call_id, room_name, token, server_url.
        return {
            "success": True,
            "call_id": call_id,
            "room_name": room,
            "token": self.mint(identity=f"web-user-{call_id[:8]}", room=room, ttl_s=self.ttl_s),
            "server_url": self.livekit_url,
        }
