"""SQLite (WAL) off the event loop: a few connections, each used by one task at a time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

from provisioning.errors import StorageConflictError, StorageError, StorageUnavailableError
from provisioning.storage.base import Row
from provisioning.storage.units import Unit, UnitRunner

T = TypeVar("T")


@contextlib.contextmanager
def _translated(path: Path) -> Iterator[None]:
    """sqlite3's errors as ours: a locked or busy database is "unavailable", not a bug."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise StorageConflictError(f"constraint failed: {exc}") from exc
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise StorageUnavailableError(f"database {path} is busy: {text}") from exc
        raise StorageError(f"database {path}: {text}") from exc
    except sqlite3.Error as exc:
        raise StorageError(f"database {path}: {exc}") from exc


class SqliteDatabase:
    """`connections` sqlite3 connections on a thread pool of the same size.

    A statement waits at most `busy_timeout_s` for another process's write lock,
    then fails with `StorageUnavailableError`; a request waits at most
    `acquire_timeout_s` for a free connection. In WAL mode readers are not blocked
    by a writer, so a long write elsewhere stalls only the requests that write.
    """

    dialect: Literal["sqlite"] = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        connections: int = 4,
        busy_timeout_s: float = 5.0,
        acquire_timeout_s: float = 10.0,
    ) -> None:
        self.path = path
        self._size = connections
        self._busy_timeout_s = busy_timeout_s
        self._acquire_timeout_s = acquire_timeout_s
        self._executor = ThreadPoolExecutor(connections, thread_name_prefix="sqlite")
        self._free: asyncio.Queue[sqlite3.Connection] = asyncio.Queue()
        self._all: list[sqlite3.Connection] = []
        self.units = UnitRunner(
            name="sqlite-units",
            connect=lambda: _SqliteUnitConnection(self._connect()),
            translated=lambda: _translated(self.path),
        )

    async def open(self) -> None:
        """Create the file (0600, in a 0700 directory if it makes one) and connect."""
        try:
            for _ in range(self._size):
                connection = await self._run(self._connect)
                self._all.append(connection)
                self._free.put_nowait(connection)
            await self.units.start()
        except BaseException:
            await self.aclose()
            raise

    def _connect(self) -> sqlite3.Connection:
        with _translated(self.path):
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                # Created 0600 before SQLite opens it; SQLite gives -wal and -shm the same mode.
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            except OSError as exc:
                raise StorageError(f"cannot create database {self.path}: {exc.strerror}") from exc
            # Autocommit; transactions are explicit. Used by one task at a time, on any thread.
            connection = sqlite3.connect(
                self.path,
                isolation_level=None,
                timeout=self._busy_timeout_s,
                check_same_thread=False,
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
            return connection

    async def aclose(self) -> None:
        """Close every connection and stop the threads; safe to call twice."""
        await self.units.aclose()
        connections, self._all = self._all, []
        for connection in connections:
            await self._run(connection.close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the pool; a cancelled caller still waits for the thread to finish,
        so a connection is never handed on while a statement runs on it."""
        work = self._executor.submit(fn)
        try:
            return await asyncio.wrap_future(work)
        except asyncio.CancelledError:
            # Cancelling the wrapper cannot stop a statement that has started: wait for it.
            if not work.cancelled():
                await asyncio.wait([asyncio.wrap_future(work)])
            raise

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[sqlite3.Connection]:
        try:
            connection = self._free.get_nowait()  # the usual case: no timer needed
        except asyncio.QueueEmpty:
            try:
                async with asyncio.timeout(self._acquire_timeout_s):
                    connection = await self._free.get()
            except TimeoutError as exc:
                raise StorageUnavailableError(f"database {self.path}: no free connection") from exc
        try:
            yield connection
        finally:
            self._free.put_nowait(connection)

    async def run(self, unit: Unit[T]) -> T:
        """Run `unit` in a write transaction, batched with other waiting units (units.py)."""
        return await self.units.run(unit)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[_SqliteSession]:
        """A connection whose statements each commit on their own."""
        async with self._connection() as connection:
            yield _SqliteSession(self, connection)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteSession]:
        """`BEGIN IMMEDIATE` … `COMMIT`, or `ROLLBACK` on any error or cancellation."""
        async with self._connection() as connection:
            session = _SqliteSession(self, connection)
            await session.execute("BEGIN IMMEDIATE")
            try:
                yield session
            except BaseException:
                await session.rollback()
                raise
            await session.execute("COMMIT")


class _SqliteSession:
    def __init__(self, db: SqliteDatabase, connection: sqlite3.Connection) -> None:
        self._db = db
        self._connection = connection

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def translated() -> T:
            with _translated(self._db.path):
                return fn(self._connection)

        return await self._db._run(translated)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self._call(lambda c: c.execute(sql, tuple(params)).rowcount)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row = await self._call(lambda c: c.execute(sql, tuple(params)).fetchone())
        return None if row is None else tuple(row)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        rows = await self._call(lambda c: c.execute(sql, tuple(params)).fetchall())
        return [tuple(row) for row in rows]

    async def rollback(self) -> None:
        await self._call(lambda c: c.execute("ROLLBACK") if c.in_transaction else None)


class _SqliteUnitConnection:
    """A connection of the unit runner's thread (units.py)."""

    begin_sql = "BEGIN IMMEDIATE"

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._connection.execute(sql, tuple(params)).rowcount

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row = self._connection.execute(sql, tuple(params)).fetchone()
        return None if row is None else tuple(row)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [tuple(row) for row in self._connection.execute(sql, tuple(params)).fetchall()]

    def close(self) -> None:
        self._connection.close()
