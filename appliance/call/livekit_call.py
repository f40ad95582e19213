"""The one module that talks to LiveKit: one room, run in the call worker process.

`LiveKitRoom` joins, publishes the microphone frames it is given, mixes the audio of every
remote party (agent, person, SIP bridge) and hands the mix to a callback every 10 ms, sends
call-status messages (and the latest to each participant who joins), keeps the kiosk's state
in its participant attributes, reads the far end's messages through the provider's
conventions (`conventions.py`), answers tool calls (LiveKit RPC, or the platform's data
message) with what the daemon decides, and reports the room as our call events. It runs in
`worker.py`'s process, never in the daemon's: see docs/call-worker.md and
docs/calls-with-people.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import numpy as np
from livekit import rtc

from appliance.aio import TaskSet
from appliance.audio.base import FRAME_MS, SAMPLE_RATE, SAMPLES_PER_FRAME
from appliance.call.conventions import Conventions, ParticipantView
from appliance.call.events import (
    CallEvent,
    Disconnected,
    EndRequested,
    PartyJoined,
    PartyLeft,
    Reconnected,
    Reconnecting,
    ToolCall,
)
from appliance.call.mixer import Mixer
from appliance.call.tones import limit_warning
from appliance.errors import CallError, TokenRefusedError
from appliance.state import EndReason
from appliance.status.redact import redact
from appliance.vocabulary import DeviceTool, PartyKind

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
# A remote party gone for one of these: the room itself is closing.
_ROOM_GONE = frozenset({rtc.DisconnectReason.ROOM_DELETED, rtc.DisconnectReason.ROOM_CLOSED})
# The control messages this device accepts from the agent: {"v": 1, "type": "end_call"}.
CONTROL_VERSION = 1
# The participant attribute (set in its token by the backend, which a participant cannot
# change without `can_update_own_metadata`) that vouches for an operator.
ROLE_ATTRIBUTE = "kiosk.role"
OPERATOR_ROLE = "operator"
# The kiosk's own attributes: what a late joiner reads at once.
STATE_ATTRIBUTE = "kiosk.state"
MUTED_ATTRIBUTE = "kiosk.muted"
CALL_ID_ATTRIBUTE = "kiosk.call_id"
# A mix clock this far behind (a stalled process) starts afresh rather than catch up.
MIX_RESYNC_S = 0.1
# A whole text stream (a transcript line) must arrive within this.
TEXT_STREAM_S = 30.0
# The RPC error a refused or failed tool call gets (1001-1999 are LiveKit's own).
TOOL_REFUSED = 4003
TOOL_FAILED = 4005
# An RPC tool call's answer is due this long before the caller's own deadline.
RPC_MARGIN_S = 0.5
# Who counts as a remote party of the call, by LiveKit's participant kind.
_PARTY_KINDS = {
    rtc.ParticipantKind.PARTICIPANT_KIND_AGENT: PartyKind.AGENT,
    rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD: PartyKind.PERSON,
    rtc.ParticipantKind.PARTICIPANT_KIND_SIP: PartyKind.SIP,
}


def party_kind(participant: rtc.RemoteParticipant) -> PartyKind | None:
    """The kind of party a participant is in the call; None for egress, ingress and the like."""
    return _PARTY_KINDS.get(participant.kind)


def participant_view(participant: rtc.Participant) -> ParticipantView:
    """What the conventions may know of `participant`."""
    kind = party_kind(participant) if isinstance(participant, rtc.RemoteParticipant) else None
    return ParticipantView(participant.identity, kind, dict(participant.attributes))


def is_vouched_operator(participant: rtc.RemoteParticipant) -> bool:
    """A person whose token the backend minted as an operator's."""
    return (
        party_kind(participant) is PartyKind.PERSON
        and participant.attributes.get(ROLE_ATTRIBUTE) == OPERATOR_ROLE
    )


