"""The outbox: fleet events as rows, claimed under a lease, one device's events in order.

Every statement runs on the shared `Database` seam, so the same SQL serves SQLite and a
PostgreSQL shared by several backend processes. An event is numbered (`seq`) from a
one-row counter whose lock is held until commit, so numbers become visible in order. A
sender claims only the oldest pending event of each device, and only if no other sender
holds its lease: no event is ever sent twice at the same time, and a device's next event
waits until the previous one was delivered or given up. On PostgreSQL the claim also
skips rows another sender is claiming (`FOR UPDATE SKIP LOCKED`) instead of waiting.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from enum import StrEnum

from provisioning.events import FleetEvent
from provisioning.storage.base import Database, Row
from provisioning.storage.units import SyncSession

# Events delivered or given up are kept this long for the console, then purged.
KEEP_FINISHED_S = 7 * 86_400

_HEAD_OF_DEVICE = (
    "NOT EXISTS (SELECT 1 FROM webhook_outbox e"
    " WHERE e.device_id = o.device_id AND e.state = 'pending' AND e.seq < o.seq)"
)
_DELIVERY_COLUMNS = (
    "seq, event_id, kind, device_id, created_at, state, attempts, next_attempt_at,"
    " last_attempt_at, last_status, last_error, finished_at"
)


class DeliveryState(StrEnum):
    """Where an event is: waiting (or being sent), delivered, or given up."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class DeliveryError(StrEnum):
    """Why an attempt failed (`last_error`); `http_status` comes with `last_status`."""

    HTTP_STATUS = "http_status"
    TIMEOUT = "timeout"
    CONNECT_FAILED = "connect_failed"
    NETWORK_ERROR = "network_error"
    PROTOCOL_ERROR = "protocol_error"
    TRANSPORT_ERROR = "transport_error"


@dataclass(frozen=True)
class Delivery:
    """One event's delivery, as the admin console shows it; times are Unix seconds."""

    seq: int
    event_id: str
    kind: str
    device_id: str
    created_at: float
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_attempt_at: float | None
    last_status: int | None
    last_error: DeliveryError | None
    finished_at: float | None


@dataclass(frozen=True)
class Claimed:
    """An event a sender holds the lease of: what to send, and how often it was tried."""

    seq: int
    event_id: str
    kind: str
    device_id: str
    body: bytes
    created_at: float
    attempts: int


def new_event_id() -> str:
    """`e-` + 20 random hex digits (80 bits)."""
    return "e-" + secrets.token_hex(10)


def event_body(event_id: str, event: FleetEvent) -> bytes:
    """The JSON a receiver gets: `{"id", "type", "at", "data"}`, compact, keys sorted."""
    document = {"id": event_id, "type": event.kind.value, "at": event.at, "data": event.data}
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode("utf-8")


