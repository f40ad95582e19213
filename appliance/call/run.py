"""One call, from the press to its end: the token, the join, the conversation and its rejoins.

The supervisor owns the states; a `CallRun` drives one call through them:

1. A token: the held grant if there is one (no round trip to the backend), else a fresh
   one from `POST /v1/calls`.
2. The join. LiveKit refusing the token (expired, not yet valid, bad signature) gets one
   fresh token and one more try within the same press; a second refusal is
   `token_refused` and the device shows TOKEN_REJECTED.
3. A call that rings people first (the grant's `ring`) shows RINGING until a party joins:
   nobody within the ring's time ends it `no_answer`, or the agent the backend then
   dispatches has its usual join time.
4. The conversation, until an end. A lost connection is not the end: while the SDK
   resumes, or once it has given up and the device rejoins the same room with a fresh
   token from the backend, the device shows REJOINING; the call must be back (agent
   included) within `call.rejoin_window_s`, else it ends `connection_lost`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Protocol

from appliance.aio import TaskSet, cancel_and_wait
from appliance.backoff import Backoff
from appliance.call.conventions import rings
from appliance.call.events import (
    AgentAudioStarted,
    CallEvent,
    Disconnected,
    EndRequested,
    FarEndAnswered,
    PartyJoined,
    PartyLeft,
    PlatformEnded,
    Reconnected,
    Reconnecting,
    SpeechActivity,
)
from appliance.call.policy import CallDeadlines
from appliance.call.ringing import PHONE
from appliance.clock import Clock
from appliance.errors import (
    BackendError,
    BackendRefusedError,
    CallError,
    CredentialsRejectedError,
    TokenRefusedError,
)
from appliance.keeper import Backend, BackendKeeper
from appliance.provisioning_client import CallGrant
from appliance.settings import CallSettings
from appliance.state import CallTimeline, EndReason, State, StateChange
from appliance.vocabulary import LAST_PARTY_LEFT, OnNoAnswer

logger = logging.getLogger(__name__)

# How often a call in progress tells its records it is alive (for a crash's duration).
ALIVE_EVERY_S = 10.0
# After the SDK got the connection back without the agent, how long the agent has to come
# back by itself before the backend is asked to dispatch it again.
AGENT_RETURN_GRACE_S = 1.5
# How long a phone the platform dials (Click2Call) may ring before the call ends no_answer;
# the bridge normally gives up first and its SIP participant leaves.
PHONE_RING_S = 60.0
# A platform's own cap on a call, from its document: HMS VoiceDock ends a web call at 5
# minutes (004 l. 154, 172-173). The device ends it there itself (max_duration) and beeps
# LIMIT_WARNING_S before.
PLATFORM_MAX_CALL_S = {"hmsvoicedock": 300.0}
LIMIT_WARNING_S = 30.0
# How often the device tries to tell the backend that the call was joined or answered.
PROGRESS_ATTEMPTS = 3
# How long the SDK may try to resume before the device rejoins with a fresh token itself.
SDK_RESUME_GRACE_S = 10.0


class Call(Protocol):
    """What a run needs from a call."""

    async def connect(self) -> None: ...

    def on_state_change(self, change: StateChange) -> None: ...

    def play_warning(self) -> None:
        """The call is about to hit a platform's time limit: the kiosk beeps."""
        ...

    async def aclose(self) -> None: ...


class CallRecords(Protocol):
    """Where the device keeps its calls' records until the backend has them (the outbox)."""

    def started(self, call_id: str, trigger: str, *, held: bool) -> None:
        """The call is connected; a call begun with a held grant is reported to the backend."""
        ...

    def alive(self) -> None:
        """The call is still going (so a crash can tell how long it lasted)."""
        ...

    def ended(
        self, call_id: str, reason: EndReason, duration_ms: int, detail: str | None = None
    ) -> None:
        """The call ended: its end report (with the platform's reason, if any) is queued
        durably."""
        ...

    def backend_back(self) -> None:
        """The backend answers again after a fault: deliver what is waiting now."""
        ...


