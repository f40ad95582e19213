"""The supervisor: the one state machine that owns the device's behaviour."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from appliance.aio import cancel_and_wait, join_tasks
from appliance.backoff import Backoff
from appliance.call.events import (
    AgentAudioStarted,
    AgentJoined,
    AgentLeft,
    CallEvent,
    Disconnected,
    EndRequested,
    SpeechActivity,
)
from appliance.call.policy import CallDeadlines
from appliance.clock import Clock
from appliance.errors import (
    AudioDeviceError,
    BackendError,
    CallError,
    CredentialsRejectedError,
    RateLimitedError,
)
from appliance.provisioning_client import CallGrant, DeviceInfo
from appliance.settings import CallSettings
from appliance.state import CallTimeline, EndReason, State, StateChange

logger = logging.getLogger(__name__)

# How long a failed call shows CALL_FAILED before the device is READY again.
CALL_FAILED_HOLD_S = 2.0
# Bound on telling the backend how a call ended; the device never waits longer.
END_REPORT_TIMEOUT_S = 3.0


class Backend(Protocol):
    """What the supervisor needs from the provisioning client."""

    async def check_in(self) -> DeviceInfo: ...

    async def create_call(self, trigger: str) -> CallGrant: ...

    async def end_call(self, call_id: str, reason: str, duration_ms: int) -> None: ...


class Call(Protocol):
    """What the supervisor needs from a call."""

    async def connect(self) -> None: ...

    def on_state_change(self, change: StateChange) -> None: ...

    async def aclose(self) -> None: ...


CallFactory = Callable[[CallGrant, Callable[[CallEvent], None]], Call]
Observer = Callable[[StateChange], None]


class Supervisor:
    """Turns triggers and call events into state changes; observers only watch."""

    def __init__(
        self,
        *,
        backend: Backend,
        call_factory: CallFactory,
        settings: CallSettings,
        clock: Clock,
        backoff: Backoff | None = None,
    ) -> None:
        self._backend = backend
        self._call_factory = call_factory
        self._settings = settings
        self._clock = clock
        self._backoff = backoff or Backoff(initial_s=1.0, max_s=60.0)
        self._state = State.STARTING
        self._observers: list[Observer] = []
        self._timeline_observers: list[Callable[[CallTimeline], None]] = []
        self._triggers: asyncio.Queue[str | None] = asyncio.Queue()
        self._call_events: asyncio.Queue[CallEvent] = asyncio.Queue()
        self._call_task: asyncio.Task[None] | None = None
        self._recovery_task: asyncio.Task[None] | None = None
        self._call_id: str | None = None
        self._room: str | None = None
        self._audio_fault: AudioDeviceError | None = None
        self._backend_fault: BackendError | None = None
        self._muted = False
        self._quiet_until = 0.0  # the cool-down after a call
        self._redial: str | None = None

    @property
    def state(self) -> State:
        """The current state."""
        return self._state

    def add_observer(self, observer: Observer) -> None:
        """Call `observer` on every state change, on the event loop."""
        self._observers.append(observer)

    def remove_observer(self, observer: Observer) -> None:
        """Stop calling `observer`."""
        with contextlib.suppress(ValueError):
            self._observers.remove(observer)

    def add_timeline_observer(self, observer: Callable[[CallTimeline], None]) -> None:
        """Call `observer` with each finished call's timeline."""
        self._timeline_observers.append(observer)

    def audio_fault(self, exc: AudioDeviceError) -> None:
        """The audio devices failed: end any call and show AUDIO_FAULT until they recover."""
        self._audio_fault = exc
        if self._call_task is not None:
            self._call_events.put_nowait(EndRequested(EndReason.AUDIO_FAULT))
        elif self._state is not State.STOPPING:
            logger.error("audio: %s", exc, extra=self._log_fields(State.AUDIO_FAULT))
            self._set_state(State.AUDIO_FAULT, reason=type(exc).__name__)

    def audio_recovered(self) -> None:
        """The audio devices work again: leave AUDIO_FAULT."""
        self._audio_fault = None
        if self._state is State.AUDIO_FAULT:
            self._set_state(self._idle_state())

    def _idle_state(self) -> State:
        """What an idle device shows: an audio fault first, then a backend fault, else READY."""
        if self._audio_fault is not None:
            return State.AUDIO_FAULT
        if self._backend_fault is not None:
            return _fault_state_for(self._backend_fault)
        return State.READY

    def trigger(self, source: str) -> None:
        """A button press, wake word or command; call on the event loop thread."""
        self._triggers.put_nowait(source)

    def cancel(self, source: str) -> None:
        """A long press: end the call or attempt, drop a queued redial; never starts a call."""
        self._redial = None
        if self._state in (State.CONNECTING, State.IN_CALL):
            logger.info("cancel %s: ending the call", source, extra=self._log_fields())
            self._call_events.put_nowait(EndRequested(EndReason.CANCELLED))

    @property
    def muted(self) -> bool:
        """Whether the microphone is muted."""
        return self._muted

    def set_muted(self, muted: bool) -> None:
        """Mute or unmute the microphone; observers (the call, the wake word) are told."""
        if muted is not self._muted:
            self._muted = muted
            self._set_state(self._state, reason="muted" if muted else "unmuted")

    def stop(self) -> None:
        """Ask `run` to end the call politely and return."""
        self._triggers.put_nowait(None)

    async def run(self) -> None:
        """Check in, then serve triggers until `stop`."""
        self._start_recovery()
        try:
            while (source := await self._triggers.get()) is not None:
                self._on_trigger(source)
        finally:
            await self._shutdown()

    def _on_trigger(self, source: str) -> None:
        extra = self._log_fields()
        if self._state.accepts_calls and self._call_task is None:
            if self._clock.monotonic() < self._quiet_until:
                logger.info("trigger %s ignored during the cool-down", source, extra=extra)
                return
            self._start_call(source)
        elif self._state in (State.CONNECTING, State.IN_CALL):
            logger.info("trigger %s: ending the call", source, extra=extra)
            self._call_events.put_nowait(EndRequested(EndReason.USER))
        elif self._state is State.ENDING and self._settings.trigger_while_ending == "redial":
            logger.info("trigger %s: calling again once this call has ended", source, extra=extra)
            self._redial = source
        else:
            logger.info("trigger %s ignored in state %s", source, self._state.value, extra=extra)

    def _start_call(self, source: str) -> None:
        logger.info("trigger %s: starting a call", source, extra=self._log_fields())
        # CONNECTING at once, so a second trigger before the task runs ends this call.
        self._drain_call_events()
        self._set_state(State.CONNECTING)
        self._call_task = asyncio.create_task(self._run_call(source), name="supervisor-call")

    async def _shutdown(self) -> None:
        self._redial = None
        if self._call_task is not None:
            self._call_events.put_nowait(EndRequested(EndReason.SHUTDOWN))
            await join_tasks(self._call_task)
        await self._cancel_recovery()
        self._set_state(State.STOPPING)

    # -- calls ---------------------------------------------------------------------------------

    async def _run_call(self, source: str) -> None:
        timeline = CallTimeline(trigger=source)
        t0 = self._clock.monotonic()

        def mark(stage: str) -> None:
            timeline.stages_ms[stage] = (self._clock.monotonic() - t0) * 1000

        mark("trigger")
        try:
            try:
                grant = await self._backend.create_call(source)
            except BackendError as exc:
                self._enter_fault(exc)
                return
            await self._cancel_recovery()
            self._backoff.reset()
            self._backend_fault = None
            mark("token")
            self._call_id, self._room = grant.call_id, grant.room
            timeline.call_id = grant.call_id
            reason = await self._connected_call(grant, timeline, mark)
            timeline.end_reason = reason
            mark("ended")
            await self._report_end(grant.call_id, reason, timeline)
            if reason in (EndReason.CONNECT_FAILED, EndReason.AGENT_TIMEOUT):
                self._set_state(State.CALL_FAILED, reason=reason.value)
                await self._clock.sleep(CALL_FAILED_HOLD_S)
            self._call_id = self._room = None
            self._quiet_until = self._clock.monotonic() + self._settings.cooldown_s
            self._set_state(self._idle_state())
        except Exception:
            # A bug or an error nobody translated: never leave the device stuck mid-call.
            logger.exception("call failed unexpectedly", extra=self._log_fields())
            self._call_id = self._room = None
            self._set_state(State.CALL_FAILED, reason="internal_error")
            await self._clock.sleep(CALL_FAILED_HOLD_S)
            self._set_state(self._idle_state())
        finally:
            self._call_task = None
        redial, self._redial = self._redial, None
        if redial is not None and self._state.accepts_calls:
            self._start_call(redial)

    async def _connected_call(
        self, grant: CallGrant, timeline: CallTimeline, mark: Callable[[str], None]
    ) -> EndReason:
        if (pending := self._pending_end()) is not None:
            return pending
        call = self._call_factory(grant, self._call_events.put_nowait)
        # Observing before connecting: a mute pressed while connecting reaches the call.
        self.add_observer(call.on_state_change)
        try:
            try:
                await call.connect()
            except CallError as exc:
                logger.error("call could not connect: %s", exc, extra=self._log_fields())
                return EndReason.CONNECT_FAILED
            mark("connected")
            reason = EndReason.SHUTDOWN
            try:
                reason = await self._wait_for_end(mark)
            finally:
                self._set_state(State.ENDING, reason=reason.value)
                await call.aclose()
            return reason
        finally:
            self.remove_observer(call.on_state_change)

    async def _wait_for_end(self, mark: Callable[[str], None]) -> EndReason:
        deadlines = CallDeadlines(self._settings, self._clock.monotonic())
        while True:
            deadline, expiry = deadlines.next()
            event = await self._next_call_event(deadline - self._clock.monotonic())
            match event:
                case None:
                    return expiry
                case EndRequested(reason=reason):
                    return reason
                case AgentJoined() if not deadlines.agent_joined:
                    mark("agent_joined")
                    deadlines.joined(self._clock.monotonic())
                    self._set_state(State.IN_CALL)
                case SpeechActivity():
                    deadlines.speech(self._clock.monotonic())
                case AgentAudioStarted():
                    mark("first_agent_audio")
                case AgentLeft():
                    return EndReason.AGENT_LEFT
                case Disconnected(room_closed=closed, detail=detail):
                    logger.info("room disconnected: %s", detail, extra=self._log_fields())
                    return EndReason.ROOM_CLOSED if closed else EndReason.CONNECTION_LOST

    async def _next_call_event(self, timeout_s: float) -> CallEvent | None:
        if not self._call_events.empty():
            return self._call_events.get_nowait()
        if timeout_s <= 0:
            return None
        getter = asyncio.ensure_future(self._call_events.get())
        sleeper = asyncio.ensure_future(self._clock.sleep(timeout_s))
        try:
            await asyncio.wait({getter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(getter, sleeper)  # a getter that got an event keeps it
        return getter.result() if getter.done() and not getter.cancelled() else None

    def _pending_end(self) -> EndReason | None:
        while not self._call_events.empty():
            event = self._call_events.get_nowait()
            if isinstance(event, EndRequested):
                return event.reason
        return None

    def _drain_call_events(self) -> None:
        while not self._call_events.empty():
            self._call_events.get_nowait()

    async def _report_end(self, call_id: str, reason: EndReason, timeline: CallTimeline) -> None:
        stages = timeline.stages_ms
        connected = "connected" in stages
        duration_ms = int(stages["ended"] - stages["connected"]) if connected else 0
        try:
            async with asyncio.timeout(END_REPORT_TIMEOUT_S):
                await self._backend.end_call(call_id, reason.value, max(0, duration_ms))
        except (BackendError, TimeoutError) as exc:
            logger.warning("could not report the call's end: %s", exc, extra=self._log_fields())
        logger.info(
            "call ended (%s)\n%s", reason.value, timeline.format(), extra=self._log_fields()
        )
        for observer in self._timeline_observers:
            observer(timeline)

    # -- faults and recovery -------------------------------------------------------------------

    def _enter_fault(self, exc: BackendError) -> None:
        self._show_fault(exc)
        self._start_recovery(exc)

    def _show_fault(self, exc: BackendError) -> None:
        self._backend_fault = exc
        state = self._idle_state()  # an audio fault, if there is one, stays on show
        if state is not self._state:
            logger.error("backend: %s", exc, extra=self._log_fields(state))
            self._set_state(state, reason=type(exc).__name__)

    def _start_recovery(self, cause: BackendError | None = None) -> None:
        if self._recovery_task is None or self._recovery_task.done():
            self._recovery_task = asyncio.create_task(
                self._recover(cause), name="supervisor-recovery"
            )

    async def _cancel_recovery(self) -> None:
        task, self._recovery_task = self._recovery_task, None
        if task is not None and task is not asyncio.current_task():
            await cancel_and_wait(task)

    async def _recover(self, cause: BackendError | None) -> None:
        """Check in until the backend accepts us, backing off; then the device is READY."""
        while True:
            if cause is not None:
                floor = 0.0
                if isinstance(cause, RateLimitedError) and cause.retry_after_s is not None:
                    floor = cause.retry_after_s
                delay = self._backoff.next_delay(floor)
                logger.info("checking in again in %.1f s", delay, extra=self._log_fields())
                await self._clock.sleep(delay)
            try:
                info = await self._backend.check_in()
            except BackendError as exc:
                cause = exc
                self._backend_fault = exc
                if self._state.accepts_calls or self._state in (State.STARTING, State.AUDIO_FAULT):
                    self._show_fault(exc)
                continue
            self._backoff.reset()
            self._backend_fault = None
            if self._state.is_fault or self._state is State.STARTING:
                logger.info(
                    "checked in with the backend (agent %s)",
                    info.agent_name,
                    extra=self._log_fields(),
                )
                self._set_state(self._idle_state())
            return

    # -- state ---------------------------------------------------------------------------------

    def _set_state(self, state: State, *, reason: str | None = None) -> None:
        if state is self._state and reason is None:
            return
        change = StateChange(self._state, state, self._call_id, self._room, reason, self._muted)
        self._state = state
        logger.info(
            "state %s -> %s%s",
            change.previous.value,
            state.value,
            f" ({reason})" if reason else "",
            extra=self._log_fields(),
        )
        for observer in list(self._observers):
            try:
                observer(change)
            except Exception:
                logger.exception("state observer failed", extra=self._log_fields())

    def _log_fields(self, state: State | None = None) -> dict[str, str]:
        fields = {"STATE": (state or self._state).value}
        if self._call_id:
            fields["CALL_ID"] = self._call_id
        if self._room:
            fields["ROOM"] = self._room
        return fields


def _fault_state_for(exc: BackendError) -> State:
    if isinstance(exc, CredentialsRejectedError):
        return State.CREDENTIALS_REJECTED
    if isinstance(exc, RateLimitedError):
        return State.RATE_LIMITED
    return State.BACKEND_UNREACHABLE
