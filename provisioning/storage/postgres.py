"""PostgreSQL through psycopg 3's async connection pool, for a fleet served by several backends."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

import psycopg
import psycopg.errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from provisioning.errors import StorageConflictError, StorageError, StorageUnavailableError
from provisioning.storage.base import Row
from provisioning.storage.units import Unit, UnitRunner

T = TypeVar("T")

# Errors that mean "the database cannot serve this now", not "this request is wrong".
_UNAVAILABLE = (
    PoolTimeout,
    psycopg.OperationalError,
    psycopg.errors.QueryCanceled,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
)


@contextlib.contextmanager
def _translated(location: str) -> Iterator[None]:
    """psycopg's errors as ours; the message names the database, never its password."""
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        raise StorageConflictError(f"constraint failed: {exc.diag.constraint_name}") from exc
    except _UNAVAILABLE as exc:
        raise StorageUnavailableError(
            f"database {location} is unavailable: {type(exc).__name__}"
        ) from exc
    except psycopg.Error as exc:
        raise StorageError(f"database {location}: {type(exc).__name__}: {exc}") from exc


@functools.lru_cache(maxsize=256)
def _placeholders(sql: str) -> str:
    # Our statements use `?` and contain no other `?` or `%`.
    return sql.replace("?", "%s")


class PostgresDatabase:
    """A pool of up to `pool_size` connections; statements bounded by `statement_timeout_s`."""

    dialect: Literal["postgresql"] = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        location: str,
        password: str | None = None,
        pool_size: int = 10,
        statement_timeout_s: float = 5.0,
        acquire_timeout_s: float = 10.0,
    ) -> None:
        self.location = location
        self._acquire_timeout_s = acquire_timeout_s
        timeout_ms = int(statement_timeout_s * 1000)
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, int(acquire_timeout_s)),
            "options": f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
        }
        if password is not None:
            kwargs["password"] = password
        self.units = UnitRunner(
            name="postgres-units",
            connect=lambda: _PostgresUnitConnection(psycopg.connect(url, **kwargs)),
            translated=lambda: _translated(location),
        )
        self._pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs=kwargs,
            open=False,
            timeout=acquire_timeout_s,
            name="provisioning",
        )

    async def open(self) -> None:
        """Connect; raise `StorageUnavailableError` if the server cannot be reached in time."""
        with _translated(self.location):
            await self._pool.open(wait=True, timeout=self._acquire_timeout_s)
        try:
            await self.units.start()
        except BaseException:
            await self._pool.close()
            raise

    async def aclose(self) -> None:
        """Close every connection; safe to call twice."""
        await self.units.aclose()
        await self._pool.close()

    async def run(self, unit: Unit[T]) -> T:
        """Run `unit` in a transaction, batched with other waiting units (units.py)."""
        return await self.units.run(unit)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[_PostgresSession]:
        """A connection whose statements each commit on their own."""
        with _translated(self.location):
            async with self._pool.connection() as connection:
                yield _PostgresSession(self.location, connection)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresSession]:
        """A transaction: committed on exit, rolled back on any error."""
        with _translated(self.location):
            async with self._pool.connection() as connection, connection.transaction():
                yield _PostgresSession(self.location, connection)


class _PostgresSession:
    def __init__(self, location: str, connection: psycopg.AsyncConnection[Any]) -> None:
        self._location = location
        self._connection = connection

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with _translated(self._location):
            cursor = await self._connection.execute(_placeholders(sql), tuple(params))
            return cursor.rowcount

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with _translated(self._location):
            cursor = await self._connection.execute(_placeholders(sql), tuple(params))
            row = await cursor.fetchone()
        return None if row is None else tuple(row)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with _translated(self._location):
            cursor = await self._connection.execute(_placeholders(sql), tuple(params))
            rows = await cursor.fetchall()
        return [tuple(row) for row in rows]


class _PostgresUnitConnection:
    """A connection of the unit runner's thread (units.py); autocommit outside BEGIN."""

    begin_sql = "BEGIN"

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection
        # One cursor for every statement: the thread runs one at a time, and a new cursor
        # each (what Connection.execute makes) costs a fifth of a statement's client CPU.
        self._cursor = connection.cursor()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._cursor.execute(_placeholders(sql), tuple(params)).rowcount

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row = self._cursor.execute(_placeholders(sql), tuple(params)).fetchone()
        return None if row is None else tuple(row)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        rows = self._cursor.execute(_placeholders(sql), tuple(params)).fetchall()
        return [tuple(row) for row in rows]

    def close(self) -> None:
        self._connection.close()
