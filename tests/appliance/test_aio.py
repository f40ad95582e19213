"""The async toolkit: cancel-and-wait keeps the caller's own cancellation and task errors."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from appliance.aio import TaskSet, cancel_and_wait, join_tasks

pytestmark = pytest.mark.unit


async def _forever() -> None:
    await asyncio.Event().wait()


async def _fail_on_cancel() -> None:
    try:
        await asyncio.Event().wait()
    finally:
        raise OSError("cleanup failed")


async def _stubborn(release: asyncio.Event) -> None:
    """A task that takes a while to stop: its cleanup waits for `release`."""
    try:
        await asyncio.Event().wait()
    finally:
        await release.wait()


async def test_cancel_and_wait_cancels_and_awaits_the_task() -> None:
    task = asyncio.create_task(_forever(), name="forever")
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait(task)
    assert task.cancelled()


async def test_cancel_and_wait_accepts_none_and_finished_tasks() -> None:
    done = asyncio.create_task(asyncio.sleep(0), name="done")
    await done
    async with asyncio.timeout(5):
        await cancel_and_wait(None, done)
    assert done.done() and not done.cancelled()


async def test_cancel_and_wait_propagates_the_callers_own_cancellation() -> None:
    release = asyncio.Event()
    child = asyncio.create_task(_stubborn(release), name="stubborn")
    await asyncio.sleep(0)
    waiting = asyncio.Event()

    async def owner() -> str:
        waiting.set()
        await cancel_and_wait(child)
        return "carried on as if nothing happened"

    caller = asyncio.create_task(owner(), name="owner")
    async with asyncio.timeout(5):
        await waiting.wait()
        await asyncio.sleep(0)  # the owner is now waiting for the child
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
    assert caller.cancelled(), "the caller's cancellation was swallowed"
    release.set()
    async with asyncio.timeout(5):
        await asyncio.wait({child})
    assert child.cancelled()


async def test_a_task_error_is_logged_not_hidden(caplog: pytest.LogCaptureFixture) -> None:
    died = asyncio.create_task(_boom(), name="dies-early")
    fails_on_cancel = asyncio.create_task(_fail_on_cancel(), name="fails-on-cancel")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="appliance.aio"):
        async with asyncio.timeout(5):
            await cancel_and_wait(died, fails_on_cancel)
    failed = {r.getMessage(): r.exc_info for r in caplog.records}
    assert set(failed) == {"task dies-early failed", "task fails-on-cancel failed"}
    assert all(info is not None and isinstance(info[1], OSError) for info in failed.values())


async def test_join_tasks_waits_without_cancelling_and_logs_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    finished = asyncio.create_task(asyncio.sleep(0.01, result=7), name="finishes")
    died = asyncio.create_task(_boom(), name="dies")
    with caplog.at_level(logging.ERROR, logger="appliance.aio"):
        async with asyncio.timeout(5):
            await join_tasks(finished, died)
    assert finished.result() == 7
    assert [r.getMessage() for r in caplog.records] == ["task dies failed"]


async def test_join_tasks_cancelled_caller_cancels_the_tasks() -> None:
    child = asyncio.create_task(_forever(), name="forever")
    caller = asyncio.create_task(join_tasks(child), name="joiner")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    caller.cancel()
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await caller
        await asyncio.wait({child})
    assert child.cancelled()


async def test_a_task_cannot_cancel_and_wait_for_itself() -> None:
    async def itself() -> None:
        current = asyncio.current_task()
        assert current is not None
        with pytest.raises(RuntimeError):
            await join_tasks(current)

    async with asyncio.timeout(5):
        await asyncio.create_task(itself(), name="itself")


async def _boom() -> None:
    raise OSError("boom")


async def test_task_set_closes_everything() -> None:
    tasks = TaskSet()
    release = asyncio.Event()
    spawned = [
        tasks.spawn(_forever(), "a"),
        tasks.spawn(_forever(), "b"),
        tasks.spawn(_stubborn(release), "c"),
    ]
    assert [t.get_name() for t in spawned] == ["a", "b", "c"]
    assert len(tasks) == 3
    await asyncio.sleep(0)
    closing = asyncio.create_task(tasks.aclose(), name="close")
    await asyncio.sleep(0.01)
    assert not closing.done(), "aclose returned before every task had ended"
    release.set()
    async with asyncio.timeout(5):
        await closing
    assert all(t.cancelled() for t in spawned)
    assert len(tasks) == 0
    leftover = _forever()
    with pytest.raises(RuntimeError):
        tasks.spawn(leftover, "too-late")


async def test_task_set_reports_each_failure_once_when_it_happens() -> None:
    errors: list[tuple[str, BaseException]] = []

    def on_error(task: asyncio.Task[Any], exc: BaseException) -> None:
        errors.append((task.get_name(), exc))

    tasks = TaskSet(on_error=on_error)
    tasks.spawn(_boom(), "boom")
    tasks.spawn(_fail_on_cancel(), "fails-on-cancel")
    async with asyncio.timeout(5):
        while not errors:
            await asyncio.sleep(0)
    assert [name for name, _ in errors] == ["boom"], "reported as soon as the task died"
    assert len(tasks) == 1
    async with asyncio.timeout(5):
        await tasks.aclose()
    assert [name for name, _ in errors] == ["boom", "fails-on-cancel"]
    assert all(isinstance(exc, OSError) for _, exc in errors)


async def test_task_set_logs_failures_without_a_handler(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet()
    with caplog.at_level(logging.ERROR, logger="appliance.aio"):
        task = tasks.spawn(_boom(), "boom")
        async with asyncio.timeout(5):
            await asyncio.wait({task})
            await asyncio.sleep(0)
            await tasks.aclose()
    assert [r.getMessage() for r in caplog.records] == ["task boom failed"]


async def test_task_set_aclose_propagates_the_callers_cancellation() -> None:
    tasks = TaskSet()
    release = asyncio.Event()
    child = tasks.spawn(_stubborn(release), "stubborn")
    await asyncio.sleep(0)
    closer = asyncio.create_task(tasks.aclose(), name="closer")
    await asyncio.sleep(0.01)
    closer.cancel()
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await closer
    release.set()
    async with asyncio.timeout(5):
        await asyncio.wait({child})
