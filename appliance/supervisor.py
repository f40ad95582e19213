"""The supervisor: the one state machine that owns the device's behaviour."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from appliance.aio import join_tasks
from appliance.backoff import Backoff
from appliance.call.events import CallEvent, EndRequested
from appliance.call.run import Call, CallFactory, CallRecords, CallRun
from appliance.clock import Clock
from appliance.errors import (
    AudioDeviceError,
    AwaitingApprovalError,
    BackendError,
    CredentialsRejectedError,
    RateLimitedError,
    ServiceMisconfiguredError,
    ServiceOutOfCreditError,
    ServiceUnavailableError,
    TokenRefusedError,
)
from appliance.keeper import Backend, BackendKeeper
from appliance.provisioning_client import CallGrant, StatusReport
from appliance.service.codes import code_for_state
from appliance.settings import CallSettings
from appliance.state import CallTimeline, EndReason, State, StateChange

logger = logging.getLogger(__name__)

# How long a failed call shows CALL_FAILED before the device is READY again.
CALL_FAILED_HOLD_S = 2.0


Observer = Callable[[StateChange], None]


class Supervisor:
    """Turns triggers, call events and the backend's answers into state changes.

    Observers (LEDs, journal, systemd, the call's status messages) only watch.
    """

    def __init__(
        self,
        *,
        backend: Backend,
        call_factory: CallFactory,
        settings: CallSettings,
        clock: Clock,
        records: CallRecords,
        backoff: Backoff | None = None,
        heartbeat_s: float = 60.0,
        hold_grant: bool = True,
        firmware: str | None = None,
        board: str | None = None,
        on_settings: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        self._backend = backend
        self._call_factory = call_factory
        self._settings = settings
        self._clock = clock
        self._records = records
        self._state = State.STARTING
        self._observers: list[Observer] = []
        self._timeline_observers: list[Callable[[CallTimeline], None]] = []
        self._triggers: asyncio.Queue[str | None] = asyncio.Queue()
        self._call_events: asyncio.Queue[CallEvent] = asyncio.Queue()
        self._call_task: asyncio.Task[None] | None = None
        self._call_id: str | None = None
        self._room: str | None = None
        self._audio_fault: AudioDeviceError | None = None
        self._token_fault: TokenRefusedError | None = None
        self._muted = False
        self._quiet_until = 0.0  # the cool-down after a call
        self._redial: str | None = None
        self._call_generation = 0
        self._firmware = firmware
        self._board = board
        self._last_error: str | None = None  # the code of the last fault state shown
        self._keeper = BackendKeeper(
            backend,
            clock=clock,
            backoff=backoff or Backoff(initial_s=1.0, max_s=60.0),
            heartbeat_s=heartbeat_s,
            hold_grant=hold_grant,
            is_idle=lambda: self._call_task is None and self._state is not State.STOPPING,
            on_fault=self._on_backend_fault,
            on_healthy=self._on_backend_healthy,
            report=self._status_report,
            on_settings=on_settings,
        )

    @property
    def state(self) -> State:
        """The current state."""
        return self._state

    @property
    def keeper(self) -> BackendKeeper:
        """The backend connection: heartbeat, held grant, fault and recovery."""
        return self._keeper

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
        """What an idle device shows: audio fault, backend fault, refused token, else READY."""
        if self._audio_fault is not None:
            return State.AUDIO_FAULT
        if self._keeper.fault is not None:
            return _fault_state_for(self._keeper.fault)
        if self._token_fault is not None:
            return State.TOKEN_REJECTED
        return State.READY

    def trigger(self, source: str) -> None:
        """A button press, wake word or command; call on the event loop thread."""
        self._triggers.put_nowait(source)

    def cancel(self, source: str) -> None:
        """A long press: end the call or attempt, drop a queued redial; never starts a call."""
        self._redial = None
        if self._state.in_call_attempt:
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
        """Check in (then keep in touch), and serve triggers until `stop`."""
        self._keeper.start()
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
        elif self._state.in_call_attempt:
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
        await self._keeper.aclose()
        self._set_state(State.STOPPING)

    # -- calls ---------------------------------------------------------------------------------

    async def _run_call(self, source: str) -> None:
        timeline = CallTimeline(trigger=source)
        run = CallRun(self, source, timeline)
        try:
            reason = await run.run()
            if reason is not None:
                timeline.end_reason = reason
                self._finish(run, reason, timeline)
                if reason is EndReason.ROOM_CLOSED:
                    # Often a revocation: ask before showing READY, so it shows at once.
                    await self._keeper.check_in_now()
                if reason in (EndReason.CONNECT_FAILED, EndReason.AGENT_TIMEOUT):
                    self._set_state(State.CALL_FAILED, reason=reason.value)
                    await self._clock.sleep(CALL_FAILED_HOLD_S)
            self._call_id = self._room = None
            self._quiet_until = self._clock.monotonic() + self._settings.cooldown_s
            self._set_state(self._idle_state())
        except Exception:
            # A bug or an error nobody translated: never leave the device stuck mid-call.
            logger.exception("call failed unexpectedly", extra=self._log_fields())
            if run.recorded_call_id is not None:
                self._records.ended(run.recorded_call_id, EndReason.CONNECTION_LOST, 0)
            self._call_id = self._room = None
            self._set_state(State.CALL_FAILED, reason="internal_error")
            await self._clock.sleep(CALL_FAILED_HOLD_S)
            self._set_state(self._idle_state())
        finally:
            self._call_task = None
            # Straight after a call: is the device still welcome (revoked?), and a new grant.
            self._keeper.wake()
        redial, self._redial = self._redial, None
        if redial is not None and self._state.accepts_calls:
            self._start_call(redial)

    def _finish(self, run: CallRun, reason: EndReason, timeline: CallTimeline) -> None:
        """Queue the end report (durably) for a call the backend has, and log the timeline."""
        stages = timeline.stages_ms
        connected = "connected" in stages
        duration_ms = int(stages["ended"] - stages["connected"]) if connected else 0
        if run.recorded_call_id is not None:
            self._records.ended(
                run.recorded_call_id, reason, max(0, duration_ms), detail=run.end_detail
            )
        logger.info(
            "call ended (%s)\n%s", reason.value, timeline.format(), extra=self._log_fields()
        )
        for observer in self._timeline_observers:
            observer(timeline)

    # -- what CallRun may use ------------------------------------------------------------------

    @property
    def settings(self) -> CallSettings:
        """The call policy."""
        return self._settings

    def set_call_settings(self, settings: CallSettings) -> None:
        """A new call policy (from the fleet): for the next call; one in progress keeps
        the deadlines it started with."""
        self._settings = settings

    def _status_report(self) -> StatusReport:
        """What the next check-in tells the backend about this device."""
        return StatusReport(
            firmware=self._firmware,
            board=self._board,
            state=self._state.value,
            last_error=self._last_error,
        )

    @property
    def clock(self) -> Clock:
        """The injected clock."""
        return self._clock

    @property
    def backend(self) -> Backend:
        """The provisioning client."""
        return self._backend

    @property
    def records(self) -> CallRecords:
        """The durable call records."""
        return self._records

    @property
    def call_events(self) -> asyncio.Queue[CallEvent]:
        """Events of the current call, and end requests from the device."""
        return self._call_events

    def new_call(self, grant: CallGrant) -> Call:
        """A call object for `grant` whose events reach the queue only while it is current."""
        self._call_generation += 1
        generation = self._call_generation

        def on_event(event: CallEvent) -> None:
            # A call that was replaced (a rejoin) can still report its last words: drop them.
            if generation == self._call_generation:
                self._call_events.put_nowait(event)

        self._call_id, self._room = grant.call_id, grant.room
        return self._call_factory(grant, on_event)

    def show(self, state: State, reason: str | None = None) -> None:
        """Set a call state (CONNECTING, IN_CALL, REJOINING, ENDING)."""
        self._set_state(state, reason=reason)

    def token_refused(self, exc: TokenRefusedError) -> None:
        """LiveKit refused a fresh token too: show TOKEN_REJECTED until a call connects."""
        self._token_fault = exc
        offset = self._backend.clock_offset_s
        fields = self._log_fields(State.TOKEN_REJECTED)
        fields["ERROR_CODE"] = "token_rejected"
        if offset is not None:
            fields["CLOCK_OFFSET_S"] = f"{offset:.1f}"
        logger.error(
            "LiveKit refused the call token twice: check the clock (offset to the backend %s)"
            " and the backend's LiveKit keys",
            "unknown" if offset is None else f"{offset:+.1f} s",
            extra=fields,
        )

    def call_connected(self) -> None:
        """A call connected: a refused-token fault is over."""
        self._token_fault = None

    def backend_fault(self, exc: BackendError) -> None:
        """Fetching a token failed: show it; the keeper backs off and checks in again."""
        self._keeper.report(exc)

    # -- faults --------------------------------------------------------------------------------

    def _on_backend_fault(self, exc: BackendError) -> None:
        state = self._idle_state()  # an audio fault, if there is one, stays on show
        if (
            self._call_task is None
            and self._state is not State.STOPPING
            and state is not self._state
        ):
            if state is State.AWAITING_APPROVAL:
                logger.warning(
                    "awaiting approval: an admin must approve this device on the backend",
                    extra=self._log_fields(state),
                )
            else:
                logger.error("backend: %s", exc, extra=self._log_fields(state))
            self._set_state(state, reason=type(exc).__name__)

    def _on_backend_healthy(self) -> None:
        self._records.backend_back()
        waiting = (State.STARTING, State.AWAITING_APPROVAL)
        if self._call_task is None and (self._state.is_fault or self._state in waiting):
            logger.info("checked in with the backend", extra=self._log_fields())
            self._set_state(self._idle_state())

    # -- state ---------------------------------------------------------------------------------

    def _set_state(self, state: State, *, reason: str | None = None) -> None:
        if state is self._state and reason is None:
            return
        change = StateChange(self._state, state, self._call_id, self._room, reason, self._muted)
        self._state = state
        code = code_for_state(state)
        if code is not None:
            self._last_error = code.value
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
        shown = state or self._state
        fields = {"STATE": shown.value}
        code = code_for_state(shown)
        if code is not None:
            fields["ERROR_CODE"] = code.value  # docs/errors.md
        if self._call_id:
            fields["CALL_ID"] = self._call_id
        if self._room:
            fields["ROOM"] = self._room
        return fields

    def _drain_call_events(self) -> None:
        while not self._call_events.empty():
            self._call_events.get_nowait()


def _fault_state_for(exc: BackendError) -> State:
    # The platform's faults first: its refusal of the fleet's key is not this device's.
    if isinstance(exc, ServiceMisconfiguredError):
        return State.SERVICE_MISCONFIGURED
    if isinstance(exc, ServiceOutOfCreditError):
        return State.SERVICE_OUT_OF_CREDIT
    if isinstance(exc, ServiceUnavailableError):
        return State.SERVICE_UNAVAILABLE
    if isinstance(exc, AwaitingApprovalError):
        return State.AWAITING_APPROVAL
    if isinstance(exc, CredentialsRejectedError):
        return State.CREDENTIALS_REJECTED
    if isinstance(exc, RateLimitedError):
        return State.RATE_LIMITED
    return State.BACKEND_UNREACHABLE


__all__ = ["Call", "CallFactory", "CallRecords", "Supervisor"]
