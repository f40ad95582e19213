"""The `Storage` protocol in standard SQL, once, over any `Database` (SQLite or PostgreSQL)."""

from __future__ import annotations

from provisioning.models import (
    Admission,
    CallRecord,
    Device,
    DeviceStatus,
    EnrollmentCode,
    FlagReason,
    HeldGrant,
    LiveKitEventRecord,
    Nonce,
)
from provisioning.storage.base import Database, Row
from provisioning.storage.units import SyncSession

_GRANT_COLUMNS = "call_id, device_id, room, created_at, expires_at"
_CODE_COLUMNS = "code_hash, label, created_at, expires_at, used_at, device_id"
_DEVICE_COLUMNS = "device_id, public_key, name, status, created_at"
_DEVICE_ROW = f"{_DEVICE_COLUMNS}, flagged_at, flag_reason"
_EVENT_COLUMNS = "event_id, event, room, created_at, received_at"
_CALL_COLUMNS = (
    "call_id, device_id, room, trigger, created_at, token_expires_at,"
    " ended_at, end_reason, duration_ms"
)


class SqlStorage:
    """The backend's state in one database; owns the `Database` and closes it."""

    def __init__(self, db: Database, *, location: str) -> None:
        self.db = db
        self.location = location

    async def aclose(self) -> None:
        """Close the database; safe to call twice."""
        await self.db.aclose()

    async def schema_version(self) -> int:
        """The schema version recorded in the database."""
        async with self.db.session() as s:
            row = await s.fetchone("SELECT MAX(version) FROM schema_version")
        return 0 if row is None or row[0] is None else int(row[0])

    # Enrollment codes

    async def add_enrollment_code(self, code: EnrollmentCode) -> None:
        """Store a new enrollment code (by hash)."""
        async with self.db.session() as s:
            await s.execute(
                f"INSERT INTO enrollment_codes ({_CODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    code.code_hash,
                    code.label,
                    code.created_at,
                    code.expires_at,
                    code.used_at,
                    code.device_id,
                ),
            )

    async def get_enrollment_code(self, code_hash: str) -> EnrollmentCode | None:
        """The enrollment code with this hash, if any."""
        async with self.db.session() as s:
            row = await s.fetchone(
                f"SELECT {_CODE_COLUMNS} FROM enrollment_codes WHERE code_hash = ?", (code_hash,)
            )
        return None if row is None else EnrollmentCode(*row)

    async def enroll_device(self, device: Device, code_hash: str, now: float) -> bool:
        """Spend the code and store the device in one transaction; False if the code is spent."""
        async with self.db.transaction() as s:
            # Two backends spending one code: the row lock makes the second update see it used.
            spent = await s.execute(
                "UPDATE enrollment_codes SET used_at = ?, device_id = ?"
                " WHERE code_hash = ? AND used_at IS NULL AND expires_at > ?",
                (now, device.device_id, code_hash, now),
            )
            if spent != 1:
                return False
            await s.execute(
                f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (
                    device.device_id,
                    device.public_key,
                    device.name,
                    device.status.value,
                    device.created_at,
                ),
            )
        return True

    # Devices

    async def get_device(self, device_id: str) -> Device | None:
        """The device with this id, if any."""
        async with self.db.session() as s:
            row = await s.fetchone(
                f"SELECT {_DEVICE_ROW} FROM devices WHERE device_id = ?", (device_id,)
            )
        return None if row is None else _device(row)

    async def get_device_by_public_key(self, public_key: bytes) -> Device | None:
        """The device holding this raw public key, if any."""
        async with self.db.session() as s:
            row = await s.fetchone(
                f"SELECT {_DEVICE_ROW} FROM devices WHERE public_key = ?", (public_key,)
            )
        return None if row is None else _device(row)

    async def list_devices(self) -> list[Device]:
        """All devices, oldest first."""
        async with self.db.session() as s:
            rows = await s.fetchall(
                f"SELECT {_DEVICE_ROW} FROM devices ORDER BY created_at, device_id"
            )
        return [_device(row) for row in rows]

    async def set_device_status(self, device_id: str, status: DeviceStatus) -> bool:
        """Change a device's status; False if there is no such device."""
        async with self.db.session() as s:
            changed = await s.execute(
                "UPDATE devices SET status = ? WHERE device_id = ?", (status.value, device_id)
            )
        return changed == 1

    async def flag_device(self, device_id: str, reason: FlagReason, flagged_at: float) -> bool:
        """Flag a device that is not flagged yet; False if it already is, or does not exist."""
        async with self.db.session() as s:
            changed = await s.execute(
                "UPDATE devices SET flagged_at = ?, flag_reason = ?"
                " WHERE device_id = ? AND flagged_at IS NULL",
                (flagged_at, reason.value, device_id),
            )
        return changed == 1

    # Nonces

    async def add_nonce(self, device_id: str, nonce: str, expires_at: float) -> bool:
        """Remember a nonce; False if this device already used it and it is remembered."""
        return await self.db.run(lambda s: _add_nonce(s, Nonce(device_id, nonce, expires_at)))

    async def admit(self, nonce: Nonce) -> Admission:
        """Spend a request's nonce and read its device's status, in one unit."""
        return await self.db.run(lambda s: _admit(s, nonce))

    async def admit_call(
        self, nonce: Nonce, call: CallRecord, *, since: float, limit: int
    ) -> tuple[Admission, bool]:
        """`admit`, then, for an approved device, `add_call_within_rate`: one unit."""

        def unit(s: SyncSession) -> tuple[Admission, bool]:
            admission = _admit(s, nonce)
            if not _approved(admission):
                return admission, False
            return admission, _add_call_within_rate(s, call, since=since, limit=limit)

        if self.db.dialect == "postgresql":
            # The same in one statement: a round trip to PostgreSQL costs more than SQL.
            return await self.db.run(lambda s: _admit_call_in_one(s, nonce, call, since, limit))
        return await self.db.run(unit)

    async def admit_grant(
        self, nonce: Nonce, grant: HeldGrant, *, keep_since: float, since: float, limit: int
    ) -> tuple[Admission, bool]:
        """`admit`, then, for an approved device with fewer than `limit` grants after
        `since`, `add_grant`: one unit."""

        def unit(s: SyncSession) -> tuple[Admission, bool]:
            admission = _admit(s, nonce)
            if not _approved(admission):
                return admission, False
            row = s.fetchone(
                "SELECT COUNT(*) FROM grants WHERE device_id = ? AND created_at > ?",
                (grant.device_id, since),
            )
            if row is not None and int(row[0]) >= limit:
                return admission, False
            _add_grant(s, grant, keep_since=keep_since)
            return admission, True

        return await self.db.run(unit)

    async def purge_nonces(self, now: float) -> int:
        """Forget nonces whose window has passed; returns how many."""
        async with self.db.session() as s:
            return await s.execute("DELETE FROM nonces WHERE expires_at <= ?", (now,))

    async def count_nonces(self) -> int:
        """How many nonces are remembered."""
        async with self.db.session() as s:
            row = await s.fetchone("SELECT COUNT(*) FROM nonces")
        return 0 if row is None else int(row[0])

    # Calls

    async def add_call(self, call: CallRecord) -> None:
        """Record a new call."""
        async with self.db.session() as s:
            await s.execute(
                f"INSERT INTO calls ({_CALL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _call_values(call),
            )

    async def add_call_within_rate(self, call: CallRecord, *, since: float, limit: int) -> bool:
        """Insert the call only while the device has fewer than `limit` calls after `since`."""
        return await self.db.run(lambda s: _add_call_within_rate(s, call, since=since, limit=limit))

    async def get_call(self, call_id: str) -> CallRecord | None:
        """The call with this id, if any."""
        async with self.db.session() as s:
            row = await s.fetchone(
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_id = ?", (call_id,)
            )
        return None if row is None else CallRecord(*row)

    async def end_call(self, call_id: str, ended_at: float, reason: str, duration_ms: int) -> bool:
        """Record the end of a call that has not ended yet; False otherwise."""
        async with self.db.session() as s:
            changed = await s.execute(
                "UPDATE calls SET ended_at = ?, end_reason = ?, duration_ms = ?"
                " WHERE call_id = ? AND ended_at IS NULL",
                (ended_at, reason, duration_ms, call_id),
            )
        return changed == 1

    async def list_calls(self, device_id: str | None = None) -> list[CallRecord]:
        """Calls, oldest first, optionally of one device."""
        async with self.db.session() as s:
            if device_id is None:
                rows = await s.fetchall(
                    f"SELECT {_CALL_COLUMNS} FROM calls ORDER BY created_at, call_id"
                )
            else:
                rows = await s.fetchall(
                    f"SELECT {_CALL_COLUMNS} FROM calls WHERE device_id = ?"
                    " ORDER BY created_at, call_id",
                    (device_id,),
                )
        return [CallRecord(*row) for row in rows]

    async def count_calls_since(self, device_id: str, since: float) -> tuple[int, float | None]:
        """How many calls the device started after `since`, and the oldest such start."""
        async with self.db.session() as s:
            row = await s.fetchone(
                "SELECT COUNT(*), MIN(created_at) FROM calls"
                " WHERE device_id = ? AND created_at > ?",
                (device_id, since),
            )
        if row is None:
            return 0, None
        return int(row[0]), row[1]

    # LiveKit webhook events

    # Held grants

    async def add_grant(self, grant: HeldGrant, *, keep_since: float) -> None:
        """Store a held grant, forgetting this device's grants that expired before `keep_since`."""
        await self.db.run(lambda s: _add_grant(s, grant, keep_since=keep_since))

    async def get_grant(self, call_id: str) -> HeldGrant | None:
        """The held grant with this call id, if it is still held."""
        async with self.db.session() as s:
            row = await s.fetchone(
                f"SELECT {_GRANT_COLUMNS} FROM grants WHERE call_id = ?", (call_id,)
            )
        return None if row is None else HeldGrant(*row)

    async def count_grants_since(self, device_id: str, since: float) -> tuple[int, float | None]:
        """How many grants the device was given after `since`, and the oldest such."""
        async with self.db.session() as s:
            row = await s.fetchone(
                "SELECT COUNT(*), MIN(created_at) FROM grants"
                " WHERE device_id = ? AND created_at > ?",
                (device_id, since),
            )
        if row is None:
            return 0, None
        return int(row[0]), row[1]

    async def use_grant(self, device_id: str, call_id: str, trigger: str, now: float) -> bool:
        """Turn the held grant into a call, atomically: the grant row goes, the call row comes."""
        async with self.db.transaction() as s:
            row = await s.fetchone(
                f"SELECT {_GRANT_COLUMNS} FROM grants WHERE call_id = ? AND device_id = ?",
                (call_id, device_id),
            )
            if row is None:
                return False
            grant = HeldGrant(*row)
            # Two backends converting one grant: the row lock lets only one delete it.
            if await s.execute("DELETE FROM grants WHERE call_id = ?", (call_id,)) != 1:
                return False
            await s.execute(
                f"INSERT INTO calls ({_CALL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (call_id, device_id, grant.room, trigger, now, grant.expires_at, None, None, None),
            )
        return True

    async def delete_grants(self, device_id: str) -> list[HeldGrant]:
        """Forget every held grant of a device; returns them."""
        async with self.db.transaction() as s:
            rows = await s.fetchall(
                f"SELECT {_GRANT_COLUMNS} FROM grants WHERE device_id = ?", (device_id,)
            )
            await s.execute("DELETE FROM grants WHERE device_id = ?", (device_id,))
        return [HeldGrant(*row) for row in rows]

    async def list_open_calls(self, device_id: str) -> list[CallRecord]:
        """The device's calls that have not ended, oldest first."""
        async with self.db.session() as s:
            rows = await s.fetchall(
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE device_id = ? AND ended_at IS NULL"
                " ORDER BY created_at, call_id",
                (device_id,),
            )
        return [CallRecord(*row) for row in rows]

    async def add_livekit_event(self, event: LiveKitEventRecord) -> bool:
        """Record a webhook event; False if its id is already recorded (a duplicate)."""
        async with self.db.session() as s:
            added = await s.execute(
                f"INSERT INTO livekit_events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (event_id) DO NOTHING",
                (event.event_id, event.event, event.room, event.created_at, event.received_at),
            )
        return added == 1

    async def forget_livekit_event(self, event_id: str) -> None:
        """Drop a recorded event, so that LiveKit's retry of it is handled again."""
        async with self.db.session() as s:
            await s.execute("DELETE FROM livekit_events WHERE event_id = ?", (event_id,))

    async def purge_livekit_events(self, before: float) -> int:
        """Forget events received before `before`; returns how many."""
        async with self.db.session() as s:
            return await s.execute("DELETE FROM livekit_events WHERE received_at < ?", (before,))

    async def list_livekit_events(self, room: str | None = None) -> list[LiveKitEventRecord]:
        """Recorded events in the order they were received, optionally of one room."""
        async with self.db.session() as s:
            if room is None:
                rows = await s.fetchall(
                    f"SELECT {_EVENT_COLUMNS} FROM livekit_events ORDER BY received_at, event_id"
                )
            else:
                rows = await s.fetchall(
                    f"SELECT {_EVENT_COLUMNS} FROM livekit_events WHERE room = ?"
                    " ORDER BY received_at, event_id",
                    (room,),
                )
        return [LiveKitEventRecord(*row) for row in rows]


