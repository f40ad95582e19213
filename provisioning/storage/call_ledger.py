"""The call ledger: who was in each call's room and when, and what is known of the room itself.

LiveKit's webhooks fill it (a participant's join and leave, with its disconnect reason; the
room's end) and so does the sweeper (whether LiveKit's room list still has the room). The
sweeper reads it to close the calls whose devices never reported their end. Every write is
an upsert that keeps what an earlier write knew, so the same fact twice, or facts in any
order, leave the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from provisioning.models import CallRecord
from provisioning.storage.base import Database, Row, Storage
from provisioning.storage.units import SyncSession

_CALL_COLUMNS = (
    "call_id, device_id, room, trigger, created_at, token_expires_at,"
    " ended_at, end_reason, duration_ms, end_detail, upstream_call_id, outcome"
)
_PRESENCE_COLUMNS = "room, sid, identity, kind, joined_at, left_at, disconnect_reason"
# Rooms per `IN (...)`: well under both databases' limits on parameters.
_CHUNK = 200


class ParticipantKind(StrEnum):
    """Who a participant of a call's room is."""

    DEVICE = "device"
    AGENT = "agent"
    OTHER = "other"


@dataclass(frozen=True)
class Presence:
    """One connection of a participant to a room (LiveKit's `sid`), times in Unix seconds.

    `disconnect_reason` is LiveKit's `DisconnectReason` name (`CLIENT_INITIATED`, ...),
    set with `left_at`.
    """

    room: str
    sid: str
    identity: str
    kind: ParticipantKind
    joined_at: float | None = None
    left_at: float | None = None
    disconnect_reason: str | None = None


@dataclass(frozen=True)
class RoomFacts:
    """What is known of a call's room: its participants, and its end.

    `finished_at` is LiveKit's time of its latest `room_finished`; `seen_at` the backend's
    time when its sweeper last found the room in LiveKit's room list, `gone_at` since when
    that list has not had it (None once it has it again).
    """

    room: str
    participants: tuple[Presence, ...] = ()
    finished_at: float | None = None
    seen_at: float | None = None
    gone_at: float | None = None


class CallLedger(Protocol):
    """The ledger as the webhook receiver and the sweeper see it; may raise `StorageError`."""

    async def record_join(self, presence: Presence) -> None:
        """A participant joined (its `joined_at` is kept if already known)."""
        ...

    async def record_leave(self, presence: Presence) -> None:
        """A participant left, with its `left_at` and disconnect reason."""
        ...

    async def record_room_finished(self, room: str, finished_at: float) -> None:
        """LiveKit reported the room finished at `finished_at` (the latest report wins)."""
        ...

    async def record_listing(
        self, listed: Iterable[str], missing: Iterable[str], now: float
    ) -> None:
        """LiveKit's room list had the `listed` rooms and not the `missing` ones at `now`."""
        ...

    async def room_facts(self, rooms: Sequence[str]) -> dict[str, RoomFacts]:
        """The facts of each of `rooms` (empty facts for a room nothing is known of)."""
        ...

    async def open_calls(self, now: float) -> list[CallRecord]:
        """Calls that have not ended and could be over by `now`, oldest first."""
        ...


