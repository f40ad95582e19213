"""Bytes per row of the backend's tables (indexes included), on the databases bench_tokens filled.

Two readings per table: as the run left the database (pages as random-key inserts
fill them), and after every call is given an end (as `POST /v1/calls/{id}/end`
writes it) and the database is compacted (SQLite `VACUUM`, PostgreSQL `VACUUM FULL`).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import psycopg

TABLES = ("devices", "enrollment_codes", "calls", "grants", "livekit_events", "nonces")
# What an ended call holds (an end reason of the shared vocabulary, a typical duration).
END_CALLS = (
    "UPDATE calls SET ended_at = created_at + 90, end_reason = 'user', duration_ms = 90000"
    " WHERE ended_at IS NULL"
)

TIMEOUT_S = 30.0
Sizes = dict[str, tuple[int, int]]  # table: (rows, bytes of the table and its indexes)


def _sqlite_sizes(connection: sqlite3.Connection) -> Sizes:
    sizes = {}
    for table in TABLES:
        (rows,) = connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        (size,) = connection.execute(
            "SELECT SUM(s.pgsize) FROM dbstat s JOIN sqlite_master m ON s.name = m.name"
            " WHERE m.tbl_name = ?",
            (table,),
        ).fetchone()
        sizes[table] = (int(rows), int(size))
    return sizes


def sqlite_sizes(path: Path) -> tuple[Sizes, Sizes]:
    """(as the run left it, calls ended and compacted) for a SQLite database file."""
    with closing(sqlite3.connect(path, isolation_level=None, timeout=TIMEOUT_S)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        as_run = _sqlite_sizes(connection)
        connection.execute(END_CALLS)
        connection.execute("VACUUM")
        return as_run, _sqlite_sizes(connection)


def _postgres_sizes(connection: psycopg.Connection[tuple[int, int]]) -> Sizes:
    sizes = {}
    for table in TABLES:
        # The main forks of the table and its indexes: the free-space and visibility maps are
        # a fixed few pages per relation, noise at a thousand rows and nothing at a million.
        row = connection.execute(
            f"SELECT (SELECT COUNT(*) FROM {table}), pg_relation_size('{table}')"
            " + (SELECT COALESCE(SUM(pg_relation_size(indexrelid)), 0) FROM pg_index"
            f" WHERE indrelid = '{table}'::regclass)"
        ).fetchone()
        assert row is not None
        sizes[table] = (int(row[0]), int(row[1]))
    return sizes


def postgres_sizes(dsn: str) -> tuple[Sizes, Sizes]:
    """(as the run left it, calls ended and compacted) for a PostgreSQL database."""
    options = f"-c statement_timeout={int(TIMEOUT_S * 1000)}"
    with psycopg.connect(
        dsn, autocommit=True, connect_timeout=int(TIMEOUT_S), options=options
    ) as connection:
        as_run = _postgres_sizes(connection)
        connection.execute(END_CALLS)
        connection.execute("VACUUM FULL")
        return as_run, _postgres_sizes(connection)