def _call_values(call: CallRecord) -> tuple[object, ...]:
    """A call's values in `_CALL_COLUMNS` order."""
    return (
        call.call_id,
        call.device_id,
        call.room,
        call.trigger,
        call.created_at,
        call.token_expires_at,
        call.ended_at,
        call.end_reason,
        call.duration_ms,
    )


def _device(row: Row) -> Device:
    device_id, public_key, name, status, created_at, flagged_at, flag_reason = row
    return Device(
        device_id=device_id,
        public_key=bytes(public_key),
        name=name,
        status=DeviceStatus(status),
        created_at=created_at,
        flagged_at=flagged_at,
        flag_reason=None if flag_reason is None else FlagReason(flag_reason),
    )


def _add_nonce(s: SyncSession, nonce: Nonce) -> bool:
    added = s.execute(
        "INSERT INTO nonces (device_id, nonce, expires_at) VALUES (?, ?, ?)"
        " ON CONFLICT (device_id, nonce) DO NOTHING",
        (nonce.device_id, nonce.value, nonce.expires_at),
    )
    return added == 1


def _admit(s: SyncSession, nonce: Nonce) -> Admission:
    # One statement: a row comes back only when the nonce was fresh, with the status then.
    row = s.fetchone(
        "INSERT INTO nonces (device_id, nonce, expires_at) VALUES (?, ?, ?)"
        " ON CONFLICT (device_id, nonce) DO NOTHING"
        " RETURNING (SELECT status FROM devices WHERE device_id = ?)",
        (nonce.device_id, nonce.value, nonce.expires_at, nonce.device_id),
    )
    if row is None:
        return Admission(fresh=False, status=None)
    return Admission(fresh=True, status=None if row[0] is None else DeviceStatus(row[0]))