class LiveKitRoom:
    """Our microphone published to one room, every remote voice mixed, status sent."""

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
        conventions: Conventions | None = None,
    ) -> None:
        self._call_id = call_id
        self._conventions = conventions or Conventions()
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
        # (payload, destination identities; empty for everyone), sent in order.
        self._status_queue: asyncio.Queue[tuple[bytes, list[str]]] = asyncio.Queue()
        self._last_status: bytes | None = None
        # Set once the last text stream opened so far has been handed on (or given up): each
        # stream is read at once but handed on after the one before it, so an interim
        # transcript and its final arrive in the order they were sent.
        self._text_turn: asyncio.Event | None = None
        self._attributes_refused = False
        self._parties: dict[str, PartyKind] = {}
        self._mixer = Mixer()
        self._closing = False
        self._reconnecting = False
        self._room_gone = False
        # Tool calls waiting for the daemon's answer: RPC ones by call id, and the caller of
        # each made by data message (answered by data message).
        self._rpc_waiting: dict[str, asyncio.Future[tuple[bool, str]]] = {}
        self._data_callers: dict[str, tuple[str, str]] = {}  # call id -> (caller, topic)

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
        room.on("participant_attributes_changed", self._on_attributes_changed)
        for topic in self._conventions.text_topics:
            room.register_text_stream_handler(topic, self._on_text_stream)
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
        self._spawn(self._mix_out(), "call-mix")
        for tool in DeviceTool:
            # Every tool is answered, the ones the fleet does not allow with a refusal.
            room.local_participant.register_rpc_method(tool.value, self._on_rpc)
        for participant in room.remote_participants.values():
            self._on_participant_connected(participant)

    def push_microphone(self, frame: bytes) -> None:
        """One 10 ms frame for the published track; the oldest waiting one gives way."""
        if self._mic_queue.full():
            self._mic_queue.get_nowait()
        self._mic_queue.put_nowait(frame)

    def send_status(self, payload: bytes) -> None:
        """Queue a call-status message for everyone; they are sent in order, and the
        latest goes again to each participant who joins."""
        self._last_status = payload
        self._status_queue.put_nowait((payload, []))

    def set_muted(self, muted: bool) -> None:
        """Mute or unmute the published track (the daemon also stops sending frames)."""
        self._muted = muted
        if self._mic_track is not None:
            if muted:
                self._mic_track.mute()
            else:
                self._mic_track.unmute()

    def play_warning(self) -> None:
        """Mix the kiosk's limit warning into what the speaker plays (every voice goes on)."""
        self._spawn(self._play_local(limit_warning(), "kiosk-warning"), "call-warning")

    async def _play_local(self, pcm: np.ndarray, key: str) -> None:
        """A sound of the kiosk's own as one more track of the mix, paced at 10 ms."""
        self._mixer.add_track(key)
        try:
            for start in range(0, len(pcm), SAMPLES_PER_FRAME):
                self._mixer.push(key, pcm[start : start + SAMPLES_PER_FRAME])
                await asyncio.sleep(FRAME_MS / 1000)
        finally:
            self._mixer.remove_track(key)

    def answer_tool(self, call_id: str, ok: bool, output: str) -> None:
        """The daemon's answer to a tool call: back over RPC, or the platform's data message."""
        waiting = self._rpc_waiting.get(call_id)
        if waiting is not None:
            if not waiting.done():
                waiting.set_result((ok, output))
            return
        caller = self._data_callers.pop(call_id, None)
        payload = self._conventions.tool_output(call_id, output, ok=ok)
        if caller is not None and payload is not None:
            self._spawn(self._send_tool_output(payload, *caller), "call-tool-output")

    async def _send_tool_output(self, payload: bytes, caller: str, topic: str) -> None:
        try:
            # Back to the caller, on the topic its call came on.
            await self._room.local_participant.publish_data(
                payload, reliable=True, topic=topic, destination_identities=[caller]
            )
        except Exception:
            logger.warning("could not send a tool's output", extra=self._log_fields())

    async def _on_rpc(self, data: rtc.RpcInvocationData) -> str:
        """A tool call over LiveKit RPC: only from the far end; the daemon decides."""
        extra = {**self._log_fields(), "SENDER": data.caller_identity, "TOOL": data.method}
        caller = self._room.remote_participants.get(data.caller_identity)
        if caller is None or not self._may_call_tools(caller):
            logger.warning("tool call refused: not from the call's agent", extra=extra)
            raise rtc.RpcError(TOOL_REFUSED, "only the call's agent may call the kiosk's tools")
        try:
            args = json.loads(data.payload) if data.payload.strip() else {}
        except ValueError:
            args = None
        if not isinstance(args, dict):
            raise rtc.RpcError(TOOL_FAILED, "the arguments must be a JSON object")
        call_id = f"rpc-{data.request_id}"
        answer: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        self._rpc_waiting[call_id] = answer
        try:
            self._on_event(ToolCall(data.method, call_id, args))
            async with asyncio.timeout(max(RPC_MARGIN_S, data.response_timeout - RPC_MARGIN_S)):
                ok, output = await answer
        except TimeoutError:
            raise rtc.RpcError(TOOL_FAILED, "the kiosk did not answer in time") from None
        finally:
            del self._rpc_waiting[call_id]
        if not ok:
            raise rtc.RpcError(TOOL_REFUSED, output)
        return output

    def _may_call_tools(self, participant: rtc.RemoteParticipant) -> bool:
        return party_kind(participant) is PartyKind.AGENT or self._conventions.is_far_end(
            participant_view(participant)
        )

    def _emit(
        self, events: list[CallEvent], sender: str | None = None, topic: str | None = None
    ) -> None:
        for event in events:
            if isinstance(event, ToolCall):
                if sender is None:
                    continue  # nobody to answer
                self._data_callers[event.call_id] = (sender, topic or "")
            self._on_event(event)

    def _on_attributes_changed(self, changed: dict[str, str], participant: rtc.Participant) -> None:
        if isinstance(participant, rtc.RemoteParticipant) and not self._closing:
            self._emit(self._conventions.on_attributes(participant_view(participant), changed))

    def _on_text_stream(self, reader: rtc.TextStreamReader, identity: str) -> None:
        before, self._text_turn = self._text_turn, asyncio.Event()
        self._spawn(self._read_text(reader, identity, before, self._text_turn), "call-text-stream")

    async def _read_text(
        self,
        reader: rtc.TextStreamReader,
        identity: str,
        before: asyncio.Event | None,
        turn: asyncio.Event,
    ) -> None:
        try:
            try:
                async with asyncio.timeout(TEXT_STREAM_S):
                    text = await reader.read_all()
            except (TimeoutError, rtc.StreamError) as exc:
                logger.debug("a text stream broke off: %s", exc, extra=self._log_fields())
                return
            if before is not None:
                await before.wait()
            self._hand_on_text(reader, identity, text)
        finally:
            turn.set()

    def _hand_on_text(self, reader: rtc.TextStreamReader, identity: str, text: str) -> None:
        room = self._room
        local = room.local_participant
        sender: rtc.Participant | None = (
            local if identity == local.identity else room.remote_participants.get(identity)
        )
        mic = self._mic_publication
        info = reader.info
        self._emit(
            self._conventions.on_text(
                None if sender is None else participant_view(sender),
                local_identity=local.identity,
                local_tracks=frozenset({mic.sid}) if mic is not None else frozenset(),
                topic=info.topic,
                text=text,
                attributes=dict(info.attributes or {}),
                stream_id=info.stream_id,
            )
        )

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
            payload, destinations = await self._status_queue.get()
            try:
                await self._room.local_participant.publish_data(
                    payload,
                    reliable=True,
                    topic=self._status_topic,
                    destination_identities=destinations,
                )
                if not destinations:
                    await self._set_attributes(payload)
            except Exception:
                logger.warning("could not send a call-status message", extra=self._log_fields())
            finally:
                self._status_queue.task_done()

    async def _set_attributes(self, payload: bytes) -> None:
        """The kiosk's state, mute and call id as its own participant attributes."""
        if self._attributes_refused:
            return
        status = json.loads(payload)
        attributes = {
            STATE_ATTRIBUTE: str(status.get("state", "")),
            MUTED_ATTRIBUTE: "true" if status.get("muted") else "false",
            CALL_ID_ATTRIBUTE: str(status.get("call_id") or ""),
        }
        try:
            # A server that does not answer (a token without `can_update_own_metadata`)
            # must not hold up the status messages behind this one.
            async with asyncio.timeout(LEAVE_STEP_S):
                await self._room.local_participant.set_attributes(attributes)
        except Exception:
            self._attributes_refused = True
            logger.warning(
                "could not set the kiosk's participant attributes (does the token allow "
                "updating its own metadata?)",
                extra=self._log_fields(),
            )

    async def _receive_track(self, track: rtc.Track, key: str) -> None:
        # The SDK resamples each track to the speaker's rate; the mixer sums them.
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        self._mixer.add_track(key)
        try:
            async for event in stream:
                self._mixer.push(key, np.frombuffer(event.frame.data, dtype=np.int16))
        finally:
            self._mixer.remove_track(key)
            await stream.aclose()

    async def _mix_out(self) -> None:
        """Every 10 ms, the mix of whatever the remote tracks have queued goes out."""
        loop = asyncio.get_running_loop()
        period = FRAME_MS / 1000
        due = loop.time()
        while True:
            due += period
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -MIX_RESYNC_S:
                due = loop.time()
            frame = self._mixer.mix()
            if frame is not None:
                await self._on_agent_audio(frame.tobytes())

    def _on_data_received(self, packet: rtc.DataPacket) -> None:
        if packet.topic != self._control_topic:
            self._on_platform_data(packet)
            return
        sender = packet.participant
        extra = {"CALL_ID": self._call_id, "SENDER": sender.identity if sender else "server"}
        if sender is not None and party_kind(sender) is PartyKind.AGENT:
            reason, who = EndReason.AGENT_ENDED, "the agent"
        elif sender is not None and is_vouched_operator(sender):
            reason, who = EndReason.OPERATOR_ENDED, "an operator"
        else:
            logger.warning(
                "control message ignored: not from an agent or a vouched operator", extra=extra
            )
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
            logger.info("%s ended the call", who, extra=extra)
            self._on_event(EndRequested(reason))
        else:
            logger.warning("control message ignored: not understood", extra=extra)

    def _on_platform_data(self, packet: rtc.DataPacket) -> None:
        conventions = self._conventions
        sender = packet.participant
        view = None if sender is None else participant_view(sender)
        if not conventions.reads_data(packet.topic) or not conventions.may_send(view):
            return
        events = conventions.on_data(view, packet.data)
        self._emit(events, None if view is None else view.identity, packet.topic)

    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        if self._last_status is not None and not self._closing:
            # A late joiner learns at once what the kiosk is doing.
            self._status_queue.put_nowait((self._last_status, [participant.identity]))
        kind = party_kind(participant)
        if kind is None or participant.identity in self._parties:
            return
        self._parties[participant.identity] = kind
        logger.info(
            "%s joined (%d remote parties)",
            kind.value,
            len(self._parties),
            extra={**self._log_fields(), "PARTICIPANT": participant.identity},
        )
        self._on_event(PartyJoined(participant.identity, kind))
        # What it showed as it joined (an agent already listening, a phone already answered).
        if participant.attributes:
            view = participant_view(participant)
            self._emit(self._conventions.on_attributes(view, dict(participant.attributes)))

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        # While the SDK reconnects it drops every participant: that is nobody leaving.
        if self._reconnecting:
            return
        if participant.disconnect_reason in _ROOM_GONE:
            # The room is being closed (a revocation, a ring nobody answered): everyone
            # goes, this device too. That is the call's end, not its party's leaving, and
            # LiveKit may tell of the party before it tells this device.
            self._room_gone = True
            name = rtc.DisconnectReason.Name(participant.disconnect_reason)
            self._on_event(Disconnected(room_closed=True, detail=name))
            return
        kind = self._parties.pop(participant.identity, None)
        if kind is None:
            return
        logger.info(
            "%s left (%d remote parties)",
            kind.value,
            len(self._parties),
            extra={**self._log_fields(), "PARTICIPANT": participant.identity},
        )
        self._on_event(PartyLeft(participant.identity, kind, remaining=len(self._parties)))

    def _on_reconnecting(self) -> None:
        logger.info("connection lost: the SDK is reconnecting", extra=self._log_fields())
        self._reconnecting = True
        self._on_event(Reconnecting())

    def _on_reconnected(self) -> None:
        self._reconnecting = False
        # Whoever is in the room now is the call's parties; one who came back is new.
        present = {p.identity: p for p in self._room.remote_participants.values() if party_kind(p)}
        for identity in list(self._parties):
            if identity not in present:
                del self._parties[identity]
        for participant in present.values():
            self._on_participant_connected(participant)
        logger.info(
            "connection back (%d remote parties)", len(self._parties), extra=self._log_fields()
        )
        self._on_event(Reconnected(party_present=bool(self._parties)))

    def _log_fields(self) -> dict[str, str]:
        return {"CALL_ID": self._call_id, "ROOM": self._room_name}

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and party_kind(participant) is not None:
            self._spawn(self._receive_track(track, publication.sid), "call-remote-audio")

    def _on_disconnected(self, reason: int) -> None:
        if self._closing or self._room_gone:
            return
        removed = reason == rtc.DisconnectReason.PARTICIPANT_REMOVED
        room_closed = reason in (
            rtc.DisconnectReason.ROOM_DELETED,
            rtc.DisconnectReason.ROOM_CLOSED,
        ) or (removed and not self._conventions.reissues)
        name = rtc.DisconnectReason.Name(reason)  # type: ignore[arg-type]
        self._on_event(Disconnected(room_closed=room_closed, detail=name))
