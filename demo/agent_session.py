"""One dispatched conversation of the demo agent: greet, listen, answer, record, leave."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from livekit import rtc

from appliance.aio import TaskSet, join_tasks
from demo.conversation import (
    AGENT_STATE_ATTRIBUTE,
    FRAME_SAMPLES,
    OUTPUT_QUEUE_MS,
    TRANSCRIPTION_TOPIC,
    AgentState,
    Endpointer,
    Pcm,
    ReceivedMessage,
    SessionOptions,
)
from demo.tts import SAMPLE_RATE, SpeechSynthesizer

__all__ = [
    "AGENT_STATE_ATTRIBUTE",
    "TRANSCRIPTION_TOPIC",
    "AgentSession",
    "AgentState",
    "Endpointer",
    "ReceivedMessage",
    "SessionOptions",
]

logger = logging.getLogger(__name__)

# A caller who left on purpose, or was removed, ends the session at once. One whose
# connection was replaced or lost (a kiosk rejoining after its call worker died, a
# network drop) has the device's rejoin window to come back, as LiveKit Agents' sessions
# do: they close only for a client's own leave, a deleted room or a rejected SIP call.
LEFT_ON_PURPOSE = frozenset(
    {
        rtc.DisconnectReason.CLIENT_INITIATED,
        rtc.DisconnectReason.PARTICIPANT_REMOVED,
        rtc.DisconnectReason.ROOM_DELETED,
        rtc.DisconnectReason.USER_REJECTED,
    }
)
REJOIN_GRACE_S = 30.0  # the device default of [call] rejoin_window_s


class AgentSession:
    """The agent's side of one room: owns the rtc.Room, its audio track and its tasks."""

    def __init__(
        self,
        *,
        job_id: str,
        room_name: str,
        url: str,
        token: str,
        options: SessionOptions,
        synthesizer: SpeechSynthesizer,
    ) -> None:
        self.job_id = job_id
        self.room_name = room_name
        self.options = options
        self.messages: list[ReceivedMessage] = []
        self.states: list[AgentState] = []
        self.turns: list[float] = []
        self.greeting_pcm: Pcm = np.zeros(0, dtype=np.int16)
        self.first_audio_sent_at: float | None = None
        self.assigned_at = time.monotonic()
        self.joined_at: float | None = None
        self.error: BaseException | None = None
        self.ended = asyncio.Event()
        self._url = url
        self._token = token
        self._synth = synthesizer
        self._room = rtc.Room()
        # A short native queue: the speaker loop feeds it without pause, so its length is
        # the output latency.
        self._source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=OUTPUT_QUEUE_MS)
        self.output_underruns = 0
        self._last_capture = 0.0
        self._utterances: asyncio.Queue[tuple[Pcm, asyncio.Future[None]]] = asyncio.Queue()
        self._state = AgentState.INITIALIZING
        self._played: list[Pcm] = []
        self._received: list[Pcm] = []
        self._endpointer = Endpointer(
            threshold_rms=options.speech_threshold_rms,
            min_speech_s=options.min_speech_s,
            end_silence_s=options.end_of_turn_silence_s,
        )
        self._user_turns: asyncio.Queue[float] = asyncio.Queue()
        self._subscribed = asyncio.Event()
        self._stop = asyncio.Event()
        self._waiters: list[tuple[Callable[[ReceivedMessage], bool], asyncio.Future[Any]]] = []
        self._tasks = TaskSet(on_error=self._task_failed)
        self._run_task: asyncio.Task[None] | None = None
        self._room.on("data_received", self._on_data_received)
        self._room.on("track_subscribed", self._on_track_subscribed)
        self._room.on("local_track_subscribed", self._on_local_track_subscribed)
        self._room.on("participant_disconnected", self._on_participant_disconnected)
        self._room.on("participant_connected", self._on_participant_connected)
        self._grace: asyncio.TimerHandle | None = None
        self._room.on("disconnected", self._on_disconnected)

    # -- public API ---------------------------------------------------------------------------

    @property
    def room(self) -> rtc.Room:
        """The agent's rtc.Room."""
        return self._room

    @property
    def state(self) -> AgentState:
        """The current `lk.agent.state`."""
        return self._state

    @property
    def played_pcm(self) -> Pcm:
        """Everything the agent played, 48 kHz mono int16."""
        return _concat(self._played)

    @property
    def utterances(self) -> list[Pcm]:
        """Each utterance the agent played, in order, 48 kHz mono int16."""
        return list(self._played)

    def received_pcm(self) -> Pcm:
        """Everything received from the device's microphone so far, 48 kHz mono int16."""
        return _concat(self._received)

    async def start(self) -> None:
        """Join the room and start the conversation task."""
        await self._room.connect(self._url, self._token)
        self.joined_at = time.monotonic()
        logger.info("agent joined room", extra={"room": self.room_name, "job_id": self.job_id})
        self._run_task = asyncio.create_task(self._run(), name=f"agent-session-{self.job_id}")

    def request_stop(self) -> None:
        """Ask the session to end (it leaves the room); returns at once."""
        self._stop.set()

    async def leave(self) -> None:
        """End the call: the agent disconnects from the room; returns when the session ended."""
        self._stop.set()
        if self._run_task is None:
            await self._shutdown()
            return
        await self.ended.wait()

    async def aclose(self) -> None:
        """Leave, and await every task the session owns."""
        await self.leave()
        await join_tasks(self._run_task)

    async def wait_for_message(
        self,
        predicate: Callable[[ReceivedMessage], bool],
        timeout: float,  # noqa: ASYNC109 (test API: the brief's signature)
    ) -> ReceivedMessage:
        """Return the first received message (past or future) matching `predicate`."""
        for message in self.messages:
            if predicate(message):
                return message
        fut: asyncio.Future[ReceivedMessage] = asyncio.get_running_loop().create_future()
        waiter = (predicate, fut)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._waiters.remove(waiter)

    # -- conversation ------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            async with asyncio.timeout(self.options.max_session_s):
                conversation = asyncio.create_task(
                    self._converse(), name=f"agent-conversation-{self.job_id}"
                )
                stop = asyncio.create_task(self._stop.wait(), name=f"agent-stop-{self.job_id}")
                try:
                    await asyncio.wait({conversation, stop}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (conversation, stop):
                        task.cancel()
                    await asyncio.gather(conversation, stop, return_exceptions=True)
                failure = None if conversation.cancelled() else conversation.exception()
                if failure is not None:
                    raise failure
        except TimeoutError:
            logger.info("agent session hit its time cap", extra={"job_id": self.job_id})
        except Exception as exc:
            self.error = exc
            logger.exception("agent session failed", extra={"job_id": self.job_id})
        finally:
            await self._shutdown()

    async def _converse(self) -> None:
        await self._set_state(AgentState.INITIALIZING)
        track = rtc.LocalAudioTrack.create_audio_track("agent-voice", self._source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        publication = await self._room.local_participant.publish_track(track, options)
        self._spawn(self._speaker_loop(), f"agent-speaker-{self.job_id}")
        # Speak only once someone listens, or the greeting goes to nobody.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.options.subscriber_wait_s):
                await self._subscribed.wait()
        # Let the listener's jitter buffer settle on silence: while it adapts to a new
        # stream it time-stretches, which would smear the first words.
        await asyncio.sleep(self.options.lead_in_s)
        await self._say(self.options.greeting, publication.sid, greeting=True)
        await self._set_state(AgentState.LISTENING)
        while True:
            speech_s = await self._user_turns.get()
            self.turns.append(speech_s)
            await self._set_state(AgentState.THINKING)
            await asyncio.sleep(self.options.thinking_s)
            await self._say(self.options.answer(speech_s), publication.sid)
            limit = self.options.end_after_turns
            if limit is not None and len(self.turns) >= limit:
                await self._say(self.options.goodbye, publication.sid)
                return
            self._endpointer.reset()
            await self._set_state(AgentState.LISTENING)

    async def _say(self, text: str, track_sid: str, *, greeting: bool = False) -> None:
        pcm = await self._synth.synthesize(text)
        await self._set_state(AgentState.SPEAKING)
        await self._send_transcript(text, track_sid)
        if greeting:
            self.greeting_pcm = pcm
        self._played.append(pcm)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._utterances.put_nowait((pcm, done))
        await done

    async def _speaker_loop(self) -> None:
        """Feed the track without pause: queued speech, else silence, in 10 ms frames."""
        silence = np.zeros(FRAME_SAMPLES, np.int16)
        while True:
            if self._utterances.empty():
                await self._capture(silence)
                continue
            pcm, done = self._utterances.get_nowait()
            try:
                for start in range(0, pcm.size, FRAME_SAMPLES):
                    chunk = pcm[start : start + FRAME_SAMPLES]
                    if chunk.size < FRAME_SAMPLES:
                        chunk = np.concatenate([chunk, silence[chunk.size :]])
                    await self._capture(chunk)
                    if self.first_audio_sent_at is None:
                        self.first_audio_sent_at = time.monotonic()
                # What is still queued natively plays out while silence follows it.
                delay = self._source.queued_duration
                asyncio.get_running_loop().call_later(delay, _resolve, done)
            except BaseException:
                if not done.done():
                    done.cancel()
                raise

    async def _capture(self, chunk: Pcm) -> None:
        frame = rtc.AudioFrame(chunk.tobytes(), SAMPLE_RATE, 1, FRAME_SAMPLES)
        now = time.monotonic()
        if self._last_capture and now - self._last_capture > OUTPUT_QUEUE_MS / 1000:
            self.output_underruns += 1
        await self._source.capture_frame(frame)
        self._last_capture = time.monotonic()

    async def _send_transcript(self, text: str, track_sid: str) -> None:
        attributes = {
            "lk.transcription_final": "true",
            "lk.segment_id": f"SG_{secrets.token_hex(6)}",
            "lk.transcribed_track_id": track_sid,
        }
        try:
            await self._room.local_participant.send_text(
                text, topic=TRANSCRIPTION_TOPIC, attributes=attributes
            )
        except rtc.StreamError as exc:
            logger.warning("could not send transcript", extra={"error": str(exc)})
        logger.debug("agent said", extra={"text": text, "job_id": self.job_id})

    async def _set_state(self, state: AgentState) -> None:
        self._state = state
        self.states.append(state)
        if not self._room.isconnected():
            return
        await self._room.local_participant.set_attributes({AGENT_STATE_ATTRIBUTE: state.value})

    async def _read_microphone(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream.from_track(track=track, sample_rate=SAMPLE_RATE, num_channels=1)
        try:
            async for event in stream:
                pcm = np.frombuffer(event.frame.data, dtype=np.int16).copy()
                self._received.append(pcm)
                if self._state is not AgentState.LISTENING:
                    continue
                speech_s = self._endpointer.push(pcm)
                if speech_s is not None:
                    self._user_turns.put_nowait(speech_s)
        finally:
            await stream.aclose()

    async def _shutdown(self) -> None:
        extra = {"room": self.room_name, "job_id": self.job_id}
        if self.ended.is_set():
            return
        try:
            await self._tasks.aclose()
            try:
                await self._room.disconnect()
            except Exception:
                logger.exception("agent could not disconnect cleanly", extra=extra)
            await self._source.aclose()
        finally:
            for _predicate, fut in self._waiters:
                if not fut.done():
                    fut.cancel()
            logger.info("agent session ended", extra=extra)
            self.ended.set()

    # -- room events (called on the loop by rtc.Room) ------------------------------------------

    def _on_data_received(self, packet: rtc.DataPacket) -> None:
        try:
            payload: Any = json.loads(packet.data)
        except ValueError:
            payload = None
        message = ReceivedMessage(
            topic=packet.topic or "",
            sender=packet.participant.identity if packet.participant else None,
            payload=payload,
            data=bytes(packet.data),
            received_at=time.monotonic(),
        )
        self.messages.append(message)
        for predicate, fut in self._waiters:
            if not fut.done() and predicate(message):
                fut.set_result(message)

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if track.kind != rtc.TrackKind.KIND_AUDIO or self._stop.is_set():
            return
        self._spawn(self._read_microphone(track), f"agent-mic-{self.job_id}-{publication.sid}")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        if self._tasks.closed:
            coro.close()  # a track subscribed while the session ends: nobody to read it
            return
        self._tasks.spawn(coro, name)

    def _task_failed(self, task: asyncio.Task[Any], exc: BaseException) -> None:
        logger.error(
            "agent session task failed; ending session",
            exc_info=exc,
            extra={"job_id": self.job_id, "task": task.get_name()},
        )
        self.error = exc
        self._stop.set()

    def _on_local_track_subscribed(self, track: rtc.Track) -> None:
        self._subscribed.set()

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if self._room.remote_participants:
            return
        reason = participant.disconnect_reason
        if reason in LEFT_ON_PURPOSE:
            logger.info("last caller left; ending session", extra={"job_id": self.job_id})
            self._stop.set()
            return
        logger.info(
            "last caller lost; waiting for a rejoin",
            extra={
                "job_id": self.job_id,
                "reason": "unknown" if reason is None else rtc.DisconnectReason.Name(reason),
                "grace_s": REJOIN_GRACE_S,
            },
        )
        self._cancel_grace()
        self._grace = asyncio.get_running_loop().call_later(REJOIN_GRACE_S, self._grace_over)

    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        self._cancel_grace()

    def _grace_over(self) -> None:
        self._grace = None
        if not self._room.remote_participants:
            logger.info(
                "last caller did not come back; ending session", extra={"job_id": self.job_id}
            )
            self._stop.set()

    def _cancel_grace(self) -> None:
        grace, self._grace = self._grace, None
        if grace is not None:
            grace.cancel()

    def _on_disconnected(self, reason: Any) -> None:
        self._cancel_grace()
        self._stop.set()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _concat(parts: list[Pcm]) -> Pcm:
    if not parts:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate(parts)
