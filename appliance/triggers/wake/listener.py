"""Listens for the wake word on the shared capture stream, only while it is switched on."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

import numpy as np
from livekit import rtc

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
        self._stopping: set[asyncio.Task[None]] = set()
        # The most recent detections, for wake-test and tests; bounded for a long-lived daemon.
        self.detections: collections.deque[Detection] = collections.deque(maxlen=100)
        self.last_frame_at: float | None = None

    @property
    def active(self) -> bool:
        """Whether the microphone is being listened to now."""
        return self._task is not None

    def set_active(self, active: bool) -> None:
        """Start or stop listening; nothing is taken from the microphone while stopped."""
        if active and self._task is None:
            self._task = asyncio.create_task(self._listen(), name="wake-listener")
            logger.debug("wake word listening")
        elif not active and self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
            logger.debug("wake word off")

    async def aclose(self) -> None:
        """Stop listening and release the engine."""
        self.set_active(False)
        await asyncio.gather(*self._stopping, return_exceptions=True)
        self._detector.engine.close()

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
        except Exception:
            logger.exception("wake word listener failed")
            raise
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
