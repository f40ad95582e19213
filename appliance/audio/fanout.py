"""One capture stream, read continuously, handed to several readers (the call, the wake word)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from appliance.audio.base import Frame, Microphone

logger = logging.getLogger(__name__)


class Subscription:
    """One reader's bounded queue of frames; the oldest frame is dropped when it is full."""

    def __init__(self, fanout: CaptureFanout, name: str, max_frames: int) -> None:
        self.name = name
        self.dropped = 0
        self._fanout = fanout
        self._queue: asyncio.Queue[Frame] = asyncio.Queue(max_frames)

    async def read(self) -> Frame:
        """The next frame captured after this subscription started."""
        return await self._queue.get()

    async def aclose(self) -> None:
        """Stop receiving frames."""
        self._fanout._subscriptions.discard(self)

    def _offer(self, frame: Frame) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(frame)


class CaptureFanout:
    """Reads the microphone for the daemon's whole life, so it never overruns while idle."""

    def __init__(self, microphone: Microphone) -> None:
        self._microphone = microphone
        self._subscriptions: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the reader task."""
        self._task = asyncio.create_task(self._pump(), name="capture-fanout")

    def subscribe(self, name: str, *, max_frames: int = 50) -> Subscription:
        """A new reader; it gets every frame captured from now on (up to `max_frames` queued)."""
        subscription = Subscription(self, name, max_frames)
        self._subscriptions.add(subscription)
        return subscription

    async def aclose(self) -> None:
        """Stop reading (the microphone itself is closed by its owner)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _pump(self) -> None:
        while True:
            frame = await self._microphone.read()
            for subscription in list(self._subscriptions):
                subscription._offer(frame)
