"""One capture stream, read continuously, handed to several readers (the call, the wake word)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from appliance.aio import cancel_and_wait
from appliance.audio.base import Frame, Microphone

logger = logging.getLogger(__name__)


class Subscription:
    """One reader's bounded queue of frames; the oldest frame is dropped when it is full."""

    def __init__(
        self, fanout: CaptureFanout, name: str, max_frames: int, batch_frames: int
    ) -> None:
        self.name = name
        self.dropped = 0
        self._fanout = fanout
        self._frames: deque[Frame] = deque()
        self._max_frames = max_frames
        self._batch_frames = batch_frames
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 1

    async def read(self) -> Frame:
        """The next frame captured after this subscription started."""
        if not self._frames:
            await self._wait(1)
        return self._frames.popleft()

    async def read_batch(self) -> list[Frame]:
        """Every queued frame, once at least `batch_frames` are queued (oldest first)."""
        if len(self._frames) < self._batch_frames:
            await self._wait(self._batch_frames)
        frames = list(self._frames)
        self._frames.clear()
        return frames

    async def aclose(self) -> None:
        """Stop receiving frames."""
        self._fanout._subscriptions.discard(self)

    async def _wait(self, wanted: int) -> None:
        # One reader per subscription, so one waiter, woken only once `wanted` frames are
        # queued: a batching reader costs one task switch per batch, not one per frame.
        self._wanted = wanted
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _offer(self, frame: Frame) -> None:
        if len(self._frames) >= self._max_frames:
            self._frames.popleft()
            self.dropped += 1
        self._frames.append(frame)
        waiter = self._waiter
        if waiter is not None and len(self._frames) >= self._wanted and not waiter.done():
            waiter.set_result(None)


class CaptureFanout:
    """Reads the microphone for the daemon's whole life, so it never overruns while idle."""

    def __init__(self, microphone: Microphone) -> None:
        self._microphone = microphone
        self._subscriptions: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the reader task."""
        self._task = asyncio.create_task(self._pump(), name="capture-fanout")

    def subscribe(self, name: str, *, max_frames: int = 50, batch_frames: int = 1) -> Subscription:
        """A new reader of every frame from now on; `read_batch` waits for `batch_frames`."""
        if not 1 <= batch_frames <= max_frames:
            raise ValueError(f"batch_frames must be 1..{max_frames}, not {batch_frames}")
        subscription = Subscription(self, name, max_frames, batch_frames)
        self._subscriptions.add(subscription)
        return subscription

    async def aclose(self) -> None:
        """Stop reading (the microphone itself is closed by its owner)."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _pump(self) -> None:
        while True:
            frame = await self._microphone.read()
            for subscription in list(self._subscriptions):
                subscription._offer(frame)
