"""Ringing people first: a call whose device's settings say `ring_operators` is answered by a
person, and only if nobody answers in time by the agent (or by nobody: `no_answer`).

- **The grant.** Its token dispatches no agent, and it carries the ring (`timeout_s`,
  `on_no_answer`) so the device shows `ringing` and knows how long. The ring is recorded
  with the grant (`call_rings`, state `held`): what the token said is what the backend does,
  even if the setting changes before the press.
- **The ring starts** when the call does: `POST /v1/calls`, a held grant's start report, or
  LiveKit's `participant_joined` for the device, whichever comes first. The fleet's webhook
  receiver gets `call.ringing` (the signed outbox, docs/webhooks.md) with a join link.
- **The join link** is the operator page with a ticket in its fragment: the call id and an
  expiry, signed with a key derived from the LiveKit API secret. Opening it, the page posts
  the ticket to `POST /v1/operator/join`, which mints an operator token for that call's room
  there and then (and refuses once the call is over). The token itself never travels in a
  webhook: webhooks are forwarded to chats and mailboxes, and a ticket is worth nothing
  after its call.
- **An answer** is an operator (identity `operator-…`) joining the room, from LiveKit's
  `participant_joined`: the timer stops, and `call.answered` tells the other operators.
- **Nobody answers** by the deadline: one backend claims the ring (a conditional update)
  and dispatches the agent, or marks it `no_answer`. The device ends such a call itself at
  the same moment and reports `no_answer`; if its report has not come `NO_ANSWER_GRACE_S`
  later, the backend closes the record with that reason and deletes the room.
- **Timers.** One task per ringing call, named `ring-<call id>`, cancelled when the ring is
  answered, resolved or the call ends, and all cancelled and awaited on close. A backend
  that restarts mid-ring has lost its timers: the sweeper's pass (every 15 s) resolves every
  ring past its deadline (`resolve_due`), so a ring is resolved at most one pass late.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

from appliance.aio import TaskSet
from appliance.vocabulary import EndReason, OnNoAnswer
from provisioning.errors import (
    CallEndedError,
    LiveKitUnavailableError,
    ProvisioningError,
    RingLinkError,
)
from provisioning.events import EventKind, FleetEvent, FleetEvents
from provisioning.logs import AUDIT_LOGGER
from provisioning.models import CallRecord
from provisioning.rooms import RoomService
from provisioning.storage.base import Database, Storage
from provisioning.storage.units import SyncSession
from provisioning.tokens import OPERATOR_PAGE_PATH, OperatorGrant, is_operator, mint_operator_grant

logger = logging.getLogger(__name__)
audit = logging.getLogger(AUDIT_LOGGER)

SETTING = "ring_operators"
DEFAULT_TIMEOUT_S = 30.0
# The device ends an unanswered call itself and reports it; the backend closes the record
# only if that report is this late (the device's outbox may be waiting for the network).
NO_ANSWER_GRACE_S = 15.0
# A dispatch LiveKit refused (down, slow) is tried again this much later.
DISPATCH_RETRY_S = 5.0
# A join link stays good this long after the ring's deadline: an operator arriving late may
# still join a call the agent took, until the call ends.
TICKET_GRACE_S = 300.0
# Held rings of grants never used are forgotten this long after they were minted.
HELD_RETENTION_S = 2 * 3600.0
JOIN_PATH = "/v1/operator/join"

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
CloseCall = Callable[[str, EndReason, float], Awaitable[CallRecord | None]]


class RingState(StrEnum):
    """Where a ring is: minted, ringing, answered, handed to the agent, unanswered, over."""

    HELD = "held"
    RINGING = "ringing"
    ANSWERED = "answered"
    AGENT = "agent"
    NO_ANSWER = "no_answer"
    ENDED = "ended"


@dataclass(frozen=True)
class RingPlan:
    """How a call rings: for `timeout_s`, then the agent or the end."""

    timeout_s: float
    on_no_answer: OnNoAnswer

    def as_grant(self) -> dict[str, Any]:
        """What the device's grant carries (docs/api.md)."""
        return {"timeout_s": self.timeout_s, "on_no_answer": self.on_no_answer.value}


