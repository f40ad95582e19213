"""Units of work: the hot requests' statements, run in batches on one thread per database.

A request that signs in a device and starts its call needs three or four statements.
Run one by one, each a hop from the event loop to a database thread and back, those hops
cost more CPU than the statements themselves. A unit is a plain function of a
`SyncSession`: it runs on the runner's own thread, whole, and the runner takes every unit
waiting when it is free and runs them in one transaction (one commit, one fsync on
SQLite, one wake-up of the event loop): group commit. Under load the cost of a hop is
shared by the batch; when the backend is quiet a batch is one unit and nothing waits.

A unit must be a function of its arguments and the database alone: if one unit of a
batch raises, the batch is rolled back and each unit runs again in a transaction of its
own, so the others are unaffected and the failing one gets its own error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Generic, Protocol, TypeVar

from provisioning.errors import StorageConflictError, StorageError
from provisioning.storage.base import Row

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SyncSession(Protocol):
    """Statements inside a unit's transaction; SQL uses `?` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        ...

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """The first row of a query, if any."""
        ...

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Every row of a query."""
        ...


class UnitConnection(SyncSession, Protocol):
    """A dialect's connection as the runner drives it (on the runner's thread only)."""

    begin_sql: str

    def close(self) -> None:
        """Close the connection."""
        ...


Unit = Callable[[SyncSession], T]


class _Pending(Generic[T]):
    __slots__ = ("failed", "future", "outcome", "unit")

    def __init__(self, unit: Unit[T], future: asyncio.Future[T]) -> None:
        self.unit = unit
        self.future = future
        self.outcome: Any = None
        self.failed = False


class UnitRunner:
    """One thread and one connection that run units in batches; `start`, `run`, `aclose`.

    `connect` opens the connection (on the thread); `translated` turns the driver's
    errors into `StorageError`s. A connection that fails is reopened for the next batch.
    """

    def __init__(
        self,
        *,
        name: str,
        connect: Callable[[], UnitConnection],
        translated: Callable[[], AbstractContextManager[None]],
    ) -> None:
        self._name = name
        self._connect = connect
        self._translated = translated
        # Group commit: one batch at a time is with the thread. Units made meanwhile wait
        # in the outbox and go together when it is done (or at the end of this event-loop
        # iteration, when the thread is idle): one wake-up and one commit for them all.
        self._queue: queue.SimpleQueue[list[_Pending[Any]] | None] = queue.SimpleQueue()
        self._outbox: list[_Pending[Any]] = []
        self._in_flight = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection: UnitConnection | None = None
        self._closed = False
        # Read by benchmarks and tests: how many units ran, in how many transactions.
        self.units_run = 0
        self.transactions = 0

    async def start(self) -> None:
        """Start the thread and open its connection; raises the connection's `StorageError`."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
        self._thread.start()
        await self.run(lambda s: None)

    async def run(self, unit: Unit[T]) -> T:
        """Run `unit` in a transaction (shared with the other units waiting) and return its
        result. A caller cancelled before its unit started skips it; once started, it is
        committed with its batch."""
        if self._closed or self._loop is None:
            raise RuntimeError("the unit runner is not running")
        future: asyncio.Future[T] = self._loop.create_future()
        if not self._outbox and not self._in_flight:
            self._loop.call_soon(self._hand_over)
        self._outbox.append(_Pending(unit, future))
        return await future

    def _hand_over(self) -> None:
        if self._in_flight or not self._outbox:
            return
        outbox, self._outbox = self._outbox, []
        self._in_flight = True
        self._queue.put(outbox)

    def _done(self, batch: list[_Pending[Any]]) -> None:
        """On the loop: the thread finished `batch`; settle it and send what waited."""
        self._in_flight = False
        _settle(batch)
        self._hand_over()

    async def aclose(self) -> None:
        """Run what is queued, then stop the thread and close the connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._in_flight = False  # whatever is with the thread runs before the stop
            self._hand_over()
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
        logger.info(
            "database units run",
            extra={"units": self.units_run, "transactions": self.transactions},
        )

    # The runner's thread

    def _serve(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                self._run_batch(batch)
                self._resolve(batch)
        finally:
            self._disconnect()

    def _next_batch(self) -> list[_Pending[Any]] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = list(first)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            batch += item
        return batch

    def _run_batch(self, batch: list[_Pending[Any]]) -> None:
        # A unit whose caller gave up before it started is not run at all.
        live = [p for p in batch if not p.future.cancelled()]
        if not live:
            return
        if len(live) == 1 or not self._try_together(live):
            for pending in live:
                self._try_together([pending])

    def _try_together(self, batch: list[_Pending[Any]]) -> bool:
        """Run `batch` in one transaction. False when a unit raised in a batch of several
        (rolled back: the caller runs them one by one); otherwise every unit has its
        outcome, and an error of the database itself (begin, commit) is every unit's."""
        in_unit = False
        self.transactions += 1
        try:
            with self._translated():
                connection = self._connection or self._open()
                connection.execute(connection.begin_sql)
                try:
                    for pending in batch:
                        in_unit = True
                        pending.outcome = pending.unit(connection)
                        in_unit = False
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
                self.units_run += len(batch)
        except Exception as exc:  # handed to the awaiting callers
            if _may_have_broken_the_connection(exc):
                self._disconnect()
            if in_unit and len(batch) > 1:
                return False
            for pending in batch:
                pending.outcome, pending.failed = exc, True
            return True
        for pending in batch:
            pending.failed = False
        return True

    def _open(self) -> UnitConnection:
        self._connection = self._connect()
        return self._connection

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # a broken connection may fail to close
                logger.debug("closing a failed database connection failed", exc_info=True)

    def _resolve(self, batch: list[_Pending[Any]]) -> None:
        assert self._loop is not None
        # A closed loop: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._done, batch)


def _settle(batch: list[_Pending[Any]]) -> None:
    for pending in batch:
        if pending.future.done():
            continue
        if pending.failed:
            pending.future.set_exception(pending.outcome)
        else:
            pending.future.set_result(pending.outcome)


def _may_have_broken_the_connection(exc: BaseException) -> bool:
    return isinstance(exc, StorageError) and not isinstance(exc, StorageConflictError)