CallFactory = Callable[[CallGrant, Callable[[CallEvent], None]], Call]


class CallHost(Protocol):
    """What the supervisor lends a run."""

    @property
    def settings(self) -> CallSettings: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def backend(self) -> Backend: ...

    @property
    def keeper(self) -> BackendKeeper: ...

    @property
    def records(self) -> CallRecords: ...

    @property
    def call_events(self) -> asyncio.Queue[CallEvent]: ...

    def new_call(self, grant: CallGrant) -> Call: ...

    def show(self, state: State, reason: str | None = None) -> None: ...

    def add_observer(self, observer: Callable[[StateChange], None]) -> None: ...

    def remove_observer(self, observer: Callable[[StateChange], None]) -> None: ...

    def token_refused(self, exc: TokenRefusedError) -> None: ...

    def call_connected(self) -> None: ...

    def backend_fault(self, exc: BackendError) -> None: ...


class CallRun:
    """Drives one call; `run()` returns why it ended, or None if it never started."""

    def __init__(self, host: CallHost, source: str, timeline: CallTimeline) -> None:
        self._host = host
        self._source = source
        self._timeline = timeline
        self._clock = host.clock
        self._t0 = self._clock.monotonic()
        self._call: Call | None = None
        self._helpers = TaskSet()
        self._ensure_task: asyncio.Task[None] | None = None
        # The call id the backend has a record of, whose end must be reported.
        self.recorded_call_id: str | None = None
        # The platform's own reason for a `platform_ended`, kept on the call's record.
        self.end_detail: str | None = None

    def _mark(self, stage: str) -> None:
        self._timeline.stages_ms[stage] = (self._clock.monotonic() - self._t0) * 1000

    async def run(self) -> EndReason | None:
        """The whole call; the supervisor reports the end and sets the idle state."""
        self._mark("trigger")
        grant = self._host.keeper.take_grant()
        held = grant is not None
        if grant is None:
            grant = await self._fetch()
            if grant is None:
                return None
        self._mark("token")
        self._timeline.call_id = grant.call_id
        if (pending := self._pending_end()) is not None:
            self._mark("ended")
            return pending
        joined = await self._join(grant, held)
        if isinstance(joined, EndReason):
            self._mark("ended")
            return joined
        grant, held = joined
        self._mark("connected")
        self._host.call_connected()
        self._host.records.started(grant.call_id, self._source, held=held)
        self.recorded_call_id = grant.call_id
        reason = EndReason.SHUTDOWN
        try:
            reason = await self._converse(grant)
        finally:
            self._host.show(State.ENDING, reason.value)
            await self._helpers.aclose()
            await self._close_call()
        self._mark("ended")
        return reason

    async def _fetch(self) -> CallGrant | None:
        """A fresh token (and a call record) from the backend; None (fault shown) if not."""
        try:
            grant = await self._host.backend.create_call(self._source)
        except BackendError as exc:
            self._host.backend_fault(exc)
            return None
        self._host.keeper.succeeded()
        self.recorded_call_id = grant.call_id
        return grant

    async def _join(self, grant: CallGrant, held: bool) -> tuple[CallGrant, bool] | EndReason:
        """Connect; a refused token gets one fresh token and one more try."""
        for attempt in (1, 2):
            call = self._open(grant)
            try:
                await call.connect()
                return grant, held
            except TokenRefusedError as exc:
                await self._close_call()
                offset = self._host.backend.clock_offset_s
                logger.warning(
                    "LiveKit refused the %s token (clock offset to the backend %s): %s",
                    "held" if held else "fresh",
                    "unknown" if offset is None else f"{offset:+.1f} s",
                    exc,
                    extra={"CALL_ID": grant.call_id},
                )
                if self.recorded_call_id is not None:
                    self._host.records.ended(self.recorded_call_id, EndReason.TOKEN_REFUSED, 0)
                    self.recorded_call_id = None
                if attempt == 2:
                    self._host.token_refused(exc)
                    return EndReason.TOKEN_REFUSED
                fresh = await self._fetch()
                if fresh is None:
                    return EndReason.CONNECT_FAILED
                grant, held = fresh, False
                self._timeline.call_id = grant.call_id
            except CallError as exc:
                await self._close_call()
                logger.error("call could not connect: %s", exc, extra={"CALL_ID": grant.call_id})
                return EndReason.CONNECT_FAILED
        raise AssertionError("unreachable")

    def _open(self, grant: CallGrant) -> Call:
        call = self._host.new_call(grant)
        # Observing before connecting: a mute pressed while connecting reaches the call.
        self._host.add_observer(call.on_state_change)
        self._call = call
        return call

    async def _close_call(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            try:
                await call.aclose()
            finally:
                self._host.remove_observer(call.on_state_change)

    async def _converse(self, grant: CallGrant) -> EndReason:
        clock = self._clock
        settings = self._host.settings
        limit_s = PLATFORM_MAX_CALL_S.get(grant.provider)
        if limit_s is not None and limit_s < settings.max_duration_s:
            settings = dataclasses.replace(settings, max_duration_s=limit_s)
        deadlines = CallDeadlines(settings, clock.monotonic())
        # Before anyone answers: the far end is being rung, or the agent is on its way.
        waiting = State.CONNECTING
        if grant.ring is not None:
            deadlines.ring(grant.ring.timeout_s, grant.ring.on_no_answer, clock.monotonic())
            waiting = State.RINGING
            logger.info(
                "ringing people first (%.0f s, then %s)",
                grant.ring.timeout_s,
                grant.ring.on_no_answer.value,
                extra={"CALL_ID": grant.call_id},
            )
            self._host.show(State.RINGING)
        # A phone behind the platform rings until its SIP participant says `active`.
        phone_ringing = rings(grant.provider)
        if phone_ringing:
            deadlines.ring(PHONE_RING_S, OnNoAnswer.END, clock.monotonic())
            waiting = State.RINGING
            self._host.show(State.RINGING, PHONE)
            # Joined and publishing: now the backend may have the bridge dial (003 l. 62-67).
            self._report_progress(grant, "joined")
        alive_at = clock.monotonic() + ALIVE_EVERY_S
        take_over_at: float | None = None  # the SDK is resuming; past this we rejoin ourselves
        while True:
            deadline, expiry = deadlines.next()
            wake_at = min(deadline, alive_at, take_over_at or deadline)
            event = await self._next_event(wake_at - clock.monotonic())
            now = clock.monotonic()
            if event is None:
                if now >= alive_at:
                    self._host.records.alive()
                    alive_at = now + ALIVE_EVERY_S
                    continue
                if take_over_at is not None and now >= take_over_at and now < deadline:
                    take_over_at = None
                    logger.warning(
                        "the SDK has not resumed: rejoining", extra={"CALL_ID": grant.call_id}
                    )
                    rejoined = await self._rejoin(grant, deadlines)
                    if isinstance(rejoined, EndReason):
                        return rejoined
                    self._rejoined(deadlines, waiting, phone_ringing)
                    self._start_ensuring(grant)
                    continue
                return expiry
            match event:
                case EndRequested(reason=reason):
                    return reason
                case PlatformEnded(reason=detail):
                    logger.info(
                        "the platform ended the call: %s", detail, extra={"CALL_ID": grant.call_id}
                    )
                    self.end_detail = detail
                    return EndReason.PLATFORM_ENDED
                case PartyJoined() if phone_ringing:
                    pass  # the phone's leg is in the room; it rings until answered
                case FarEndAnswered() if phone_ringing:
                    phone_ringing = False
                    logger.info("the phone answered", extra={"CALL_ID": grant.call_id})
                    self._mark("agent_joined")
                    deadlines.joined(now)
                    self._host.show(State.IN_CALL, "answered")
                    self._report_progress(grant, "answered")
                case PartyLeft(remaining=0) if phone_ringing:
                    return EndReason.NO_ANSWER
                case PartyJoined():
                    await self._stop_ensuring()
                    if not deadlines.agent_joined:
                        self._mark("agent_joined")
                        deadlines.joined(now)
                        self._host.show(State.IN_CALL)
                        if limit_s is not None:
                            self._warn_at(settings.max_duration_s - LIMIT_WARNING_S)
                    elif deadlines.interrupted:
                        deadlines.restored(now)
                        self._host.show(State.IN_CALL, "rejoined")
                case SpeechActivity():
                    deadlines.speech(now)
                case AgentAudioStarted():
                    self._mark("first_agent_audio")
                case PartyLeft(kind=kind, remaining=0):
                    # The last remote party left: the call is over, named after who it was.
                    if not deadlines.interrupted:
                        return LAST_PARTY_LEFT[kind]
                case PartyLeft():
                    pass  # another party is still there (an agent's hand-over to a person)
                case Reconnecting():
                    deadlines.interrupt(now)
                    take_over_at = now + SDK_RESUME_GRACE_S
                    self._host.show(State.REJOINING, "reconnecting")
                case Reconnected(party_present=present):
                    take_over_at = None
                    if present or not deadlines.agent_joined:
                        deadlines.restored(now)
                        self._host.show(State.IN_CALL if present else waiting)
                    else:
                        # The room was lost and made again: the agent may not come back.
                        self._start_ensuring(grant)
                case Disconnected(room_closed=True, detail=detail):
                    logger.info("room closed: %s", detail, extra={"CALL_ID": grant.call_id})
                    return EndReason.ROOM_CLOSED
                case Disconnected(detail=detail):
                    logger.warning(
                        "connection lost for good (%s): rejoining",
                        detail,
                        extra={"CALL_ID": grant.call_id},
                    )
                    deadlines.interrupt(now)
                    take_over_at = None
                    self._host.show(State.REJOINING, "connection_lost")
                    rejoined = await self._rejoin(grant, deadlines)
                    if isinstance(rejoined, EndReason):
                        return rejoined
                    self._rejoined(deadlines, waiting, phone_ringing)
                    self._start_ensuring(grant)

    async def _rejoin(self, grant: CallGrant, deadlines: CallDeadlines) -> Call | EndReason:
        """A fresh token for the same room and a new join, until the window runs out.

        The backend's rejoin also dispatches the agent again when the room has none.
        """
        await self._stop_ensuring()
        await self._close_call()
        backoff = Backoff(initial_s=0.5, max_s=4.0)
        while True:
            left = deadlines.next()[0] - self._clock.monotonic()
            if (pending := self._pending_end()) is not None:
                return pending
            if left <= 0:
                return deadlines.next()[1]
            try:
                async with asyncio.timeout(left):
                    fresh = await self._host.backend.rejoin_call(grant.call_id, self._source)
                call = self._open(fresh)
                # Not cancelled from here: a connect cancelled mid-handshake makes the SDK's
                # native side panic 15 s later, and it answers a panic with SIGTERM. The
                # SDK bounds the join itself (call.connect_timeout_s).
                await call.connect()
                logger.info("rejoined the call's room", extra={"CALL_ID": grant.call_id})
                return call
            except TimeoutError:
                continue
            except BackendRefusedError as exc:
                # The backend has closed the call (409 call_ended): there is nothing to rejoin.
                logger.warning("rejoin refused: %s", exc, extra={"CALL_ID": grant.call_id})
                return EndReason.ROOM_CLOSED
            except CredentialsRejectedError as exc:
                self._host.backend_fault(exc)
                return EndReason.ROOM_CLOSED
            except (BackendError, CallError) as exc:
                await self._close_call()
                delay = min(backoff.next_delay(), max(0.0, left))
                logger.info(
                    "rejoin failed (%s); again in %.1f s",
                    exc,
                    delay,
                    extra={"CALL_ID": grant.call_id},
                )
                await self._clock.sleep(delay)

    def _warn_at(self, delay_s: float) -> None:
        self._helpers.spawn(self._warn_later(delay_s), "call-limit-warning")

    async def _warn_later(self, delay_s: float) -> None:
        await self._clock.sleep(max(0.0, delay_s))
        if self._call is not None:
            self._call.play_warning()

    def _report_progress(self, grant: CallGrant, event: str) -> None:
        self._helpers.spawn(self._send_progress(grant, event), f"call-progress-{event}")

    async def _send_progress(self, grant: CallGrant, event: str) -> None:
        """Tell the backend, a few times if it is slow; the call goes on either way."""
        backoff = Backoff(initial_s=0.5, max_s=2.0)
        for attempt in range(1, PROGRESS_ATTEMPTS + 1):
            try:
                await self._host.backend.report_progress(grant.call_id, event)
                return
            except BackendRefusedError as exc:
                logger.warning("call progress %s refused: %s", event, exc)
                return
            except BackendError as exc:
                if attempt == PROGRESS_ATTEMPTS:
                    logger.warning("call progress %s not delivered: %s", event, exc)
                    return
                await self._clock.sleep(backoff.next_delay())

    def _rejoined(self, deadlines: CallDeadlines, waiting: State, phone: bool) -> None:
        """Back in the room by our own rejoin. Still ringing (nobody has answered yet): the
        ring's own deadline goes on, and the device shows it again (a phone's ringing as a
        phone's, whose own ringback is heard); else the party has its usual time to be
        heard from."""
        now = self._clock.monotonic()
        if waiting is State.RINGING and not deadlines.agent_joined:
            deadlines.restored(now)
            self._host.show(State.RINGING, PHONE if phone else "rejoined")
        else:
            deadlines.rejoined(now)

    def _start_ensuring(self, grant: CallGrant) -> None:
        if grant.provider != "livekit":
            # A platform brings its own agent into the room of each session; asking the
            # backend again would open another session upstream (Call2Me's reissue).
            return
        if self._ensure_task is None or self._ensure_task.done():
            self._ensure_task = self._helpers.spawn(self._ensure_agent(grant), "call-ensure-agent")

    async def _stop_ensuring(self) -> None:
        task, self._ensure_task = self._ensure_task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _ensure_agent(self, grant: CallGrant) -> None:
        """Give the agent a moment to come back; then ask the backend to dispatch it again
        (its rejoin endpoint does, when no agent is in the room), retrying."""
        await self._clock.sleep(AGENT_RETURN_GRACE_S)
        backoff = Backoff(initial_s=0.5, max_s=4.0)
        while True:
            try:
                await self._host.backend.rejoin_call(grant.call_id, self._source)
                return
            except BackendRefusedError:
                self._host.call_events.put_nowait(EndRequested(EndReason.ROOM_CLOSED))
                return
            except BackendError as exc:
                logger.info("could not ask for the agent again: %s", exc)
                await self._clock.sleep(backoff.next_delay())

    async def _next_event(self, timeout_s: float) -> CallEvent | None:
        events = self._host.call_events
        if not events.empty():
            return events.get_nowait()
        if timeout_s <= 0:
            return None
        getter = asyncio.ensure_future(events.get())
        sleeper = asyncio.ensure_future(self._clock.sleep(timeout_s))
        try:
            await asyncio.wait({getter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(getter, sleeper)  # a getter that got an event keeps it
        return getter.result() if getter.done() and not getter.cancelled() else None

    def _pending_end(self) -> EndReason | None:
        events = self._host.call_events
        while not events.empty():
            event = events.get_nowait()
            if isinstance(event, EndRequested):
                return event.reason
        return None