class SqlCallLedger:
    """`CallLedger` over the shared `Database` seam, in its own tables (schema version 5)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def record_join(self, presence: Presence) -> None:
        """Insert the presence, or fill in its join time if only its leave was known."""
        await self._db.run(lambda s: _upsert_join(s, presence))

    async def record_leave(self, presence: Presence) -> None:
        """Insert the presence, or set its leave (a leave seen again keeps the latest)."""
        await self._db.run(lambda s: _upsert_leave(s, presence))

    async def record_room_finished(self, room: str, finished_at: float) -> None:
        """Keep the latest `room_finished` time of the room."""
        await self._db.run(lambda s: _upsert_finished(s, room, finished_at))

    async def record_listing(
        self, listed: Iterable[str], missing: Iterable[str], now: float
    ) -> None:
        """Mark `listed` rooms seen now, and `missing` ones gone since now unless already."""
        seen, gone = sorted(set(listed)), sorted(set(missing))
        if seen or gone:
            await self._db.run(lambda s: _upsert_listing(s, seen, gone, now))

    async def room_facts(self, rooms: Sequence[str]) -> dict[str, RoomFacts]:
        """Read the participants and room rows of `rooms`, in chunks."""
        names = sorted(set(rooms))
        return await self._db.run(lambda s: _read_facts(s, names))

    async def open_calls(self, now: float) -> list[CallRecord]:
        """Calls with no end yet that could be over: their token has expired, or LiveKit
        told of their room (a join, a leave, its end, a listing). A younger call nobody
        has seen in LiveKit cannot be settled yet, so a pass costs what is in flight, not
        every call just started."""
        rows = await self._db.run(
            lambda s: s.fetchall(
                f"SELECT {_CALL_COLUMNS} FROM calls c WHERE c.ended_at IS NULL AND ("
                " c.token_expires_at <= ?"
                " OR EXISTS (SELECT 1 FROM call_participants p WHERE p.room = c.room)"
                " OR EXISTS (SELECT 1 FROM call_rooms r WHERE r.room = c.room))"
                " ORDER BY c.created_at, c.call_id",
                (now,),
            )
        )
        return [CallRecord(*row) for row in rows]


def ledger_of(storage: Storage) -> CallLedger:
    """The ledger in the same database as `storage` (an `SqlStorage`)."""
    db: Database | None = getattr(storage, "db", None)
    if db is None:
        raise TypeError(f"{type(storage).__name__} has no database for the call ledger")
    return SqlCallLedger(db)


def _upsert_join(s: SyncSession, p: Presence) -> None:
    s.execute(
        f"INSERT INTO call_participants ({_PRESENCE_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL, NULL)"
        " ON CONFLICT (room, sid) DO UPDATE SET"
        " joined_at = COALESCE(call_participants.joined_at, excluded.joined_at)",
        (p.room, p.sid, p.identity, p.kind.value, p.joined_at),
    )


def _upsert_leave(s: SyncSession, p: Presence) -> None:
    s.execute(
        f"INSERT INTO call_participants ({_PRESENCE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (room, sid) DO UPDATE SET"
        " joined_at = COALESCE(call_participants.joined_at, excluded.joined_at),"
        " left_at = CASE WHEN call_participants.left_at IS NULL"
        "   OR excluded.left_at >= call_participants.left_at"
        "   THEN excluded.left_at ELSE call_participants.left_at END,"
        " disconnect_reason = CASE WHEN call_participants.left_at IS NULL"
        "   OR excluded.left_at >= call_participants.left_at"
        "   THEN excluded.disconnect_reason ELSE call_participants.disconnect_reason END",
        (p.room, p.sid, p.identity, p.kind.value, p.joined_at, p.left_at, p.disconnect_reason),
    )


def _upsert_finished(s: SyncSession, room: str, finished_at: float) -> None:
    s.execute(
        "INSERT INTO call_rooms (room, finished_at) VALUES (?, ?)"
        " ON CONFLICT (room) DO UPDATE SET finished_at = CASE"
        "   WHEN call_rooms.finished_at IS NULL OR excluded.finished_at > call_rooms.finished_at"
        "   THEN excluded.finished_at ELSE call_rooms.finished_at END",
        (room, finished_at),
    )


def _upsert_listing(s: SyncSession, seen: list[str], gone: list[str], now: float) -> None:
    for room in seen:
        s.execute(
            "INSERT INTO call_rooms (room, seen_at) VALUES (?, ?)"
            " ON CONFLICT (room) DO UPDATE SET seen_at = excluded.seen_at, gone_at = NULL",
            (room, now),
        )
    for room in gone:
        s.execute(
            "INSERT INTO call_rooms (room, gone_at) VALUES (?, ?)"
            " ON CONFLICT (room) DO UPDATE SET"
            " gone_at = COALESCE(call_rooms.gone_at, excluded.gone_at)",
            (room, now),
        )


def _read_facts(s: SyncSession, names: list[str]) -> dict[str, RoomFacts]:
    presences: dict[str, list[Presence]] = {name: [] for name in names}
    rooms: dict[str, Row] = {}
    for start in range(0, len(names), _CHUNK):
        chunk = names[start : start + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        for row in s.fetchall(
            f"SELECT {_PRESENCE_COLUMNS} FROM call_participants WHERE room IN ({marks})"
            " ORDER BY room, joined_at, sid",
            chunk,
        ):
            presences[row[0]].append(
                Presence(row[0], row[1], row[2], ParticipantKind(row[3]), *row[4:])
            )
        for row in s.fetchall(
            f"SELECT room, finished_at, seen_at, gone_at FROM call_rooms WHERE room IN ({marks})",
            chunk,
        ):
            rooms[row[0]] = row
    facts: dict[str, RoomFacts] = {}
    for name in names:
        found = rooms.get(name)
        facts[name] = RoomFacts(
            name,
            tuple(presences[name]),
            *((found[1], found[2], found[3]) if found is not None else (None, None, None)),
        )
    return facts
