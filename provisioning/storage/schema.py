"""Versioned schema migrations, written once for SQLite and PostgreSQL and applied on open."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from provisioning.errors import SchemaTooNewError
from provisioning.storage.base import Database, Dialect, Session

logger = logging.getLogger(__name__)

# Serializes migrations of backends starting at once on one PostgreSQL (any fixed number).
_PG_MIGRATION_LOCK = 0x6B696F736B

# The only type that differs between the two dialects.
_TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {"bytes": "BLOB"},
    "postgresql": {"bytes": "BYTEA"},
}


@dataclass(frozen=True)
class Migration:
    """One step of the schema: its version, what it does, and its statements."""

    version: int
    summary: str
    statements: tuple[str, ...]

    def sql(self, dialect: Dialect) -> list[str]:
        """The statements with the dialect's type names filled in."""
        return [statement.format(**_TYPES[dialect]) for statement in self.statements]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "enrollment codes, devices, nonces, calls",
        (
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
                public_key {bytes} NOT NULL UNIQUE,
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
        ),
    ),
    Migration(
        2,
        "LiveKit webhook events (deduplicated by id), device flags",
        (
            """CREATE TABLE IF NOT EXISTS livekit_events (
                event_id TEXT PRIMARY KEY,
                event TEXT NOT NULL,
                room TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                received_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS livekit_events_room ON livekit_events (room)",
            """CREATE INDEX IF NOT EXISTS livekit_events_received_at
                ON livekit_events (received_at)""",
            "ALTER TABLE devices ADD COLUMN flagged_at DOUBLE PRECISION",
            "ALTER TABLE devices ADD COLUMN flag_reason TEXT",
        ),
    ),
    Migration(
        3,
        "held call grants: minted ahead for an idle device, a call only once used",
        (
            """CREATE TABLE IF NOT EXISTS grants (
                call_id TEXT PRIMARY KEY,
                device_id TEXT NOT NULL REFERENCES devices (device_id),
                room TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS grants_device_created ON grants (device_id, created_at)",
        ),
    ),
    Migration(
        5,
        "call ledger: who was in each call's room and when, what is known of the room",
        (
            """CREATE TABLE IF NOT EXISTS call_participants (
                room TEXT NOT NULL,
                sid TEXT NOT NULL,
                identity TEXT NOT NULL,
                kind TEXT NOT NULL,
                joined_at DOUBLE PRECISION,
                left_at DOUBLE PRECISION,
                disconnect_reason TEXT,
                PRIMARY KEY (room, sid)
            )""",
            """CREATE TABLE IF NOT EXISTS call_rooms (
                room TEXT PRIMARY KEY,
                finished_at DOUBLE PRECISION,
                seen_at DOUBLE PRECISION,
                gone_at DOUBLE PRECISION
            )""",
            "CREATE INDEX IF NOT EXISTS calls_open ON calls (created_at) WHERE ended_at IS NULL",
        ),
    ),
    Migration(
        7,
        "admin tokens (hashed, scoped, revocable) and console sessions",
        (
            """CREATE TABLE IF NOT EXISTS admin_tokens (
                token_id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                scope TEXT NOT NULL CHECK (scope IN ('read', 'read-write')),
                token_hash TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                last_used_at DOUBLE PRECISION,
                revoked_at DOUBLE PRECISION
            )""",
            """CREATE UNIQUE INDEX IF NOT EXISTS admin_tokens_active_name
                ON admin_tokens (name) WHERE revoked_at IS NULL""",
            """CREATE TABLE IF NOT EXISTS admin_sessions (
                session_hash TEXT PRIMARY KEY,
                token_id TEXT NOT NULL REFERENCES admin_tokens (token_id),
                csrf_token TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS admin_sessions_expires_at ON admin_sessions (expires_at)",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


async def migrate(db: Database, *, location: str) -> int:
    """Bring the schema up to `LATEST_VERSION`; refuse a database that is newer.

    Each step runs in its own transaction with its version row, so a crash leaves
    the database at the last complete step. Returns the version it is at.
    """
    async with db.transaction() as session:
        await _lock(db.dialect, session)
        await session.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
        )
        current = await _current(session)
    if current > LATEST_VERSION:
        raise SchemaTooNewError(
            f"database {location} has schema version {current}, "
            f"this backend knows up to {LATEST_VERSION}: upgrade the backend"
        )
    for migration in MIGRATIONS:
        if migration.version <= current:
            continue
        async with db.transaction() as session:
            await _lock(db.dialect, session)
            # Another backend may have applied it while this one waited for the lock.
            if await _current(session) >= migration.version:
                continue
            for statement in migration.sql(db.dialect):
                await session.execute(statement)
            await session.execute(
                "INSERT INTO schema_version (version) VALUES (?)", (migration.version,)
            )
        logger.info(
            "schema migrated",
            extra={"schema_version": migration.version, "summary": migration.summary},
        )
        current = migration.version
    return current


async def _current(session: Session) -> int:
    row = await session.fetchone("SELECT MAX(version) FROM schema_version")
    return 0 if row is None or row[0] is None else int(row[0])


async def _lock(dialect: Dialect, session: Session) -> None:
    # SQLite's write transaction (BEGIN IMMEDIATE) already serializes writers.
    if dialect == "postgresql":
        await session.fetchone("SELECT pg_advisory_xact_lock(?)", (_PG_MIGRATION_LOCK,))
