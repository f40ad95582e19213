"""The call sweeper: closes the calls whose devices never reported their end.

A device reports each call's end itself, from an outbox that survives restarts, and that
report wins: it knows why (`user`, `idle`, ...). The sweeper is for the device that never
reports (destroyed, or its report lost): every `period_s` it reads the open calls, asks
LiveKit which of their rooms still exist, and closes each call that the call ledger (fed by
LiveKit's webhooks) and that list show is over for good: `settle` decides, from facts only,
so that webhooks late, twice, out of order or missing lead to the same records.

Each pass also resolves the rings past their deadline (`ringing.py`) that no timer of this
process is handling: a backend that restarted mid-ring lost its timers.

Several backends on one PostgreSQL may sweep at once: a call is closed by one conditional
update (`end_call` only ends an open call), and only the backend whose update closed it
announces the end.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from appliance.aio import AsyncResource, cancel_and_wait
from appliance.vocabulary import EndReason
from provisioning.errors import LiveKitUnavailableError, ProvisioningError
from provisioning.models import IDENTITY_PREFIX, CallRecord
from provisioning.rooms import RoomService
from provisioning.storage.base import Storage
from provisioning.storage.call_ledger import CallLedger, ParticipantKind, Presence, RoomFacts

logger = logging.getLogger(__name__)

# How often the sweeper looks. With the grace below, a call whose device left without a
# report is closed 60-75 s after it left, well within the target (token TTL + 1 min).
SWEEP_PERIOD_S = 15.0
# How long a device that is out of its room may still come back or report: its rejoin
# window (30 s by default) and a fresh token, or its end report on the way.
SETTLE_GRACE_S = 60.0
MAX_DURATION_MS = 7 * 24 * 3600 * 1000

# LiveKit's disconnect reasons that mean the room ended under the participant.
_ROOM_ENDED = frozenset(
    {"PARTICIPANT_REMOVED", "ROOM_DELETED", "ROOM_CLOSED", "SERVER_SHUTDOWN", "USER_REJECTED"}
)

CallEnded = Callable[[CallRecord], Awaitable[None]]
Clock = Callable[[], float]


@dataclass(frozen=True)
class Settlement:
    """How a call ended, as the backend infers it: when, why, and how long it lasted."""

    ended_at: float
    reason: EndReason
    duration_ms: int


def settle(
    call: CallRecord,
    facts: RoomFacts,
    now: float,
    *,
    listed: bool | None,
    grace_s: float = SETTLE_GRACE_S,
) -> Settlement | None:
    """How `call` ended, if the facts show it is over and its device can no longer come back
    or report in time; None while it may still be live.

    `listed` is whether LiveKit's room list has the call's room now (None: not known).
    """
    identity = IDENTITY_PREFIX + call.device_id
    mine = [p for p in facts.participants if p.identity == identity]
    if not mine:
        return _settle_unjoined(call, facts, now, listed=listed, grace_s=grace_s)
    joins = [p.joined_at for p in mine if p.joined_at is not None]
    started = min(joins) if joins else call.created_at
    still_in = [p for p in mine if p.left_at is None]
    if still_in:
        # Its leave is unknown: in the room, unless the room has ended since it joined.
        if listed:
            return None
        latest = max((p.joined_at for p in still_in if p.joined_at is not None), default=None)
        end = _room_end(facts, after=latest, listed=listed)
        if end is None:
            return None
        reason = EndReason.ROOM_CLOSED
    else:
        last = max(mine, key=_left_at)
        end = _left_at(last)
        reason = _reason_of_leave(last, facts.participants)
    if now < end + grace_s:
        return None
    ended_at = min(max(end, call.created_at), now)
    return Settlement(ended_at, reason, _ms(ended_at - started))


def _settle_unjoined(
    call: CallRecord, facts: RoomFacts, now: float, *, listed: bool | None, grace_s: float
) -> Settlement | None:
    """A call with no join of its device on record."""
    if listed:
        return None  # someone is in its room: the device, whose webhooks were lost
    if facts.seen_at is None and facts.finished_at is None:
        # No room was ever seen: once its token has expired nobody can join it any more.
        if listed is None or now < call.token_expires_at:
            return None
        ended_at = min(max(call.token_expires_at, call.created_at), now)
        return Settlement(ended_at, EndReason.CONNECT_FAILED, 0)
    # The room existed, so the device was in it, but none of its webhooks arrived.
    end = _room_end(facts, after=None, listed=listed)
    if end is None or now < end + grace_s:
        return None
    last_known = max(t for t in (facts.finished_at, facts.seen_at) if t is not None)
    ended_at = min(max(last_known, call.created_at), now)
    return Settlement(ended_at, EndReason.ROOM_CLOSED, _ms(ended_at - call.created_at))


def _room_end(facts: RoomFacts, *, after: float | None, listed: bool | None) -> float | None:
    """When the room is known to have ended after `after`: LiveKit's `room_finished`, or
    else the first sweep whose list did not have it; None if it is not known to have."""
    if facts.finished_at is not None and (after is None or facts.finished_at >= after):
        return facts.finished_at
    if listed is False and facts.gone_at is not None:
        return facts.gone_at if after is None else max(facts.gone_at, after)
    return None


def _reason_of_leave(last: Presence, everyone: tuple[Presence, ...]) -> EndReason:
    """The end reason of a device's last leave, from LiveKit's disconnect reason."""
    if last.disconnect_reason == "CLIENT_INITIATED":
        left_at = _left_at(last)
        agents = [p for p in everyone if p.kind is ParticipantKind.AGENT]
        agent_there = any(
            (a.joined_at is None or a.joined_at <= left_at)
            and (a.left_at is None or a.left_at >= left_at)
            for a in agents
        )
        if agents and not agent_there:
            return EndReason.AGENT_LEFT  # the agent left first; the device hung up after
        return EndReason.DEVICE_LEFT
    if last.disconnect_reason in _ROOM_ENDED:
        return EndReason.ROOM_CLOSED
    return EndReason.CONNECTION_LOST


def _left_at(presence: Presence) -> float:
    return -math.inf if presence.left_at is None else presence.left_at


def _ms(seconds: float) -> int:
    return min(max(0, round(seconds * 1000)), MAX_DURATION_MS)


class Sweeper(AsyncResource):
    """Runs `sweep` every `period_s` in a task named `call-sweeper`, from `start` until
    `aclose` (which cancels and awaits it). `call_ended` announces each call it closed."""

    def __init__(
        self,
        storage: Storage,
        ledger: CallLedger,
        rooms: RoomService,
        *,
        call_ended: CallEnded,
        clock: Clock,
        period_s: float = SWEEP_PERIOD_S,
        grace_s: float = SETTLE_GRACE_S,
        rings_due: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._storage = storage
        self._rings_due = rings_due
        self._ledger = ledger
        self._rooms = rooms
        self._call_ended = call_ended
        self._clock = clock
        self._period_s = period_s
        self._grace_s = grace_s
        self._task: asyncio.Task[None] | None = None
        self._livekit_ok = True

    async def start(self) -> None:
        """Start sweeping: the first sweep at once, then every `period_s`."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="call-sweeper")

    async def aclose(self) -> None:
        """Stop sweeping; a sweep under way is cancelled (what it closed stays closed)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def sweep(self) -> list[CallRecord]:
        """One pass: close every open call that is over; returns the calls this pass closed."""
        if self._rings_due is not None:
            try:
                await self._rings_due()
            except ProvisioningError as exc:  # the rings' table failing: the calls still go
                logger.warning("rings not resolved: %s", exc.message)
        now = self._clock()
        calls = await self._ledger.open_calls(now)
        if not calls:
            return []
        rooms = sorted({call.room for call in calls})
        listed = await self._listed(rooms)
        if listed is not None:
            await self._ledger.record_listing(listed, set(rooms) - listed, now)
        facts = await self._ledger.room_facts(rooms)
        closed: list[CallRecord] = []
        for call in calls:
            settlement = settle(
                call,
                facts[call.room],
                now,
                listed=None if listed is None else call.room in listed,
                grace_s=self._grace_s,
            )
            if settlement is not None and (ended := await self._close(call, settlement)):
                closed.append(ended)
        return closed

    async def _listed(self, rooms: list[str]) -> set[str] | None:
        """The rooms LiveKit has now, or None when its API does not answer."""
        try:
            listed = await self._rooms.list_rooms(rooms)
        except LiveKitUnavailableError as exc:
            # Said once per outage: the sweeper goes on with what webhooks reported.
            level = logging.WARNING if self._livekit_ok else logging.DEBUG
            logger.log(level, "LiveKit's room list unavailable: %s", exc.message)
            self._livekit_ok = False
            return None
        self._livekit_ok = True
        return listed

    async def _close(self, call: CallRecord, settlement: Settlement) -> CallRecord | None:
        """End `call` unless someone else just did; announce it if this did."""
        changed = await self._storage.end_call(
            call.call_id, settlement.ended_at, settlement.reason.value, settlement.duration_ms
        )
        if not changed:
            return None  # its device's report, or another backend, was first
        ended = await self._storage.get_call(call.call_id)
        if ended is None:
            return None
        logger.info(
            "call closed without its device's report",
            extra={
                "call_id": call.call_id,
                "device_id": call.device_id,
                "end_reason": settlement.reason.value,
                "duration_ms": settlement.duration_ms,
            },
        )
        await self._call_ended(ended)
        return ended

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except ProvisioningError as exc:  # the database, down or slow: next time
                logger.warning("call sweep failed: %s", exc.message)
            except Exception:
                logger.exception("call sweep failed")
            await asyncio.sleep(self._period_s)