def _admit_call_in_one(
    s: SyncSession, nonce: Nonce, call: CallRecord, since: float, limit: int
) -> tuple[Admission, bool]:
    """`_admit` and `_add_call_within_rate` as one statement (PostgreSQL: DML in WITH)."""
    row = s.fetchone(
        "WITH n AS ("
        "  INSERT INTO nonces (device_id, nonce, expires_at) VALUES (?, ?, ?)"
        "  ON CONFLICT (device_id, nonce) DO NOTHING RETURNING device_id),"
        " d AS (SELECT status FROM devices WHERE device_id = ?),"
        " c AS ("
        f"  INSERT INTO calls ({_CALL_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? FROM n"
        "  WHERE (SELECT status FROM d) = ?"
        "  AND (SELECT COUNT(*) FROM calls WHERE device_id = ? AND created_at > ?) < ?"
        "  RETURNING call_id)"
        " SELECT (SELECT COUNT(*) FROM n), (SELECT status FROM d), (SELECT COUNT(*) FROM c)",
        (
            nonce.device_id,
            nonce.value,
            nonce.expires_at,
            nonce.device_id,
            *_call_values(call),
            DeviceStatus.APPROVED.value,
            call.device_id,
            since,
            limit,
        ),
    )
    assert row is not None
    fresh, status, added = row
    if not fresh:
        return Admission(fresh=False, status=None), False
    admission = Admission(fresh=True, status=None if status is None else DeviceStatus(status))
    return admission, bool(added)


def _approved(admission: Admission) -> bool:
    return admission.fresh and admission.status is DeviceStatus.APPROVED


def _add_call_within_rate(s: SyncSession, call: CallRecord, *, since: float, limit: int) -> bool:
    return (
        s.execute(
            f"INSERT INTO calls ({_CALL_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?"
            " WHERE (SELECT COUNT(*) FROM calls WHERE device_id = ? AND created_at > ?) < ?",
            (*_call_values(call), call.device_id, since, limit),
        )
        == 1
    )


def _add_grant(s: SyncSession, grant: HeldGrant, *, keep_since: float) -> None:
    s.execute(
        "DELETE FROM grants WHERE device_id = ? AND expires_at < ?",
        (grant.device_id, keep_since),
    )
    s.execute(
        f"INSERT INTO grants ({_GRANT_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
        (grant.call_id, grant.device_id, grant.room, grant.created_at, grant.expires_at),
    )
