"""The `Storage` protocol in standard SQL, once, over any `Database` (SQLite or PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from provisioning.models import (
    AdminAction,
    Admission,
    CallRecord,
    Device,
    DeviceReport,
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
_CODE_COLUMNS = (
    "code_hash, label, created_at, expires_at, used_at, device_id, requires_approval, group_name"
)
_DEVICE_COLUMNS = "device_id, public_key, name, status, created_at, group_name"
# A device with its group's settings (one query: the hot path re-reads it at check-in).
_DEVICE_ROW = (
    "d.device_id, d.public_key, d.name, d.status, d.created_at, d.flagged_at, d.flag_reason,"
    " d.group_name, d.settings, g.settings, d.last_seen, d.firmware, d.board, d.state,"
    " d.last_error, d.clock_offset_s"
)
_DEVICE_FROM = "devices d LEFT JOIN device_groups g ON g.name = d.group_name"
_ACTION_COLUMNS = "at, actor, action, target, detail"
_EVENT_COLUMNS = "event_id, event, room, created_at, received_at"
# A new call's columns; `end_detail` (the platform's own reason) is only ever set by its end.
_CALL_INSERT_COLUMNS = (
    "call_id, device_id, room, trigger, created_at, token_expires_at,"
    " ended_at, end_reason, duration_ms"
)
_CALL_COLUMNS = _CALL_INSERT_COLUMNS + ", end_detail, upstream_call_id, outcome"


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
                f"INSERT INTO enrollment_codes ({_CODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    code.code_hash,
                    code.label,
                    code.created_at,
                    code.expires_at,
                    code.used_at,
                    code.device_id,
                    int(code.requires_approval),
                    code.group,
                ),
            )

    async def get_enrollment_code(self, code_hash: str) -> EnrollmentCode | None:
        """The enrollment code with this hash, if any."""
        async with self.db.session() as s:
            row = await s.fetchone(
                f"SELECT {_CODE_COLUMNS} FROM enrollment_codes WHERE code_hash = ?", (code_hash,)
            )
        return None if row is None else _code(row)

    async def list_enrollment_codes(self) -> list[EnrollmentCode]:
        """Every enrollment code (by hash), newest first."""
        async with self.db.session() as s:
            rows = await s.fetchall(
                f"SELECT {_CODE_COLUMNS} FROM enrollment_codes ORDER BY created_at DESC"
            )
        return [_code(row) for row in rows]

    async def enroll_device(self, device: Device, code_hash: str, now: float) -> Device | None:
        """Spend the code and store the device in one transaction: pending if the code
        requires approval, in the code's group. None if the code is spent or expired."""

        def unit(s: SyncSession) -> Device | None:
            # Two backends spending one code: the row lock makes the second update see it used.
            row = s.fetchone(
                "UPDATE enrollment_codes SET used_at = ?, device_id = ?"
                " WHERE code_hash = ? AND used_at IS NULL AND expires_at > ?"
                " RETURNING requires_approval, group_name",
                (now, device.device_id, code_hash, now),
            )
            if row is None:
                return None
            status = DeviceStatus.PENDING if row[0] else device.status
            enrolled = replace(device, status=status, group=row[1])
            s.execute(
                f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    enrolled.device_id,
                    enrolled.public_key,
                    enrolled.name,
                    enrolled.status.value,
                    enrolled.created_at,
                    enrolled.group,
                ),
            )
            return enrolled

        return await self.db.run(unit)

    # Devices

    async def get_device(self, device_id: str) -> Device | None:
        """The device with this id, if any."""
        sql = f"SELECT {_DEVICE_ROW} FROM {_DEVICE_FROM} WHERE d.device_id = ?"
        if self.db.dialect == "postgresql":
            # Every signed request needs it (a device's own calls are too rare for the
            # core's cache to hold it): a unit on the database's thread costs a third of
            # the CPU that async psycopg on the event loop does (23 against 80 us here).
            row = await self.db.run(lambda s: s.fetchone(sql, (device_id,)))
        else:
            async with self.db.session() as session:
                row = await session.fetchone(sql, (device_id,))
        return None if row is None else _device(row)

    async def get_device_by_public_key(self, public_key: bytes) -> Device | None:
        """The device holding this raw public key, if any."""
        async with self.db.session() as s:
            row = await s.fetchone(
                f"SELECT {_DEVICE_ROW} FROM {_DEVICE_FROM} WHERE d.public_key = ?", (public_key,)
            )
        return None if row is None else _device(row)

    async def list_devices(self) -> list[Device]:
        """All devices, oldest first."""
        async with self.db.session() as s:
            rows = await s.fetchall(
                f"SELECT {_DEVICE_ROW} FROM {_DEVICE_FROM} ORDER BY d.created_at, d.device_id"
            )
        return [_device(row) for row in rows]

    async def change_device(
        self,
        device_id: str,
        action: AdminAction,
        *,
        status: DeviceStatus | None = None,
        from_statuses: tuple[DeviceStatus, ...] = (),
        settings: Mapping[str, Any] | None = None,
        group: str | None = None,
        clear_group: bool = False,
    ) -> Device | None:
        """Change a device (its status, if it is in one of `from_statuses`; its settings;
        its group) and record `action`, in one unit. None if there is no such device, or
        its status is not one of `from_statuses`."""
        sets: list[str] = []
        params: list[Any] = []
        if status is not None:
            sets.append("status = ?")
            params.append(status.value)
        if settings is not None:
            sets.append("settings = ?")
            params.append(_json(settings))
        if group is not None or clear_group:
            sets.append("group_name = ?")
            params.append(group)
        where = "device_id = ?"
        params.append(device_id)
        if from_statuses:
            where += f" AND status IN ({', '.join('?' for _ in from_statuses)})"
            params += [s.value for s in from_statuses]

        def unit(s: SyncSession) -> Device | None:
            if s.execute(f"UPDATE devices SET {', '.join(sets)} WHERE {where}", params) != 1:
                return None
            _add_action(s, action)
            row = s.fetchone(
                f"SELECT {_DEVICE_ROW} FROM {_DEVICE_FROM} WHERE d.device_id = ?", (device_id,)
            )
            return None if row is None else _device(row)

        return await self.db.run(unit)

    async def check_in(
        self, nonce: Nonce, report: DeviceReport, now: float, clock_offset_s: float
    ) -> tuple[Admission, Device | None]:
        """Spend the nonce and, for a device that is approved or pending, record its report
        and when it was seen; returns the device as it is now. One unit."""

        def unit(s: SyncSession) -> tuple[Admission, Device | None]:
            admission = _admit(s, nonce)
            if not admission.fresh or admission.status is None:
                return admission, None
            if admission.status in (DeviceStatus.APPROVED, DeviceStatus.PENDING):
                s.execute(
                    "UPDATE devices SET last_seen = ?, firmware = ?, board = ?, state = ?,"
                    " last_error = ?, clock_offset_s = ? WHERE device_id = ?",
                    (
                        now,
                        report.firmware,
                        report.board,
                        report.state,
                        report.last_error,
                        clock_offset_s,
                        nonce.device_id,
                    ),
                )
            row = s.fetchone(
                f"SELECT {_DEVICE_ROW} FROM {_DEVICE_FROM} WHERE d.device_id = ?",
                (nonce.device_id,),
            )
            return admission, None if row is None else _device(row)

        if self.db.dialect == "postgresql":
            # The same in one statement: a round trip to PostgreSQL costs more than SQL.
            return await self.db.run(
                lambda s: _check_in_in_one(s, nonce, report, now, clock_offset_s)
            )
        return await self.db.run(unit)

    # Groups and admin actions

    async def set_group_settings(
        self, group: str, settings: Mapping[str, Any], action: AdminAction
    ) -> None:
        """Create or replace a group's settings and record `action`, in one unit."""

        def unit(s: SyncSession) -> None:
            s.execute(
                "INSERT INTO device_groups (name, settings, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET settings = excluded.settings,"
                " updated_at = excluded.updated_at",
                (group, _json(settings), action.at),
            )
            _add_action(s, action)

        await self.db.run(unit)

    async def list_groups(self) -> dict[str, Mapping[str, Any]]:
        """Every group and its settings, by name."""
        async with self.db.session() as s:
            rows = await s.fetchall("SELECT name, settings FROM device_groups ORDER BY name")
        return {name: _settings(text) for name, text in rows}

    async def add_admin_action(self, action: AdminAction) -> None:
        """Record an admin action on its own (one that changed no device row)."""
        await self.db.run(lambda s: _add_action(s, action))

    async def list_admin_actions(self, limit: int = 100) -> list[AdminAction]:
        """The latest admin actions, newest first."""
        async with self.db.session() as s:
            rows = await s.fetchall(
                f"SELECT {_ACTION_COLUMNS} FROM admin_actions"
                " ORDER BY at DESC, action_id DESC LIMIT ?",
                (limit,),
            )
        return [
            AdminAction(at, actor, action, target, _settings(detail))
            for at, actor, action, target, detail in rows
        ]

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

        if self.db.dialect == "postgresql":
            # The same in one statement: a round trip to PostgreSQL costs more than SQL.
            return await self.db.run(
                lambda s: _admit_grant_in_one(s, nonce, grant, keep_since, since, limit)
            )
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
                f"INSERT INTO calls ({_CALL_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

    async def end_call(
        self,
        call_id: str,
        ended_at: float,
        reason: str,
        duration_ms: int,
        detail: str | None = None,
    ) -> bool:
        """Record the end of a call that has not ended yet; False otherwise."""
        async with self.db.session() as s:
            changed = await s.execute(
                "UPDATE calls SET ended_at = ?, end_reason = ?, duration_ms = ?, end_detail = ?"
                " WHERE call_id = ? AND ended_at IS NULL",
                (ended_at, reason, duration_ms, detail, call_id),
            )
        return changed == 1

    async def set_call_upstream(self, call_id: str, upstream_call_id: str) -> None:
        """The platform's own id for the call (its session, web call or bridge call)."""
        async with self.db.session() as s:
            await s.execute(
                "UPDATE calls SET upstream_call_id = ? WHERE call_id = ?",
                (upstream_call_id, call_id),
            )

    async def set_call_outcome(self, call_id: str, outcome: str) -> None:
        """The outcome the platform was told (Click2Call: ANSWERED, NOT_ANSWERED, FAILED)."""
        async with self.db.session() as s:
            await s.execute("UPDATE calls SET outcome = ? WHERE call_id = ?", (outcome, call_id))

    async def list_calls(
        self,
        device_id: str | None = None,
        *,
        end_reason: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[CallRecord]:
        """Calls, oldest first; optionally of one device, with one end reason, or started
        in [since, until)."""
        where: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("device_id = ?", device_id),
            ("end_reason = ?", end_reason),
            ("created_at >= ?", since),
            ("created_at < ?", until),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        async with self.db.session() as s:
            rows = await s.fetchall(
                f"SELECT {_CALL_COLUMNS} FROM calls{condition} ORDER BY created_at, call_id",
                params,
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
                f"INSERT INTO calls ({_CALL_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    (device_id, public_key, name, status, created_at, flagged_at, flag_reason, group) = row[:8]
    settings, group_settings = row[8:10]
    last_seen, firmware, board, state, last_error, clock_offset_s = row[10:]
    return Device(
        device_id=device_id,
        public_key=bytes(public_key),
        name=name,
        status=DeviceStatus(status),
        created_at=created_at,
        flagged_at=flagged_at,
        flag_reason=None if flag_reason is None else FlagReason(flag_reason),
        group=group,
        settings=_settings(settings),
        group_settings=_settings(group_settings),
        last_seen=last_seen,
        firmware=firmware,
        board=board,
        state=state,
        last_error=last_error,
        clock_offset_s=clock_offset_s,
    )


def _code(row: Row) -> EnrollmentCode:
    code_hash, label, created_at, expires_at, used_at, device_id, requires_approval, group = row
    return EnrollmentCode(
        code_hash, label, created_at, expires_at, used_at, device_id, bool(requires_approval), group
    )


def _json(settings: Mapping[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def _settings(text: str | None) -> Mapping[str, Any]:
    """Stored settings JSON (written by `_json` from validated settings) as a read-only map."""
    if not text:
        return MappingProxyType({})
    value = json.loads(text)
    return MappingProxyType(value if isinstance(value, dict) else {})


def _add_action(s: SyncSession, action: AdminAction) -> None:
    s.execute(
        f"INSERT INTO admin_actions ({_ACTION_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
        (action.at, action.actor, action.action, action.target, _json(action.detail)),
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
        f"  INSERT INTO calls ({_CALL_INSERT_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? FROM n"
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


def _admit_grant_in_one(
    s: SyncSession, nonce: Nonce, grant: HeldGrant, keep_since: float, since: float, limit: int
) -> tuple[Admission, bool]:
    """`admit_grant`'s unit as one statement (PostgreSQL: DML in WITH). Every part sees the
    grants as they were before it, as the unit's count did before its delete and insert."""
    row = s.fetchone(
        "WITH n AS ("
        "  INSERT INTO nonces (device_id, nonce, expires_at) VALUES (?, ?, ?)"
        "  ON CONFLICT (device_id, nonce) DO NOTHING RETURNING device_id),"
        " d AS (SELECT status FROM devices WHERE device_id = ?),"
        " ok AS (SELECT 1 FROM n WHERE (SELECT status FROM d) = ?"
        "  AND (SELECT COUNT(*) FROM grants WHERE device_id = ? AND created_at > ?) < ?),"
        " gone AS (DELETE FROM grants WHERE device_id = ? AND expires_at < ?"
        "  AND EXISTS (SELECT 1 FROM ok)),"
        f" g AS (INSERT INTO grants ({_GRANT_COLUMNS}) SELECT ?, ?, ?, ?, ? FROM ok"
        "  RETURNING call_id)"
        " SELECT (SELECT COUNT(*) FROM n), (SELECT status FROM d), (SELECT COUNT(*) FROM g)",
        (
            nonce.device_id,
            nonce.value,
            nonce.expires_at,
            nonce.device_id,
            DeviceStatus.APPROVED.value,
            grant.device_id,
            since,
            limit,
            grant.device_id,
            keep_since,
            grant.call_id,
            grant.device_id,
            grant.room,
            grant.created_at,
            grant.expires_at,
        ),
    )
    assert row is not None
    fresh, status, added = row
    if not fresh:
        return Admission(fresh=False, status=None), False
    admission = Admission(fresh=True, status=None if status is None else DeviceStatus(status))
    return admission, bool(added)


def _check_in_in_one(
    s: SyncSession, nonce: Nonce, report: DeviceReport, now: float, clock_offset_s: float
) -> tuple[Admission, Device | None]:
    """`check_in`'s unit as one statement (PostgreSQL: DML in WITH). The final SELECT sees
    the row as it was before the UPDATE, so what was written is laid over it here."""
    seen = (now, report.firmware, report.board, report.state, report.last_error, clock_offset_s)
    row = s.fetchone(
        "WITH n AS ("
        "  INSERT INTO nonces (device_id, nonce, expires_at) VALUES (?, ?, ?)"
        "  ON CONFLICT (device_id, nonce) DO NOTHING RETURNING device_id),"
        " u AS ("
        "  UPDATE devices SET last_seen = ?, firmware = ?, board = ?, state = ?,"
        "  last_error = ?, clock_offset_s = ?"
        "  WHERE device_id = (SELECT device_id FROM n) AND status IN (?, ?) RETURNING 1)"
        f" SELECT (SELECT COUNT(*) FROM n), (SELECT COUNT(*) FROM u), {_DEVICE_ROW}"
        " FROM (SELECT 1) AS one LEFT JOIN devices d ON d.device_id = ?"
        " LEFT JOIN device_groups g ON g.name = d.group_name",
        (
            nonce.device_id,
            nonce.value,
            nonce.expires_at,
            *seen,
            DeviceStatus.APPROVED.value,
            DeviceStatus.PENDING.value,
            nonce.device_id,
        ),
    )
    assert row is not None
    fresh, updated, device_row = row[0], row[1], row[2:]
    if not fresh:
        return Admission(fresh=False, status=None), None
    if device_row[0] is None:
        return Admission(fresh=True, status=None), None
    device = _device(device_row)
    if updated:
        last_seen, firmware, board, state, last_error, offset = seen
        device = replace(
            device,
            last_seen=last_seen,
            firmware=firmware,
            board=board,
            state=state,
            last_error=last_error,
            clock_offset_s=offset,
        )
    return Admission(fresh=True, status=device.status), device


def _approved(admission: Admission) -> bool:
    return admission.fresh and admission.status is DeviceStatus.APPROVED


def _add_call_within_rate(s: SyncSession, call: CallRecord, *, since: float, limit: int) -> bool:
    return (
        s.execute(
            f"INSERT INTO calls ({_CALL_INSERT_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?"
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
