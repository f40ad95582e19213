"""Async toolkit: a resource `async with` starts and closes, cancel-and-wait, a task set."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class AsyncResource:
    """`async with r:` awaits `r.start()` (closing again if that fails) and `r.aclose()` on exit."""

    async def start(self) -> None:
        """Acquire what the resource needs; by default nothing."""

    async def aclose(self) -> None:
        """Release everything `start` acquired, even after a partial start."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def join_tasks(*tasks: asyncio.Task[Any] | None) -> None:
    """Wait until every task has ended; a task's error is logged, never raised or hidden.

    Cancelling the caller cancels the tasks, as `await task` would, and the caller's
    CancelledError propagates (it is never mistaken for the task's own cancellation).
    """
    pending = {task for task in tasks if task is not None}
    await _wait(pending)
    for task in pending:
        _report(task)


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel the tasks and wait until they have ended; see `join_tasks` for errors.

    A task's error (one it had already died of, or one raised while it was being cancelled)
    is logged here, at the owner that stops it, not raised: shutdown goes on releasing the
    rest. If the caller itself is cancelled while waiting, its CancelledError propagates.
    """
    for task in tasks:
        if task is not None:
            task.cancel()
    await join_tasks(*tasks)


async def _wait(pending: set[asyncio.Task[Any]]) -> None:
    if not pending:
        return
    if asyncio.current_task() in pending:
        raise RuntimeError("a task cannot wait for itself")
    try:
        # asyncio.wait neither raises the tasks' errors nor swallows our own cancellation.
        await asyncio.wait(pending)
    except asyncio.CancelledError:
        for task in pending:
            task.cancel()
        raise


def _report(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        logger.error("task %s failed", task.get_name(), exc_info=exc)


class TaskSet:
    """Named background tasks with one owner: each failure is reported once, when the task
    ends (to `on_error`, else logged), and `aclose` cancels and awaits them all."""

    def __init__(
        self, *, on_error: Callable[[asyncio.Task[Any], BaseException], None] | None = None
    ) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_error = on_error
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Start `coro` as a task named `name`, owned by this set; refused once closed."""
        if self._closed:
            coro.close()
            raise RuntimeError(f"task set closed: not starting {name}")
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    @property
    def closed(self) -> bool:
        """Whether `aclose` was called (and `spawn` refuses)."""
        return self._closed

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    async def aclose(self) -> None:
        """Cancel every task and wait until all have ended; no task can be spawned after."""
        self._closed = True
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        await _wait(tasks)  # failures were reported as each task ended

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or (exc := task.exception()) is None:
            return
        if self._on_error is None:
            logger.error("task %s failed", task.get_name(), exc_info=exc)
            return
        try:
            self._on_error(task, exc)
        except Exception:
            logger.exception("error handler failed for task %s", task.get_name())