def ring_plan_of(settings: Mapping[str, Any]) -> RingPlan | None:
    """The ring of a device's merged settings (checked when stored), None if it has none."""
    table = settings.get(SETTING)
    if not isinstance(table, Mapping) or table.get("enabled", True) is False:
        return None
    timeout = table.get("timeout_s", DEFAULT_TIMEOUT_S)
    return RingPlan(float(timeout), OnNoAnswer(table.get("on_no_answer", OnNoAnswer.AGENT)))


@dataclass(frozen=True)
class Ring:
    """One call's ring as stored."""

    call_id: str
    device_id: str
    room: str
    agent_name: str
    timeout_s: float
    on_no_answer: OnNoAnswer
    state: RingState
    created_at: float
    started_at: float | None = None
    deadline: float | None = None
    answered_by: str | None = None
    resolved_at: float | None = None


_COLUMNS = (
    "call_id, device_id, room, agent_name, timeout_s, on_no_answer, state, created_at,"
    " started_at, deadline, answered_by, resolved_at"
)


def _ring(row: tuple[Any, ...]) -> Ring:
    call_id, device_id, room, agent_name, timeout_s, on_no_answer, state, *times = row
    created_at, started_at, deadline, answered_by, resolved_at = times
    return Ring(
        call_id, device_id, room, agent_name, float(timeout_s), OnNoAnswer(on_no_answer),
        RingState(state), created_at, started_at, deadline, answered_by, resolved_at,
    )  # fmt: skip


class RingStore:
    """The rings in `call_rings` (schema version 8); every change is one conditional update,
    so backends sharing a database never both act on one ring."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, ring: Ring, *, forget_held_before: float) -> None:
        """Record a ring minted with a grant; held rings of old unused grants go."""

        def unit(s: SyncSession) -> None:
            s.execute(
                "DELETE FROM call_rings WHERE state = 'held' AND created_at < ?",
                (forget_held_before,),
            )
            s.execute(
                f"INSERT INTO call_rings ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ring.call_id,
                    ring.device_id,
                    ring.room,
                    ring.agent_name,
                    ring.timeout_s,
                    ring.on_no_answer.value,
                    ring.state.value,
                    ring.created_at,
                    ring.started_at,
                    ring.deadline,
                    ring.answered_by,
                    ring.resolved_at,
                ),
            )

        await self._db.run(unit)

    async def get(self, call_id: str) -> Ring | None:
        """The ring of `call_id`, if its grant rang."""
        row = await self._db.run(
            lambda s: s.fetchone(f"SELECT {_COLUMNS} FROM call_rings WHERE call_id = ?", (call_id,))
        )
        return None if row is None else _ring(tuple(row))

    async def move(
        self,
        call_id: str,
        frm: tuple[RingState, ...],
        to: RingState,
        *,
        now: float,
        deadline: float | None = None,
        answered_by: str | None = None,
        due_by: float | None = None,
    ) -> bool:
        """Move the ring from one of `frm` to `to`; False if it was not in one of them (or,
        with `due_by`, not yet due by then). `deadline` replaces the ring's when given."""
        marks = ", ".join("?" * len(frm))
        sql = (
            "UPDATE call_rings SET state = ?,"
            " started_at = CASE WHEN started_at IS NULL AND ? = 'ringing' THEN ? ELSE started_at"
            " END,"
            " deadline = COALESCE(?, deadline),"
            " answered_by = COALESCE(?, answered_by),"
            " resolved_at = CASE WHEN ? IN ('agent', 'no_answer', 'answered') THEN ?"
            " ELSE resolved_at END"
            f" WHERE call_id = ? AND state IN ({marks})"
        )
        params: list[Any] = [to.value, to.value, now, deadline, answered_by, to.value, now]
        params += [call_id, *(state.value for state in frm)]
        if due_by is not None:
            sql += " AND deadline <= ?"
            params.append(due_by)
        changed = await self._db.run(lambda s: s.execute(sql, params))
        return changed == 1

    async def due(self, now: float) -> list[Ring]:
        """Rings whose timer has run out by `now`: ringing past the deadline, unanswered
        past the grace for the device's own report."""
        rows = await self._db.run(
            lambda s: s.fetchall(
                f"SELECT {_COLUMNS} FROM call_rings"
                " WHERE state IN ('ringing', 'no_answer') AND deadline <= ?"
                " ORDER BY deadline, call_id",
                (now,),
            )
        )
        return [_ring(tuple(row)) for row in rows]


