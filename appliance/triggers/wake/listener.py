"""Listens for the wake word on the shared capture stream, only while it is switched on."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from livekit import rtc

from appliance.aio import TaskSet
from appliance.audio.base import SAMPLE_RATE
from appliance.audio.fanout import CaptureFanout
from appliance.clock import Clock
from appliance.triggers.wake.base import ENGINE_RATE, Detection, WakeDetector

logger = logging.getLogger(__name__)

# Frames queued for the engine before the oldest is dropped (0.5 s).
QUEUE_FRAMES = 50
# Frames taken per wake-up (30 ms; microWakeWord models only run every 30 ms anyway): a
# third of the task switches and engine calls, for at most 20 ms of added latency.
BATCH_FRAMES = 3


class WakeListener:
    """Feeds capture frames, resampled to 16 kHz, to a detector while active; off otherwise."""

    def __init__(
        self,
        detector: WakeDetector,
        *,
        capture: CaptureFanout,
        on_wake: Callable[[Detection], None],
        clock: Clock,
    ) -> None:
        self._detector = detector
        self._capture = capture
        self._on_wake = on_wake
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._tasks = TaskSet(on_error=self._failed)  # the listener, and any still stopping
        # The most recent detections, for wake-test and tests; bounded for a long-lived daemon.
        self.detections: collections.deque[Detection] = collections.deque(maxlen=100)
        self.last_frame_at: float | None = None

    @property
    def active(self) -> bool:
        """Whether the microphone is being listened to now (not once the listening task ended)."""
        return self._task is not None and not self._task.done()

    def set_active(self, active: bool) -> None:
        """Start or stop listening; nothing is taken from the microphone while stopped.

        Starting again after the listening task died (an engine error, say) starts a new one.
        """
        if active and not self.active and not self._tasks.closed:
            self._task = self._tasks.spawn(self._listen(), "wake-listener")
            logger.debug("wake word listening")
        elif not active and self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            logger.debug("wake word off")

    async def aclose(self) -> None:
        """Stop listening and release the engine."""
        self.set_active(False)
        await self._tasks.aclose()
        self._detector.engine.close()

    def _failed(self, task: asyncio.Task[Any], exc: BaseException) -> None:
        # The task boundary: the listener is inactive from now until switched on again.
        logger.error("wake word listener failed", exc_info=exc)

    async def _listen(self) -> None:
        # A fresh subscription and engine state each time: audio heard before a call (or
        # during one) never counts towards a detection after it.
        self._detector.reset()
        resampler = rtc.AudioResampler(SAMPLE_RATE, ENGINE_RATE, num_channels=1)
        subscription = self._capture.subscribe(
            "wake", max_frames=QUEUE_FRAMES, batch_frames=BATCH_FRAMES
        )
        try:
            while True:
                frames = await subscription.read_batch()
                self.last_frame_at = self._clock.monotonic()
                # One resampler call and one engine call per batch, not per frame.
                out = resampler.push(bytearray(np.concatenate(frames)))
                if not out:
                    continue
                pcm = np.frombuffer(b"".join(o.data for o in out), dtype=np.int16)
                for detection in self._detector.process(pcm):
                    self._detected(detection)
        finally:
            await subscription.aclose()

    def _detected(self, detection: Detection) -> None:
        self.detections.append(detection)
        score = "-" if detection.score is None else f"{detection.score:.3f}"
        logger.info(
            "wake word %s heard (score %s)",
            detection.keyword,
            score,
            extra={"WAKE_WORD": detection.keyword, "WAKE_SCORE": score},
        )
        self._on_wake(detection)
