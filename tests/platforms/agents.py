"""In-call agents for the platform fakes: each joins the room its fake just minted and speaks
that platform's in-call conventions, as its seed document describes them.

The fake "dispatches" one when it answers a token request (`FakePlatform.on_room`). A test
drives it: `say` a transcript line the platform's way, `set_state` (`lk.agent.state`),
`call_tool` (LiveKit RPC, or Vatel's `tool_call` data message), `end` the call the
platform's way. Each rule cites the line of its document.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from livekit import api, rtc

from tests.platforms.fake_base import FAKE_LIVEKIT_KEY, FAKE_LIVEKIT_SECRET

JOIN_TIMEOUT_S = 15.0
SAMPLE_RATE = 48000
FRAME = SAMPLE_RATE // 100


def agent_token(room: str, identity: str, *, kind: api.AccessToken.ParticipantKind) -> str:
    """The platform's own agent (or SIP leg) in `room`, signed with the fake's LiveKit key."""
    return (
        api.AccessToken(FAKE_LIVEKIT_KEY, FAKE_LIVEKIT_SECRET)
        .with_identity(identity)
        .with_kind(kind)
        .with_ttl(timedelta(minutes=10))
        .with_grants(
            api.VideoGrants(
                room_join=True,
                room=room,
                can_publish=True,
                can_publish_data=True,
                can_update_own_metadata=True,
            )
        )
        .to_jwt()
    )


class PlatformAgent:
    """The far end of one call on a platform's LiveKit; `kind` is how it joins."""

    kind: api.AccessToken.ParticipantKind = "agent"
    identity_prefix = "agent"

    def __init__(self, url: str, room: str) -> None:
        self.url = url
        self.room_name = room
        self.identity = f"{self.identity_prefix}-{secrets.token_hex(3)}"
        self.room = rtc.Room()
        self.received: list[tuple[str | None, Any]] = []  # (topic, decoded JSON) from the kiosk
        self.kiosk: str | None = None
        self._kiosk_joined = asyncio.Event()
        self._messages = asyncio.Condition()
        self._voice: rtc.AudioSource | None = None

    async def start(self) -> None:
        room = self.room
        room.on("participant_connected", self._on_participant)
        room.on("data_received", self._on_data)
        await room.connect(self.url, agent_token(self.room_name, self.identity, kind=self.kind))
        for participant in room.remote_participants.values():
            self._on_participant(participant)

    async def wait_for_kiosk(self, timeout: float = JOIN_TIMEOUT_S) -> str:
        async with asyncio.timeout(timeout):
            await self._kiosk_joined.wait()
        assert self.kiosk is not None
        return self.kiosk

    async def wait_for_message(self, kind: str, timeout: float = 10.0, **data: Any) -> Any:
        """The first JSON data message from the kiosk whose "type" is `kind` (and whose
        "data" has these values)."""
        async with asyncio.timeout(timeout), self._messages:
            while True:
                for _topic, message in self.received:
                    if not isinstance(message, dict) or message.get("type") != kind:
                        continue
                    inner = message.get("data")
                    if all(isinstance(inner, dict) and inner.get(k) == v for k, v in data.items()):
                        return message
                await self._messages.wait()

    async def set_state(self, state: str) -> None:
        """`lk.agent.state`, as LiveKit agents publish it (004 l. 460-468)."""
        await self.room.local_participant.set_attributes({"lk.agent.state": state})

    async def say(self, text: str, *, user: bool = False) -> None:
        raise NotImplementedError

    async def call_tool(self, name: str, args: Mapping[str, Any]) -> str:
        """A tool call over LiveKit RPC (raises `rtc.RpcError` if the kiosk refuses)."""
        return await self.room.local_participant.perform_rpc(
            destination_identity=await self.wait_for_kiosk(),
            method=name,
            payload=json.dumps(dict(args)),
        )

    async def speak(self, pcm: npt.NDArray[np.int16]) -> None:
        """Play 48 kHz mono speech on the agent's own audio track (published on first use)."""
        if self._voice is None:
            self._voice = rtc.AudioSource(SAMPLE_RATE, 1)
            track = rtc.LocalAudioTrack.create_audio_track("agent-voice", self._voice)
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            await self.room.local_participant.publish_track(track, options)
        padded = np.concatenate([pcm, np.zeros(-len(pcm) % FRAME, dtype=np.int16)])
        for start in range(0, len(padded), FRAME):
            chunk = padded[start : start + FRAME]
            await self._voice.capture_frame(rtc.AudioFrame(chunk.tobytes(), SAMPLE_RATE, 1, FRAME))
        await self._voice.wait_for_playout()

    async def end(self, reason: str) -> None:
        """End the call the platform's way; by default the agent leaves the room."""
        await self.aclose()

    async def aclose(self) -> None:
        if self.room.isconnected():
            await self.room.disconnect()
        if self._voice is not None:
            await self._voice.aclose()
            self._voice = None

    async def _send(self, message: Mapping[str, Any], topic: str | None = None) -> None:
        await self.room.local_participant.publish_data(
            json.dumps(dict(message)).encode(), reliable=True, topic=topic or ""
        )

    def _on_participant(self, participant: rtc.RemoteParticipant) -> None:
        # The kiosk joins with the platform's identity for it (user-…, web-user-…).
        if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD:
            self.kiosk = participant.identity
            self._kiosk_joined.set()

    def _on_data(self, packet: rtc.DataPacket) -> None:
        try:
            message = json.loads(packet.data)
        except ValueError:
            message = None
        self.received.append((packet.topic or None, message))
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._messages:
            self._messages.notify_all()


