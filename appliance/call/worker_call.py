"""A call as the daemon runs it: audio, speech activity and status here, the room in a worker.

`WorkerCall` is the call object the supervisor's run drives (`connect`, `on_state_change`,
`aclose`). It takes a started worker process from `CallWorkers`, tells it to join, sends
it the microphone's 10 ms frames, plays the agent's frames it sends back, and turns what it
reports into our call events. The worker is ended with the call (docs/call-worker.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from appliance.aio import TaskSet, cancel_and_wait
from appliance.audio.base import Speaker
from appliance.audio.fanout import CaptureFanout
from appliance.call.conversation import Conversation
from appliance.call.events import (
    AgentAudioStarted,
    AgentStateChanged,
    CallEvent,
    Disconnected,
    EndRequested,
    SpeechActivity,
    ToolCall,
    Transcript,
)
from appliance.call.livekit_call import CONNECT_MARGIN_S, LEAVE_STEP_S, STATUS_DRAIN_S
from appliance.call.policy import ActivityMeter
from appliance.call.status import encode_status
from appliance.call.tools import DeviceTools, ToolAnswer
from appliance.call.wire import Message, WireError, parse_event
from appliance.call.workers import CallWorker, CallWorkers
from appliance.clock import Clock
from appliance.errors import CallError, TokenRefusedError
from appliance.provisioning_client import CallGrant
from appliance.state import EndReason, State, StateChange

logger = logging.getLogger(__name__)

# RMS (of int16 samples) above which an agent frame counts as its first audible audio.
AUDIBLE_RMS = 100.0
# How long into a call the next call's worker is started (a shorter call starts it at
# its end).
NEXT_WORKER_AFTER_S = 3.0
# A backstop for a worker that never answers a join: the SDK's own attempts (three retries
# after the first) at `call.connect_timeout_s` each, and the time to publish.
SDK_JOIN_ATTEMPTS = 4
# A backstop for a worker that never confirms it left: its own bounded steps, and a margin.
CLOSE_TIMEOUT_S = STATUS_DRAIN_S + 2 * LEAVE_STEP_S + 2.0


class WorkerCall:
    """Our microphone published to one room, the agent's audio played, call status sent."""

    def __init__(
        self,
        grant: CallGrant,
        *,
        workers: CallWorkers,
        capture: CaptureFanout,
        speaker: Speaker,
        on_event: Callable[[CallEvent], None],
        clock: Clock,
        status_topic: str,
        connect_timeout_s: float,
        control_topic: str = "kiosk.control",
        muted: bool = False,
        conversation: Conversation | None = None,
        tools: DeviceTools | None = None,
    ) -> None:
        self.grant = grant
        self._conversation = conversation or Conversation()
        self._tools = tools
        self._workers = workers
        self._capture = capture
        self._speaker = speaker
        self._on_event = on_event
        self._clock = clock
        self._status_topic = status_topic
        self._connect_timeout_s = connect_timeout_s
        self._control_topic = control_topic
        self._muted = muted
        self._device_speech = ActivityMeter()
        self._agent_speech = ActivityMeter()
        self._worker: CallWorker | None = None
        self._unsent_status: list[bytes] = []
        self._status_seq = 0
        self._tasks = TaskSet(on_error=self._task_failed)
        self._microphone: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        self._joined: asyncio.Future[None] = loop.create_future()
        self._left: asyncio.Future[None] = loop.create_future()
        self._heard_agent = False
        self._ringing = False  # a phone's ringback (early media) is not the agent's voice
        self._closing = False

    async def connect(self) -> None:
        """Join the room and publish the microphone; raises CallError if that fails."""
        worker = self._worker = await self._workers.take()
        self._tasks.spawn(self._receive(worker), "call-receive")
        grant = self.grant
        worker.send(
            {
                "type": "connect",
                "url": grant.server_url,
                "token": grant.token,
                "room": grant.room,
                "call_id": grant.call_id,
                "status_topic": self._status_topic,
                "control_topic": self._control_topic,
                "connect_timeout_s": self._connect_timeout_s,
                "muted": self._muted,
                "provider": grant.provider,
            }
        )
        for payload in self._unsent_status:
            worker.send({"type": "status", "payload": payload.decode()})
        self._unsent_status.clear()
        bound_s = SDK_JOIN_ATTEMPTS * self._connect_timeout_s + CONNECT_MARGIN_S
        try:
            async with asyncio.timeout(bound_s):
                await asyncio.shield(self._joined)
        except TimeoutError as exc:
            raise CallError(f"could not join room {grant.room}: the call worker hung") from exc
        # Subscribed only now: no audio is taken for the call before it is connected.
        self._microphone = self._tasks.spawn(self._pump_microphone(worker), "call-microphone")
        self._tasks.spawn(self._prepare_next_worker(), "call-next-worker")

    def play_warning(self) -> None:
        """The call is about to hit its platform's time limit: the kiosk beeps, mixed in."""
        if self._worker is not None:
            self._worker.send({"type": "warn"})
            logger.info("the call's time limit is near: warning played", extra=self._fields())

    def on_state_change(self, change: StateChange) -> None:
        """Observer: queue a call-status message for this change, sent in order."""
        self._ringing = change.state is State.RINGING
        if change.muted is not self._muted:
            self._set_muted(change.muted)
        self._status_seq += 1
        payload = encode_status(change, seq=self._status_seq, ts=self._clock.time())
        if self._worker is None:
            self._unsent_status.append(payload)
        else:
            self._worker.send({"type": "status", "payload": payload.decode()})

    async def aclose(self) -> None:
        """Send what status is queued, unpublish the microphone, leave the room; the
        worker process ends with it."""
        self._closing = True
        self._conversation.set_agent_state(None)
        if self._microphone is not None and not self._microphone.done():
            await cancel_and_wait(self._microphone)  # a failure was reported as it ended
        worker, self._worker = self._worker, None
        if worker is None:
            await self._tasks.aclose()
            return
        try:
            if worker.alive:
                worker.send({"type": "close"})
                try:
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await asyncio.shield(self._left)
                except TimeoutError:
                    logger.warning("the call worker did not leave the room", extra=self._fields())
            await self._tasks.aclose()
        finally:
            await self._workers.release(worker)

    async def _prepare_next_worker(self) -> None:
        # Started a while into the call, not during the join or the greeting, it is ready
        # when the call ends (a press right after a call would otherwise wait for it).
        await self._clock.sleep(NEXT_WORKER_AFTER_S)
        self._workers.prepare()

    def _fields(self) -> dict[str, str]:
        return {"CALL_ID": self.grant.call_id, "ROOM": self.grant.room}

    def _task_failed(self, task: asyncio.Task[Any], exc: BaseException) -> None:
        logger.error("call task %s failed", task.get_name(), exc_info=exc, extra=self._fields())
        # A call whose audio or worker link died is broken: end it, don't limp on.
        self._on_event(EndRequested(EndReason.CONNECTION_LOST))

    async def _receive(self, worker: CallWorker) -> None:
        try:
            while (item := await worker.receive()) is not None:
                if isinstance(item, bytes):
                    await self._play(item)
                else:
                    self._handle(item)
            self._worker_ended(worker)
        finally:
            _settle(self._joined, CallError(f"could not join room {self.grant.room}"))
            _settle(self._left, None)

    def _handle(self, message: Message) -> None:
        kind = message["type"]
        if kind == "event":
            self._dispatch(parse_event(message))
        elif kind == "connected":
            _settle(self._joined, None)
        elif kind == "connect_failed":
            error = TokenRefusedError if message.get("refused") else CallError
            _settle(self._joined, error(str(message.get("detail", ""))))
        elif kind == "closed":
            _settle(self._left, None)
        else:
            raise WireError(f"unknown message {kind!r} from the call worker")

    def _dispatch(self, event: CallEvent) -> None:
        if isinstance(event, Transcript):
            call_id = self.grant.call_id
            self._conversation.transcript(event, call_id=call_id, fields=self._fields())
        elif isinstance(event, AgentStateChanged):
            if not self._closing:
                self._conversation.set_agent_state(event.state)
        elif isinstance(event, ToolCall):
            self._tasks.spawn(self._run_tool(event), "call-tool")
        else:
            self._on_event(event)

    async def _run_tool(self, call: ToolCall) -> None:
        # A relay pulse is answered once closed and its task ends once the relay is open
        # again; it is one of the call's tasks, so the call's end opens the relay at once.
        def reply(answer: ToolAnswer) -> None:
            if self._worker is not None:
                self._worker.send(
                    {
                        "type": "tool_result",
                        "call_id": call.call_id,
                        "ok": answer.ok,
                        "output": answer.output,
                    }
                )
            if answer.ends_call:
                self._on_event(EndRequested(EndReason.AGENT_ENDED))

        if self._tools is None:
            reply(ToolAnswer(False, "this kiosk has no tools"))
        else:
            await self._tools.run(call, self._fields(), reply)

    def _worker_ended(self, worker: CallWorker) -> None:
        if self._closing or not self._joined.done():
            return  # connect() raises for an unanswered join
        logger.error(
            "the call worker exited mid-call (status %s)", worker.returncode, extra=self._fields()
        )
        # As if the SDK had given up: the run rejoins the room with a fresh worker.
        self._on_event(Disconnected(room_closed=False, detail="call worker exited"))

    async def _play(self, frame: bytes) -> None:
        samples = np.frombuffer(frame, dtype=np.int16)
        await self._speaker.write(samples)
        level = _rms(samples)
        if not self._heard_agent and not self._ringing and level > AUDIBLE_RMS:
            self._heard_agent = True
            self._on_event(AgentAudioStarted())
        if self._agent_speech.push(level, self._clock.monotonic()):
            self._on_event(SpeechActivity("agent"))

    async def _pump_microphone(self, worker: CallWorker) -> None:
        subscription = self._capture.subscribe("call", max_frames=10)
        try:
            while True:
                frame = await subscription.read()
                if self._muted:
                    continue  # muted: not a sample leaves the device
                if self._device_speech.push(_rms(frame), self._clock.monotonic()):
                    self._on_event(SpeechActivity("device"))
                worker.send_audio(frame.tobytes())
                await worker.drain()
        finally:
            await subscription.aclose()

    def _set_muted(self, muted: bool) -> None:
        self._muted = muted
        if self._worker is not None:
            self._worker.send({"type": "mute", "muted": muted})
        logger.info("microphone %s", "muted" if muted else "unmuted", extra=self._fields())


def _settle(future: asyncio.Future[None], outcome: BaseException | None) -> None:
    if future.done():
        return
    if outcome is None:
        future.set_result(None)
    else:
        future.set_exception(outcome)
        future.exception()  # retrieved: nobody may be waiting any more


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float32) ** 2))) if samples.size else 0.0
