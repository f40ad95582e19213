"""SQLite storage for enrollment codes, devices, nonces and calls behind one small class."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from provisioning.errors import StorageError
from provisioning.models import CallRecord, Device, DeviceStatus, EnrollmentCode

SCHEMA_VERSION = 1

# Plain types and standard SQL only, so a PostgreSQL backend can reuse the statements.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS schema_version (
        version INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS enrollment_codes (
        code_hash TEXT PRIMARY KEY,
        label TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        used_at DOUBLE PRECISION,
        device_id TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS devices (
        device_id TEXT PRIMARY KEY,
        public_key BLOB NOT NULL UNIQUE,
        name TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('approved', 'revoked')),
        created_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS nonces (
        device_id TEXT NOT NULL,
        nonce TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (device_id, nonce)
    )""",
    "CREATE INDEX IF NOT EXISTS nonces_expires_at ON nonces (expires_at)",
    """CREATE TABLE IF NOT EXISTS calls (
        call_id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL REFERENCES devices (device_id),
        room TEXT NOT NULL,
        trigger TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        token_expires_at DOUBLE PRECISION NOT NULL,
        ended_at DOUBLE PRECISION,
        end_reason TEXT,
        duration_ms INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS calls_device_created ON calls (device_id, created_at)",
)

_CALL_COLUMNS = (
    "call_id, device_id, room, trigger, created_at, token_expires_at,"
    " ended_at, end_reason, duration_ms"
)


class Storage:
    """One SQLite connection (WAL) holding the backend's state; schema created on open.

    Calls are synchronous: each statement is short, and the backend serves a
    fleet of kiosks, not a web-scale load.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._in_transaction = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit; multi-statement changes go through `transaction()`.
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._create_schema()
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open database {self.path}: {exc}") from exc

    def _create_schema(self) -> None:
        with self._raw_transaction():
            for statement in _SCHEMA:
                self._db.execute(statement)
            row = self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = row[0]
            if version is None:
                self._db.execute(
                    "INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,)
                )
            elif version > SCHEMA_VERSION:
                raise StorageError(
                    f"database {self.path} has schema version {version}, "
                    f"this code knows up to {SCHEMA_VERSION}"
                )

    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        row = self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> Storage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _raw_transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the enclosed calls atomically (nesting joins the outer transaction)."""
        if self._in_transaction:
            yield
            return
        self._in_transaction = True
        try:
            with self._raw_transaction():
                yield
        finally:
            self._in_transaction = False

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise StorageError(f"database error: {exc}") from exc

    # Enrollment codes

    def add_enrollment_code(self, code: EnrollmentCode) -> None:
        """Store a new enrollment code (by hash)."""
        self._execute(
            "INSERT INTO enrollment_codes"
            " (code_hash, label, created_at, expires_at, used_at, device_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                code.code_hash,
                code.label,
                code.created_at,
                code.expires_at,
                code.used_at,
                code.device_id,
            ),
        )

    def get_enrollment_code(self, code_hash: str) -> EnrollmentCode | None:
        """The enrollment code with this hash, if any."""
        row = self._execute(
            "SELECT code_hash, label, created_at, expires_at, used_at, device_id"
            " FROM enrollment_codes WHERE code_hash = ?",
            (code_hash,),
        ).fetchone()
        return None if row is None else EnrollmentCode(*row)

    def use_enrollment_code(self, code_hash: str, device_id: str, now: float) -> bool:
        """Mark an unused, unexpired code as used by `device_id`; False if it cannot be."""
        cursor = self._execute(
            "UPDATE enrollment_codes SET used_at = ?, device_id = ?"
            " WHERE code_hash = ? AND used_at IS NULL AND expires_at > ?",
            (now, device_id, code_hash, now),
        )
        return cursor.rowcount == 1

    # Devices

    def add_device(self, device: Device) -> None:
        """Store a new device; raises `sqlite3.IntegrityError` if id or key exists."""
        self._execute(
            "INSERT INTO devices (device_id, public_key, name, status, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                device.device_id,
                device.public_key,
                device.name,
                device.status.value,
                device.created_at,
            ),
        )

    def get_device(self, device_id: str) -> Device | None:
        """The device with this id, if any."""
        row = self._execute(
            "SELECT device_id, public_key, name, status, created_at FROM devices"
            " WHERE device_id = ?",
            (device_id,),
        ).fetchone()
        return None if row is None else _device(row)

    def get_device_by_public_key(self, public_key: bytes) -> Device | None:
        """The device holding this raw public key, if any."""
        row = self._execute(
            "SELECT device_id, public_key, name, status, created_at FROM devices"
            " WHERE public_key = ?",
            (public_key,),
        ).fetchone()
        return None if row is None else _device(row)

    def list_devices(self) -> list[Device]:
        """All devices, oldest first."""
        rows = self._execute(
            "SELECT device_id, public_key, name, status, created_at FROM devices"
            " ORDER BY created_at, device_id"
        ).fetchall()
        return [_device(row) for row in rows]

    def set_device_status(self, device_id: str, status: DeviceStatus) -> bool:
        """Change a device's status; False if there is no such device."""
        cursor = self._execute(
            "UPDATE devices SET status = ? WHERE device_id = ?", (status.value, device_id)
        )
        return cursor.rowcount == 1

    # Nonces

    def add_nonce(self, device_id: str, nonce: str, expires_at: float) -> bool:
        """Remember a nonce; False if this device already used it and it is remembered."""
        try:
            self._execute(
                "INSERT INTO nonces (device_id, nonce, expires_at) VALUES (?, ?, ?)",
                (device_id, nonce, expires_at),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    def purge_nonces(self, now: float) -> int:
        """Forget nonces whose window has passed; returns how many."""
        return self._execute("DELETE FROM nonces WHERE expires_at <= ?", (now,)).rowcount

    def count_nonces(self) -> int:
        """How many nonces are remembered."""
        return int(self._execute("SELECT COUNT(*) FROM nonces").fetchone()[0])

    # Calls

    def add_call(self, call: CallRecord) -> None:
        """Record a new call."""
        self._execute(
            f"INSERT INTO calls ({_CALL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                call.call_id,
                call.device_id,
                call.room,
                call.trigger,
                call.created_at,
                call.token_expires_at,
                call.ended_at,
                call.end_reason,
                call.duration_ms,
            ),
        )

    def get_call(self, call_id: str) -> CallRecord | None:
        """The call with this id, if any."""
        row = self._execute(
            f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_id = ?", (call_id,)
        ).fetchone()
        return None if row is None else CallRecord(*row)

    def end_call(self, call_id: str, ended_at: float, reason: str, duration_ms: int) -> bool:
        """Record the end of a call that has not ended yet; False otherwise."""
        cursor = self._execute(
            "UPDATE calls SET ended_at = ?, end_reason = ?, duration_ms = ?"
            " WHERE call_id = ? AND ended_at IS NULL",
            (ended_at, reason, duration_ms, call_id),
        )
        return cursor.rowcount == 1

    def list_calls(self, device_id: str | None = None) -> list[CallRecord]:
        """Calls, oldest first, optionally of one device."""
        if device_id is None:
            rows = self._execute(
                f"SELECT {_CALL_COLUMNS} FROM calls ORDER BY created_at, call_id"
            ).fetchall()
        else:
            rows = self._execute(
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE device_id = ?"
                " ORDER BY created_at, call_id",
                (device_id,),
            ).fetchall()
        return [CallRecord(*row) for row in rows]

    def count_calls_since(self, device_id: str, since: float) -> tuple[int, float | None]:
        """How many calls the device started after `since`, and the oldest such start."""
        row = self._execute(
            "SELECT COUNT(*), MIN(created_at) FROM calls WHERE device_id = ? AND created_at > ?",
            (device_id, since),
        ).fetchone()
        return int(row[0]), row[1]


def _device(row: tuple[Any, ...]) -> Device:
    device_id, public_key, name, status, created_at = row
    return Device(
        device_id=device_id,
        public_key=bytes(public_key),
        name=name,
        status=DeviceStatus(status),
        created_at=created_at,
    )
