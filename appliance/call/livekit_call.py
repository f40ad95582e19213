"""The one module that talks to LiveKit: one room, run in the call worker process.

`LiveKitRoom` joins, publishes the microphone frames it is given, hands the agent's audio
to a callback, sends call-status messages, and reports the room as our call events. It
runs in `worker.py`'s process, never in the daemon's: see docs/call-worker.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from livekit import rtc

from appliance.aio import TaskSet
from appliance.audio.base import SAMPLE_RATE, SAMPLES_PER_FRAME
from appliance.call.events import (
    AgentJoined,
    AgentLeft,
    CallEvent,
    Disconnected,
    EndRequested,
    Reconnected,
    Reconnecting,
)
from appliance.errors import CallError, TokenRefusedError
from appliance.state import EndReason
from appliance.status.redact import redact

logger = logging.getLogger(__name__)

# How long closing waits for queued status messages to go out.
STATUS_DRAIN_S = 2.0
# Each step of leaving (unpublishing, disconnecting) waits at most this for the server.
LEAVE_STEP_S = 3.0
# Extra time, beyond the SDK's own connect timeout, for publishing the microphone.
CONNECT_MARGIN_S = 5.0
# Microphone frames waiting for the SDK's source; the oldest is dropped past this.
MIC_QUEUE_FRAMES = 10
# How the SDK words a join the server refused for the token ("client error: 401 Unauthorized").
_REFUSED = re.compile(r"\b(401|403)\b")
# The control messages this device accepts from the agent: {"v": 1, "type": "end_call"}.
CONTROL_VERSION = 1


class LiveKitRoom:
    """Our microphone published to one room, the agent's audio handed on, status sent."""

    def __init__(
        self,
        *,
        call_id: str,
        room_name: str,
        on_event: Callable[[CallEvent], None],
        on_agent_audio: Callable[[bytes], Awaitable[None]],
        status_topic: str,
        control_topic: str,
        connect_timeout_s: float,
        muted: bool = False,
    ) -> None:
        self._call_id = call_id
        self._room_name = room_name
        self._on_event = on_event
        self._on_agent_audio = on_agent_audio
        self._status_topic = status_topic
        self._control_topic = control_topic
        self._connect_timeout_s = connect_timeout_s
        self._muted = muted
        self._room = rtc.Room()
        self._mic_track: rtc.LocalAudioTrack | None = None
        self._mic_publication: rtc.LocalTrackPublication | None = None
        self._mic_queue: asyncio.Queue[bytes] = asyncio.Queue(MIC_QUEUE_FRAMES)
        self._tasks = TaskSet(on_error=self._task_failed)
        self._status_queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._agent_identity: str | None = None
        self._closing = False
        self._reconnecting = False

    async def connect(self, url: str, token: str) -> None:
        """Join the room and publish the microphone; raises CallError if that fails."""
        room = self._room
        room.on("participant_connected", self._on_participant_connected)
        room.on("participant_disconnected", self._on_participant_disconnected)
        room.on("track_subscribed", self._on_track_subscribed)
        room.on("disconnected", self._on_disconnected)
        room.on("data_received", self._on_data_received)
        room.on("reconnecting", self._on_reconnecting)
        room.on("reconnected", self._on_reconnected)
        try:
            # Never cancelled: the SDK bounds the join itself (connect_timeout per attempt,
            # a few attempts), and a connect cancelled mid-handshake makes its native side
            # panic 15 s later, which it answers with SIGTERM to this process.
            room_options = rtc.RoomOptions(connect_timeout=self._connect_timeout_s)
            await room.connect(url, token, room_options)
            async with asyncio.timeout(CONNECT_MARGIN_S):
                source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
                track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
                self._mic_track = track
                if self._muted:
                    track.mute()
                options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
                self._mic_publication = await room.local_participant.publish_track(track, options)
        except (TimeoutError, rtc.ConnectError, rtc.participant.PublishTrackError) as exc:
            await self._disconnect_quietly()
            # LiveKit's refusal quotes the token it refused: keep it out of our error's text.
            detail = redact(str(exc)) or "timed out"
            if isinstance(exc, rtc.ConnectError) and _REFUSED.search(str(exc)):
                raise TokenRefusedError(f"LiveKit refused the token: {detail}") from exc
            raise CallError(f"could not join room {self._room_name}: {detail}") from exc
        self._spawn(self._pump_microphone(source), "call-microphone")
        self._spawn(self._send_status_messages(), "call-status")
        for participant in room.remote_participants.values():
            self._on_participant_connected(participant)

    def push_microphone(self, frame: bytes) -> None:
        """One 10 ms frame for the published track; the oldest waiting one gives way."""
        if self._mic_queue.full():
            self._mic_queue.get_nowait()
        self._mic_queue.put_nowait(frame)

    def send_status(self, payload: bytes) -> None:
        """Queue a call-status message; they are sent in order."""
        self._status_queue.put_nowait(payload)

    def set_muted(self, muted: bool) -> None:
        """Mute or unmute the published track (the daemon also stops sending frames)."""
        self._muted = muted
        if self._mic_track is not None:
            if muted:
                self._mic_track.mute()
            else:
                self._mic_track.unmute()

    async def aclose(self) -> None:
        """Send what status is queued, unpublish the microphone, leave the room."""
        if self._closing:
            return
        self._closing = True
        # A room the SDK is still trying to resume cannot take messages or an unpublish:
        # leave at once (a rejoin is waiting for this).
        if not self._reconnecting and self._room.isconnected():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATUS_DRAIN_S):
                    await self._status_queue.join()
        await self._tasks.aclose()
        if (
            self._mic_publication is not None
            and self._room.isconnected()
            and not self._reconnecting
        ):
            try:
                # A server that stalled answers nothing: leaving must not wait for it.
                async with asyncio.timeout(LEAVE_STEP_S):
                    await self._room.local_participant.unpublish_track(self._mic_publication.sid)
            except Exception:
                # Leaving the room below stops the track anyway.
                logger.warning("could not unpublish the microphone", exc_info=True)
            self._mic_publication = None
        await self._disconnect_quietly()

    async def _disconnect_quietly(self) -> None:
        if self._room.isconnected():
            try:
                async with asyncio.timeout(LEAVE_STEP_S):
                    await self._room.disconnect()
            except Exception:
                logger.warning("could not leave the room cleanly", exc_info=True)

    def _spawn(self, coro: Coroutine[object, object, None], name: str) -> None:
        if self._closing:
            coro.close()  # a track subscribed while we leave: nothing to play it to
            return
        self._tasks.spawn(coro, name)

    def _task_failed(self, task: asyncio.Task[Any], exc: BaseException) -> None:
        logger.error("call task %s failed", task.get_name(), exc_info=exc, extra=self._log_fields())
        # A call whose audio or status task died is broken: end it, don't limp on.
        self._on_event(EndRequested(EndReason.CONNECTION_LOST))

    async def _pump_microphone(self, source: rtc.AudioSource) -> None:
        try:
            while True:
                frame = await self._mic_queue.get()
                await source.capture_frame(rtc.AudioFrame(frame, SAMPLE_RATE, 1, SAMPLES_PER_FRAME))
        finally:
            await source.aclose()

    async def _send_status_messages(self) -> None:
        while True:
            payload = await self._status_queue.get()
            try:
                await self._room.local_participant.publish_data(
                    payload, reliable=True, topic=self._status_topic
                )
            except Exception:
                logger.warning("could not send a call-status message", extra=self._log_fields())
            finally:
                self._status_queue.task_done()

    async def _play_agent(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        try:
            async for event in stream:
                await self._on_agent_audio(bytes(event.frame.data))
        finally:
            await stream.aclose()

    def _on_data_received(self, packet: rtc.DataPacket) -> None:
        if packet.topic != self._control_topic:
            return
        sender = packet.participant
        extra = {"CALL_ID": self._call_id, "SENDER": sender.identity if sender else "server"}
        if sender is None or not self._is_agent(sender) or sender.identity != self._agent_identity:
            logger.warning("control message ignored: not from the call's agent", extra=extra)
            return
        try:
            message = json.loads(packet.data)
        except ValueError:
            message = None
        if (
            isinstance(message, dict)
            and message.get("v") == CONTROL_VERSION
            and message.get("type") == "end_call"
        ):
            logger.info("the agent ended the call", extra=extra)
            self._on_event(EndRequested(EndReason.AGENT_ENDED))
        else:
            logger.warning("control message ignored: not understood", extra=extra)

    def _is_agent(self, participant: rtc.RemoteParticipant) -> bool:
        return bool(participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT)

    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        if self._is_agent(participant) and self._agent_identity is None:
            self._agent_identity = participant.identity
            self._on_event(AgentJoined(participant.identity))

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity != self._agent_identity:
            return
        # While the SDK reconnects it drops every participant: that is not the agent leaving.
        if self._reconnecting:
            return
        self._agent_identity = None
        self._on_event(AgentLeft(participant.identity))

    def _on_reconnecting(self) -> None:
        logger.info("connection lost: the SDK is reconnecting", extra=self._log_fields())
        self._reconnecting = True
        self._on_event(Reconnecting())

    def _on_reconnected(self) -> None:
        self._reconnecting = False
        agents = [p for p in self._room.remote_participants.values() if self._is_agent(p)]
        present = any(p.identity == self._agent_identity for p in agents)
        if not present:
            # The room was lost with the agent in it; an agent that comes back is new.
            self._agent_identity = None
            for agent in agents:
                self._on_participant_connected(agent)
            present = self._agent_identity is not None
        logger.info(
            "connection back (agent %s)",
            "present" if present else "absent",
            extra=self._log_fields(),
        )
        self._on_event(Reconnected(agent_present=present))

    def _log_fields(self) -> dict[str, str]:
        return {"CALL_ID": self._call_id, "ROOM": self._room_name}

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and self._is_agent(participant):
            self._spawn(self._play_agent(track), "call-agent-audio")

    def _on_disconnected(self, reason: int) -> None:
        if self._closing:
            return
        room_closed = reason in (
            rtc.DisconnectReason.ROOM_DELETED,
            rtc.DisconnectReason.ROOM_CLOSED,
            rtc.DisconnectReason.PARTICIPANT_REMOVED,
        )
        name = rtc.DisconnectReason.Name(reason)  # type: ignore[arg-type]
        self._on_event(Disconnected(room_closed=room_closed, detail=name))