class WebhookOutbox:
    """The `webhook_outbox` table over a `Database`; every method may raise a `StorageError`."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock_clause = " FOR UPDATE OF o SKIP LOCKED" if db.dialect == "postgresql" else ""

    async def add(self, event: FleetEvent, *, now: float) -> str:
        """Record `event`, due now; returns its id once the row is committed."""
        event_id = new_event_id()
        body = event_body(event_id, event).decode("utf-8")
        device_id = str(event.data.get("device_id", ""))

        def unit(s: SyncSession) -> None:
            row = s.fetchone(
                "UPDATE webhook_sequence SET last_seq = last_seq + 1 WHERE id = 1"
                " RETURNING last_seq"
            )
            assert row is not None, "webhook_sequence has its row from the migration"
            s.execute(
                "INSERT INTO webhook_outbox (seq, event_id, kind, device_id, body, created_at,"
                " state, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                (int(row[0]), event_id, event.kind.value, device_id, body, now, now),
            )

        await self._db.run(unit)
        return event_id

    async def claim(self, *, now: float, owner: str, lease_s: float, limit: int) -> list[Claimed]:
        """Lease up to `limit` due events, each the oldest pending one of its device."""

        def unit(s: SyncSession) -> list[Claimed]:
            rows = s.fetchall(
                "SELECT o.seq FROM webhook_outbox o WHERE o.state = 'pending'"
                f" AND o.next_attempt_at <= ? AND o.lease_until <= ? AND {_HEAD_OF_DEVICE}"
                f" ORDER BY o.seq LIMIT ?{self._lock_clause}",
                (now, now, limit),
            )
            claimed = []
            for (seq,) in rows:
                # Conditional: a sender that read the row before another's lease committed
                # changes nothing (PostgreSQL re-checks the condition after the lock wait).
                row = s.fetchone(
                    "UPDATE webhook_outbox SET lease_owner = ?, lease_until = ?"
                    " WHERE seq = ? AND state = 'pending' AND lease_until <= ?"
                    " RETURNING seq, event_id, kind, device_id, body, created_at, attempts",
                    (owner, now + lease_s, seq, now),
                )
                if row is not None:
                    claimed.append(_claimed(row))
            return claimed

        return await self._db.run(unit)

    async def delivered(self, event: Claimed, *, now: float, status: int) -> None:
        """Record a successful attempt: the event is done (whoever holds its lease now)."""

        def unit(s: SyncSession) -> None:
            s.execute(
                "UPDATE webhook_outbox SET state = 'delivered', attempts = attempts + 1,"
                " last_attempt_at = ?, last_status = ?, last_error = NULL, finished_at = ?,"
                " lease_owner = NULL, lease_until = 0 WHERE seq = ? AND state = 'pending'",
                (now, status, now, event.seq),
            )

        await self._db.run(unit)

    async def failed(
        self,
        event: Claimed,
        *,
        owner: str,
        now: float,
        status: int | None,
        error: DeliveryError,
        retry_at: float | None,
    ) -> bool:
        """Record a failed attempt: due again at `retry_at`, or given up if None.

        False if `owner` no longer holds the lease (it expired and another sender took it).
        """
        state = DeliveryState.PENDING if retry_at is not None else DeliveryState.FAILED
        finished_at = None if retry_at is not None else now

        def unit(s: SyncSession) -> int:
            return s.execute(
                "UPDATE webhook_outbox SET state = ?, attempts = attempts + 1,"
                " last_attempt_at = ?, last_status = ?, last_error = ?, next_attempt_at = ?,"
                " finished_at = ?, lease_owner = NULL, lease_until = 0"
                " WHERE seq = ? AND state = 'pending' AND lease_owner = ?",
                (
                    state.value,
                    now,
                    status,
                    error.value,
                    now if retry_at is None else retry_at,
                    finished_at,
                    event.seq,
                    owner,
                ),
            )

        return await self._db.run(unit) == 1

    async def release(self, owner: str) -> int:
        """Give back every lease `owner` holds (it is stopping); returns how many."""

        def unit(s: SyncSession) -> int:
            return s.execute(
                "UPDATE webhook_outbox SET lease_owner = NULL, lease_until = 0"
                " WHERE lease_owner = ? AND state = 'pending'",
                (owner,),
            )

        return await self._db.run(unit)

    async def next_due(self) -> float | None:
        """When the earliest event that could be claimed is due (or its lease ends)."""
        async with self._db.session() as s:
            row = await s.fetchone(
                "SELECT MIN(CASE WHEN o.lease_until > o.next_attempt_at"
                " THEN o.lease_until ELSE o.next_attempt_at END)"
                f" FROM webhook_outbox o WHERE o.state = 'pending' AND {_HEAD_OF_DEVICE}"
            )
        return None if row is None or row[0] is None else float(row[0])

    async def list_deliveries(
        self,
        *,
        limit: int = 50,
        state: DeliveryState | None = None,
        device_id: str | None = None,
    ) -> list[Delivery]:
        """The newest `limit` events, newest first, optionally in one state or of one device."""
        where, params = [], []
        if state is not None:
            where.append("state = ?")
            params.append(state.value)
        if device_id is not None:
            where.append("device_id = ?")
            params.append(device_id)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        async with self._db.session() as s:
            rows = await s.fetchall(
                f"SELECT {_DELIVERY_COLUMNS} FROM webhook_outbox{clause} ORDER BY seq DESC LIMIT ?",
                (*params, limit),
            )
        return [_delivery(row) for row in rows]

    async def event_body(self, event_id: str) -> bytes | None:
        """The JSON body sent for an event, if it is still kept."""
        async with self._db.session() as s:
            row = await s.fetchone(
                "SELECT body FROM webhook_outbox WHERE event_id = ?", (event_id,)
            )
        return None if row is None else str(row[0]).encode("utf-8")

    async def purge(self, before: float) -> int:
        """Forget events delivered or given up before `before`; returns how many."""

        def unit(s: SyncSession) -> int:
            return s.execute(
                "DELETE FROM webhook_outbox WHERE state <> 'pending' AND finished_at < ?",
                (before,),
            )

        return await self._db.run(unit)


def _claimed(row: Row) -> Claimed:
    seq, event_id, kind, device_id, body, created_at, attempts = row
    return Claimed(
        seq=int(seq),
        event_id=event_id,
        kind=kind,
        device_id=device_id,
        body=str(body).encode("utf-8"),
        created_at=float(created_at),
        attempts=int(attempts),
    )


def _delivery(row: Row) -> Delivery:
    (seq, event_id, kind, device_id, created_at, state, attempts, next_attempt_at) = row[:8]
    last_attempt_at, last_status, last_error, finished_at = row[8:]
    return Delivery(
        seq=int(seq),
        event_id=event_id,
        kind=kind,
        device_id=device_id,
        created_at=float(created_at),
        state=DeliveryState(state),
        attempts=int(attempts),
        next_attempt_at=float(next_attempt_at),
        last_attempt_at=None if last_attempt_at is None else float(last_attempt_at),
        last_status=None if last_status is None else int(last_status),
        last_error=None if last_error is None else DeliveryError(last_error),
        finished_at=None if finished_at is None else float(finished_at),
    )
