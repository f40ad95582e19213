"""Call worker processes, seen from the daemon: one process per call, a warm one waiting.

The LiveKit SDK keeps about half a megabyte of native memory for every room it has left
while a remote participant was still in it (livekit/rust-sdks#1378): a kiosk making calls
for months would grow without bound. So each call's room lives in its own process
(`worker.py`), ended with the call. `CallWorkers` keeps the next one started (from the
moment a call has joined, or the daemon started), so a press still goes straight to
LiveKit; see docs/call-worker.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import socket
import sys
from collections.abc import Awaitable, Callable

from appliance.aio import AsyncResource, cancel_and_wait
from appliance.call.wire import Channel, Message, WireError
from appliance.errors import CallError

logger = logging.getLogger(__name__)

# A worker has this long to import the SDK and start its native runtime (a Pi at boot is
# slow; this machine takes about 0.3 s).
START_TIMEOUT_S = 30.0
# After its socket is closed, a worker has this long to leave its room and exit.
EXIT_TIMEOUT_S = 10.0
# A press that waits longer than this for its worker is logged (it came right after a call).
SLOW_TAKE_S = 0.05
# How many of the last waits are kept (for the benchmarks).
WAITS_KEPT = 1000
# The loggers whose records the worker sends over (its own and the SDK's).
_FORWARDED = ("appliance", "livekit")


class CallWorker:
    """One worker process and our end of its socket. The owner reads with `receive`."""

    def __init__(self, process: asyncio.subprocess.Process, channel: Channel) -> None:
        self.pid = process.pid
        self._process = process
        self._channel = channel
        self._inbox: asyncio.Queue[bytes | Message | None] = asyncio.Queue()
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A warm worker may exit before anyone waits for it (the daemon stopping): its
        # failure is then nobody's to report, so asyncio is told it was seen.
        self._ready.add_done_callback(_seen)
        self._reader = asyncio.create_task(self._read(), name=f"call-worker-{self.pid}")

    @classmethod
    async def spawn(cls) -> CallWorker:
        """Start a worker and wait until its LiveKit runtime is up."""
        ours, theirs = socket.socketpair()
        level = min(logging.getLogger(name).getEffectiveLevel() for name in _FORWARDED)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "appliance.call.worker",
                "--fd",
                str(theirs.fileno()),
                "--log-level",
                str(level),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            channel = await Channel.over(ours)
        except BaseException:
            ours.close()
            process.kill()
            await process.wait()
            raise
        worker = cls(process, channel)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await asyncio.shield(worker._ready)
        except BaseException:
            await worker.aclose()
            raise
        logger.debug("call worker %d ready", worker.pid)
        return worker

    @property
    def alive(self) -> bool:
        """Whether the process runs and its socket is open."""
        return self._process.returncode is None and not self._reader.done()

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    def send(self, message: Message) -> None:
        self._channel.send(message)

    def send_audio(self, frame: bytes) -> None:
        self._channel.send_audio(frame)

    async def drain(self) -> None:
        await self._channel.drain()

    async def receive(self) -> bytes | Message | None:
        """The worker's next audio frame or message (logs are logged here); None once it
        has closed its end."""
        item = await self._inbox.get()
        if item is None:
            self._inbox.put_nowait(None)  # every later receive sees the end too
        return item

    async def aclose(self) -> None:
        """Close our end (the worker leaves its room and exits), wait, kill if it must."""
        await self._channel.aclose()
        try:
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                await self._process.wait()
        except TimeoutError:
            logger.warning("call worker %d did not exit: killed", self.pid)
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
        finally:
            # The reader ends by itself at the end of the stream; cancelled if we were.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self._reader)
            await cancel_and_wait(self._reader)
        if not self._ready.done():
            self._ready.cancel()

    async def _read(self) -> None:
        try:
            while (item := await self._channel.receive()) is not None:
                if isinstance(item, bytes):
                    self._inbox.put_nowait(item)
                elif item["type"] == "log":
                    self._log(item)
                elif item["type"] == "ready":
                    if not self._ready.done():
                        self._ready.set_result(None)
                else:
                    self._inbox.put_nowait(item)
        except WireError:
            logger.exception("call worker %d broke the wire protocol", self.pid)
        finally:
            if not self._ready.done():
                self._ready.set_exception(CallError("the call worker exited while starting"))
            self._inbox.put_nowait(None)

    def _log(self, item: Message) -> None:
        """A record the worker logged, through our own handlers (redaction included)."""
        name, level = str(item.get("name", __name__)), int(item.get("level", logging.INFO))
        target = logging.getLogger(name)
        if not target.isEnabledFor(level):
            return
        fields = item.get("fields")
        record = target.makeRecord(
            name,
            level,
            "(call worker)",
            0,
            str(item.get("msg", "")),
            (),
            None,
            extra=dict(fields) if isinstance(fields, dict) else None,
        )
        record.exc_text = str(item["exc"]) if item.get("exc") else None
        target.handle(record)


def give_back_freed_memory() -> None:
    """Return the heap pages this process has freed to the system (glibc's `malloc_trim`).

    A call passes 200 small frames a second through the daemon's heap; glibc keeps what
    they freed (about 50 kB a call here, growing for good) unless asked. Nothing without
    glibc's allocator.
    """
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


class CallWorkers(AsyncResource):
    """The daemon's call workers: one started ahead, handed to a call, ended after it."""

    def __init__(
        self,
        *,
        spawn: Callable[[], Awaitable[CallWorker]] = CallWorker.spawn,
        after_call: Callable[[], None] = give_back_freed_memory,
    ) -> None:
        self._spawn = spawn
        self._after_call = after_call
        self._spare: asyncio.Task[CallWorker] | None = None
        self._busy: set[CallWorker] = set()
        self._closed = False
        self.waits_s: list[float] = []  # per take, how long it waited for a worker to start

    async def start(self) -> None:
        self.prepare()

    def prepare(self) -> None:
        """Start the next call's worker now, unless one is started or starting."""
        if self._spare is None and not self._closed:
            self._spare = asyncio.create_task(self._start_one(), name="call-worker-start")

    @property
    def pids(self) -> list[int]:
        """The live worker processes: the waiting one once started, and any call's."""
        workers = list(self._busy)
        spare = self._spare
        if spare is not None and spare.done() and not spare.cancelled() and not spare.exception():
            workers.append(spare.result())
        return [w.pid for w in workers if w.alive]

    async def take(self) -> CallWorker:
        """A started worker for one call (the spare, or one started now); CallError if none
        could be started."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        for _attempt in (1, 2):
            if self._closed:
                raise CallError("the call workers are closed")
            self.prepare()
            task = self._spare
            assert task is not None
            try:
                # Shielded: a caller cancelled meanwhile leaves the start to the next one.
                worker = await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.cancelled():
                    raise CallError("the call workers are closed") from None
                raise
            except Exception as exc:
                self._spare = None
                raise CallError(f"could not start the call worker: {exc}") from exc
            self._spare = None
            if worker.alive:
                self._busy.add(worker)
                waited = loop.time() - began
                if len(self.waits_s) >= WAITS_KEPT:
                    del self.waits_s[0]
                self.waits_s.append(waited)
                if waited > SLOW_TAKE_S:
                    logger.info("the call waited %.2f s for its worker to start", waited)
                return worker
            logger.warning("the waiting call worker %d had exited", worker.pid)
            await worker.aclose()
        raise CallError("the call worker exited before the call")

    async def release(self, worker: CallWorker) -> None:
        """End a call's worker and give back the memory the call freed; the next worker
        starts now if it has not yet."""
        self._busy.discard(worker)
        try:
            await worker.aclose()
        finally:
            self._after_call()
            self.prepare()

    async def aclose(self) -> None:
        self._closed = True
        spare, self._spare = self._spare, None
        if spare is not None:
            await cancel_and_wait(spare)
            if not spare.cancelled() and spare.exception() is None:
                await spare.result().aclose()
        busy, self._busy = self._busy, set()
        for worker in busy:
            await worker.aclose()

    async def _start_one(self) -> CallWorker:
        return await self._spawn()


def _seen(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