def ring_store_of(storage: Storage) -> RingStore:
    """The rings in the same database as `storage` (an `SqlStorage`)."""
    db: Database | None = getattr(storage, "db", None)
    if db is None:
        raise TypeError(f"{type(storage).__name__} has no database for the rings")
    return RingStore(db)


class Ringing:
    """Rings operators for the calls that ask for it, and resolves rings nobody answered.

    `close_call(call_id, reason, at)` ends a call's record (if open) and announces it.
    """

    def __init__(
        self,
        store: RingStore,
        rooms: RoomService,
        events: FleetEvents,
        *,
        livekit_url: str,
        api_key: str,
        api_secret: str,
        public_url: str,
        public_url_guessed: bool = False,
        close_call: CloseCall,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._store = store
        self._rooms = rooms
        self._events = events
        self._livekit_url = livekit_url
        self._api_key = api_key
        self._api_secret = api_secret
        self._public_url = public_url.rstrip("/")
        # Said once, at the first ring: links to http://host:port rarely reach anyone.
        self._warn_url = public_url_guessed
        self._close_call = close_call
        self._clock = clock
        self._sleep = sleep
        # A key of its own for tickets: a ticket can never pass for a LiveKit token.
        self._ticket_key = hmac.new(
            api_secret.encode(), b"kiosk operator ring ticket v1", hashlib.sha256
        ).digest()
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._tasks = TaskSet()

    @property
    def timers(self) -> frozenset[str]:
        """The calls whose timer task is running (tests check that none leak)."""
        return frozenset(call_id for call_id, task in self._timers.items() if not task.done())

    async def aclose(self) -> None:
        """Cancel and await every timer; rings stay in the database for the next backend."""
        self._timers.clear()
        await self._tasks.aclose()

    # -- the call's life ----------------------------------------------------------------------

    async def held(
        self, *, call_id: str, device_id: str, room: str, agent_name: str, plan: RingPlan
    ) -> None:
        """A grant that rings was minted for `call_id`."""
        now = self._clock()
        ring = Ring(
            call_id, device_id, room, agent_name, plan.timeout_s, plan.on_no_answer,
            RingState.HELD, now,
        )  # fmt: skip
        await self._store.add(ring, forget_held_before=now - HELD_RETENTION_S)

    async def get(self, call_id: str) -> Ring | None:
        """The ring of `call_id`, None for a call that does not ring."""
        return await self._store.get(call_id)

    async def start(self, call_id: str, *, name: str, group: str | None) -> Ring | None:
        """The call began: ring, once (the first of its start signals), and tell the
        operators. Returns the ring if this started it."""
        now = self._clock()
        ring = await self._store.get(call_id)
        if ring is None or ring.state is not RingState.HELD:
            return None
        deadline = now + ring.timeout_s
        if not await self._store.move(
            call_id, (RingState.HELD,), RingState.RINGING, now=now, deadline=deadline
        ):
            return None  # another signal (or backend) started it
        self._arm(call_id, deadline)
        if self._warn_url:
            self._warn_url = False
            logger.warning(
                "ringing calls' join links point at %s: set [server] public_url to the address"
                " people reach the backend at",
                self._public_url,
            )
        expires = deadline + TICKET_GRACE_S
        audit.info(
            "call ringing",
            extra={"call_id": call_id, "device_id": ring.device_id, "timeout_s": ring.timeout_s},
        )
        await self._events.emit(
            FleetEvent(
                EventKind.CALL_RINGING,
                now,
                {
                    "call_id": call_id,
                    "device_id": ring.device_id,
                    "device_name": name,
                    "group": group,
                    "room": ring.room,
                    "timeout_s": ring.timeout_s,
                    "on_no_answer": ring.on_no_answer.value,
                    "join_url": self.join_url(call_id, expires),
                    "join_url_expires_at": expires,
                },
            )
        )
        return ring

    async def answered(self, call_id: str, identity: str) -> bool:
        """An operator joined the room: the ring is answered, its timer stops. Also just
        after this backend gave it up (`no_answer`): the device counts the ring from its own
        join, and may still be there to take the call; the backstop must not end it."""
        if not is_operator(identity):
            return False
        moved = await self._store.move(
            call_id,
            (RingState.HELD, RingState.RINGING, RingState.NO_ANSWER),
            RingState.ANSWERED,
            now=self._clock(),
            answered_by=identity,
        )
        if moved:
            self._disarm(call_id)
            audit.info("call answered", extra={"call_id": call_id, "identity": identity})
            ring = await self._store.get(call_id)
            device_id = ring.device_id if ring is not None else ""
            await self._events.emit(
                FleetEvent(
                    EventKind.CALL_ANSWERED,
                    self._clock(),
                    {"call_id": call_id, "device_id": device_id, "answered_by": identity},
                )
            )
        return moved

    async def ended(self, call_id: str) -> None:
        """The call's record was closed: its ring is over."""
        self._disarm(call_id)
        await self._store.move(
            call_id,
            (RingState.HELD, RingState.RINGING, RingState.NO_ANSWER),
            RingState.ENDED,
            now=self._clock(),
        )

    def dispatches_agent(self, ring: Ring | None) -> bool:
        """Whether the call's tokens and rejoins may bring the agent: no ring, or a ring
        that fell back to it."""
        return ring is None or ring.state is RingState.AGENT

    # -- timers ---------------------------------------------------------------------------------

    def _arm(self, call_id: str, at: float) -> None:
        self._disarm(call_id)
        self._timers[call_id] = self._tasks.spawn(self._timer(call_id, at), f"ring-{call_id}")

    def _disarm(self, call_id: str) -> None:
        task = self._timers.pop(call_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _timer(self, call_id: str, at: float) -> None:
        try:
            await self._sleep(max(0.0, at - self._clock()))
            self._timers.pop(call_id, None)  # from here on it is the resolution, not a timer
            ring = await self._store.get(call_id)
            if ring is not None:
                await self.resolve(ring)
        except ProvisioningError as exc:
            # The database or LiveKit failing: the sweeper's next pass tries again.
            logger.warning("ring not resolved: %s", exc.message, extra={"call_id": call_id})

    async def resolve_due(self) -> int:
        """Resolve every ring past its deadline (the sweeper's pass: rings whose backend
        restarted, or whose timer failed). Returns how many this resolved."""
        done = 0
        for ring in await self._store.due(self._clock()):
            if ring.call_id not in self.timers and await self.resolve(ring):
                done += 1
        return done

    async def resolve(self, ring: Ring) -> bool:
        """Act on a ring whose deadline has passed; False if it was not due, or another
        backend (or an answer) was first."""
        now = self._clock()
        if ring.state is RingState.RINGING:
            if ring.on_no_answer is OnNoAnswer.AGENT:
                return await self._hand_to_agent(ring, now)
            if not await self._store.move(
                ring.call_id,
                (RingState.RINGING,),
                RingState.NO_ANSWER,
                now=now,
                deadline=now + NO_ANSWER_GRACE_S,
                due_by=now,
            ):
                return False
            audit.info("call unanswered: ending", extra={"call_id": ring.call_id})
            self._arm(ring.call_id, now + NO_ANSWER_GRACE_S)
            return True
        if ring.state is RingState.NO_ANSWER:
            if not await self._store.move(
                ring.call_id, (RingState.NO_ANSWER,), RingState.ENDED, now=now, due_by=now
            ):
                return False
            closed = await self._close_call(ring.call_id, EndReason.NO_ANSWER, now)
            if closed is not None:
                logger.info(
                    "unanswered call closed without its device's report",
                    extra={"call_id": ring.call_id, "device_id": ring.device_id},
                )
                try:
                    await self._rooms.delete_room(ring.room)
                except LiveKitUnavailableError as exc:
                    logger.warning("room not deleted: %s", exc.message, extra={"room": ring.room})
            return True
        return False

    async def _hand_to_agent(self, ring: Ring, now: float) -> bool:
        if not await self._store.move(
            ring.call_id, (RingState.RINGING,), RingState.AGENT, now=now, due_by=now
        ):
            return False
        metadata = json.dumps({"device_id": ring.device_id, "call_id": ring.call_id})
        try:
            await self._rooms.ensure_agent(ring.room, ring.agent_name, metadata)
        except LiveKitUnavailableError as exc:
            # Back to ringing, due again shortly: this timer or the sweeper tries again.
            retry_at = now + DISPATCH_RETRY_S
            await self._store.move(
                ring.call_id, (RingState.AGENT,), RingState.RINGING, now=now, deadline=retry_at
            )
            self._arm(ring.call_id, retry_at)
            logger.warning(
                "unanswered call: agent not dispatched yet: %s",
                exc.message,
                extra={"call_id": ring.call_id},
            )
            return False
        audit.info(
            "call unanswered: agent dispatched",
            extra={"call_id": ring.call_id, "agent_name": ring.agent_name},
        )
        return True

    # -- join links -----------------------------------------------------------------------------

    def join_url(self, call_id: str, expires_at: float) -> str:
        """The operator page with a ticket for `call_id` in its fragment."""
        fragment = urlencode({"ticket": self.ticket(call_id, expires_at)})
        return f"{self._public_url}{OPERATOR_PAGE_PATH}#{fragment}"

    def ticket(self, call_id: str, expires_at: float) -> str:
        """`call_id` and an expiry, signed: what a join link carries."""
        payload = _b64(json.dumps({"c": call_id, "e": int(expires_at)}).encode())
        return f"{payload}.{_b64(self._mac(payload))}"

    def _mac(self, payload: str) -> bytes:
        return hmac.new(self._ticket_key, payload.encode("ascii"), hashlib.sha256).digest()

    def _verify(self, ticket: object) -> str:
        """The call id of a valid, unexpired ticket; `RingLinkError` otherwise."""
        if not isinstance(ticket, str) or ticket.count(".") != 1 or len(ticket) > 400:
            raise RingLinkError("the join link is malformed")
        payload, mac = ticket.split(".")
        # The MAC first (constant time): nothing of a forged ticket is decoded or parsed.
        try:
            given, expected = _unb64(mac), self._mac(payload)  # not ASCII: ValueError
        except ValueError as exc:
            raise RingLinkError("the join link is malformed") from exc
        if not hmac.compare_digest(given, expected):
            raise RingLinkError("the join link does not verify")
        try:
            claims = json.loads(_unb64(payload))
        except ValueError as exc:
            raise RingLinkError("the join link is malformed") from exc
        if not isinstance(claims, dict) or not isinstance(claims.get("c"), str):
            raise RingLinkError("the join link is malformed")
        expires = claims.get("e")
        if not isinstance(expires, int) or expires < self._clock():
            raise RingLinkError("the join link has expired")
        return str(claims["c"])

    async def join(
        self, ticket: object, get_call: Callable[[str], Awaitable[CallRecord | None]]
    ) -> OperatorGrant:
        """An operator token for the call a join link names. Its record may not be there
        yet (a held grant's start report on its way): the ring's is enough."""
        call_id = self._verify(ticket)
        ring = await self._store.get(call_id)
        call = await get_call(call_id)
        if ring is None:
            raise RingLinkError("the join link names no ringing call")
        if (call is not None and call.ended_at is not None) or ring.state in (
            RingState.NO_ANSWER,
            RingState.ENDED,
        ):
            raise CallEndedError("the call has ended")
        return mint_operator_grant(
            server_url=self._livekit_url,
            api_key=self._api_key,
            api_secret=self._api_secret,
            room=ring.room,
            call_id=call_id,
            name="operator",
            actor="ring-link",
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64url") from exc