class LiveKitTranscriptionAgent(PlatformAgent):
    """A LiveKit agent (HMS VoiceDock, 004 l. 477-498): `lk.transcription` text streams,
    interim then final under one `lk.segment_id`; the user's lines under the user's identity."""

    async def say(self, text: str, *, user: bool = False, final: bool = True) -> None:
        segment = f"SG_{secrets.token_hex(4)}" if final else "SG_interim"
        attributes = {"lk.transcription_final": "true" if final else "false"}
        attributes["lk.segment_id"] = segment
        writer = await self.room.local_participant.stream_text(
            topic="lk.transcription",
            attributes=attributes,
            sender_identity=await self.wait_for_kiosk() if user else None,
        )
        await writer.write(text)
        await writer.aclose()


class Call2MeAgent(PlatformAgent):
    """Call2Me (000 l. 72-79): transcripts as data messages without a topic."""

    async def say(self, text: str, *, user: bool = False) -> None:
        await self._send(
            {"type": "transcript", "speaker": "user" if user else "agent", "text": text}
        )


class ThinnestAIAgent(PlatformAgent):
    """thinnestAI (002 l. 111-119): transcript and call_ended data messages."""

    async def say(self, text: str, *, user: bool = False) -> None:
        await self._send({"type": "transcript", "role": "user" if user else "agent", "text": text})

    async def end(self, reason: str) -> None:
        # l. 117-118: {"type": "call_ended", "duration"}; a reason beside it.
        await self._send({"type": "call_ended", "duration": 3, "reason": reason})
        await asyncio.sleep(0.5)  # the kiosk leaves first, as a client that read it would
        await self.aclose()


class VatelAgent(PlatformAgent):
    """Vatel (001 l. 55-65): `{type, timestamp, data}` events; `tool_call` answered with
    `tool_call_output` (the in-room format is the assumption docs/platforms.md names)."""

    async def _event(self, kind: str, data: Mapping[str, Any]) -> None:
        await self._send({"type": kind, "timestamp": int(time.time() * 1000), "data": dict(data)})

    async def say(self, text: str, *, user: bool = False) -> None:
        if user:
            await self._event("input_audio_transcript", {"transcript": text})  # l. 60
        else:
            await self._event("response_text", {"text": text, "turn_id": "t1"})  # l. 59

    async def call_tool(self, name: str, args: Mapping[str, Any]) -> str:
        # l. 64: toolCallId, toolName, arguments as parameter descriptors.
        call_id = f"tc-{secrets.token_hex(3)}"
        await self.wait_for_kiosk()
        descriptors = [{"name": k, "value": v} for k, v in args.items()]
        await self._event(
            "tool_call", {"toolCallId": call_id, "toolName": name, "arguments": descriptors}
        )
        reply = await self.wait_for_message("tool_call_output", toolCallId=call_id)
        return str(reply["data"]["output"])

    async def end(self, reason: str) -> None:
        await self._event("session_ended", {})  # l. 58: may be an empty object
        await asyncio.sleep(0.5)
        await self.aclose()


class SipLeg(PlatformAgent):
    """Click2Call's phone leg (003 l. 46-60): a `sip_…` participant whose `sip.callStatus`
    goes `ringing` → `active`. A token cannot make a participant's kind SIP on a server
    without a SIP trunk the way the bridge does, so it joins with kind "sip" in its token
    and the identity the document's client checks."""

    kind = "sip"
    identity_prefix = "sip_9530251797"

    async def ring(self) -> None:
        await self.room.local_participant.set_attributes({"sip.callStatus": "ringing"})

    async def answer(self) -> None:
        await self.room.local_participant.set_attributes({"sip.callStatus": "active"})


AGENTS: dict[str, type[PlatformAgent]] = {
    "call2me": Call2MeAgent,
    "vatel": VatelAgent,
    "thinnestai": ThinnestAIAgent,
    "hmsvoicedock": LiveKitTranscriptionAgent,
    "click2call": SipLeg,
}
