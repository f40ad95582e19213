"""The audio pipeline: devices kept open for the daemon's life, faults retried with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from appliance.aio import cancel_and_wait
from appliance.audio.base import SAMPLES_PER_FRAME, Frame
from appliance.audio.jitter import JitterBuffer
from appliance.audio.processing import AudioProcessor
from appliance.audio.resample import Reframer
from appliance.backoff import Backoff
from appliance.clock import Clock
from appliance.errors import AudioDeviceError

logger = logging.getLogger(__name__)

# Captured frames waiting for the loop; a stalled loop loses the oldest, it never grows.
CAPTURE_QUEUE_FRAMES = 20
# A session that ran this long before failing starts the backoff from its first step again.
STABLE_S = 10.0


class Session(Protocol):
    """Open devices and their threads: opened and started once, closed once."""

    def open(self) -> None: ...

    def start(self) -> None: ...

    def close(self) -> None: ...

    def set_low_latency(self, low_latency: bool) -> None: ...

    def progress(self) -> Mapping[str, float]:
        """Each thread's name and the monotonic time it last read, wrote or checked its device."""
        ...


class SessionHooks(Protocol):
    """What a session calls from its threads (both are safe to call from any thread)."""

    def deliver(self, frames: list[Frame], read_at: float) -> None: ...

    def fault(self, exc: AudioDeviceError) -> None: ...


SessionFactory = Callable[[SessionHooks], Session]


class FaultListener(Protocol):
    """Told on the event loop when the audio devices fail and when they work again."""

    def audio_fault(self, exc: AudioDeviceError) -> None: ...

    def audio_recovered(self) -> None: ...


class AudioPipeline:
    """Owns the capture and playback devices; hands out a microphone and a speaker."""

    def __init__(
        self,
        open_session: SessionFactory,
        *,
        processor: AudioProcessor,
        jitter: JitterBuffer,
        clock: Clock,
        backoff: Backoff | None = None,
    ) -> None:
        self.processor = processor
        self.jitter = jitter
        self.microphone = PipelineMicrophone()
        self.speaker = PipelineSpeaker(jitter)
        self.fault: AudioDeviceError | None = None
        self.session: Session | None = None
        self.opened = 0
        self._open_session = open_session
        self._clock = clock
        self._backoff = backoff or Backoff(initial_s=0.5, max_s=30.0)
        self._listeners: list[FaultListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # (which session, what failed): a session's number is its hooks' `session_no`.
        self._faults: asyncio.Queue[tuple[int, AudioDeviceError]] = asyncio.Queue()
        self._session_no = 0
        self._task: asyncio.Task[None] | None = None
        self._opened_event = asyncio.Event()
        self._low_latency = True

    def add_listener(self, listener: FaultListener) -> None:
        """Tell `listener` about faults and recoveries, starting with the current fault, if any."""
        self._listeners.append(listener)
        if self.fault is not None:
            listener.audio_fault(self.fault)

    async def start(self) -> None:
        """Try to open the devices once, then keep them open (or retrying) in the background."""
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="audio-pipeline")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self._first_attempt()

    def set_call_audio(self, on: bool) -> None:
        """Audio for a call, or for idle listening; for a call until told otherwise.

        A call gets each 10 ms frame as soon as it is read, through the APM. Idle listening
        gets raw frames in blocks: far fewer wake-ups, a few tens of milliseconds the wake word
        does not notice, and no APM, because an idle device plays nothing there is to cancel.
        """
        self._low_latency = on
        self.processor.set_active(on)
        if self.session is not None:
            self.session.set_low_latency(on)

    def thread_progress(self) -> Mapping[str, float]:
        """When each audio thread last moved (monotonic); empty while no devices are open.

        No session means the devices are being opened, closed or retried after a fault: that
        is the pipeline's own, bounded business (and shows as AUDIO_FAULT), not a hang.
        """
        session = self.session
        return {} if session is None else session.progress()

    async def wait_open(self) -> None:
        """Wait until the devices are open (tests and the self-test)."""
        while self.session is None:
            self._opened_event.clear()
            await self._opened_event.wait()

    async def aclose(self) -> None:
        """Stop retrying, stop the threads and release the devices."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self._close_session()

    async def _first_attempt(self) -> None:
        while self.session is None and self.fault is None:
            self._opened_event.clear()
            await self._opened_event.wait()

    async def _run(self) -> None:
        while True:
            self._session_no += 1
            session = self._open_session(_Hooks(self, self._session_no))
            try:
                await asyncio.to_thread(session.open)
            except AudioDeviceError as exc:
                self._report_fault(exc)
                delay = self._backoff.next_delay()
                logger.info("opening the audio devices again in %.1f s", delay)
                await self._clock.sleep(delay)
                continue
            session.set_low_latency(self._low_latency)
            session.start()
            self.session = session
            self.opened += 1
            opened_at = self._clock.monotonic()
            self._opened_event.set()
            if self.fault is not None:
                self.fault = None
                logger.info("audio devices work again")
                for listener in list(self._listeners):
                    listener.audio_recovered()
            lost = await self._next_fault()
            await self._close_session()
            self._report_fault(lost)
            # A device that opens and fails at once must not spin: back off unless it ran a while.
            if self._clock.monotonic() - opened_at >= STABLE_S:
                self._backoff.reset()
            await self._clock.sleep(self._backoff.next_delay())

    async def _next_fault(self) -> AudioDeviceError:
        """The next fault of the open session; late reports from closed sessions are dropped."""
        while True:
            session_no, exc = await self._faults.get()
            if session_no == self._session_no:
                return exc
            logger.debug("ignored a fault of a closed audio session: %s", exc)

    async def _close_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await asyncio.to_thread(session.close)
        self.jitter.clear()

    def _report_fault(self, exc: AudioDeviceError) -> None:
        first = self.fault is None or type(self.fault) is not type(exc)
        self.fault = exc
        self._opened_event.set()
        if first:
            logger.error("audio device fault: %s", exc, extra={"AUDIO_ERROR": type(exc).__name__})
            for listener in list(self._listeners):
                listener.audio_fault(exc)

    def _deliver(self, frames: list[Frame], read_at: float) -> None:
        for frame in frames:
            self.microphone.offer(frame, read_at)


class _Hooks:
    """Thread-side entry points: each hands its work to the loop with `call_soon_threadsafe`."""

    def __init__(self, pipeline: AudioPipeline, session_no: int) -> None:
        self._pipeline = pipeline
        self.session_no = session_no
        assert pipeline._loop is not None
        self._loop = pipeline._loop

    def deliver(self, frames: list[Frame], read_at: float) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self._loop.call_soon_threadsafe(self._pipeline._deliver, frames, read_at)

    def fault(self, exc: AudioDeviceError) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(
                self._pipeline._faults.put_nowait, (self.session_no, exc)
            )


class PipelineMicrophone:
    """The processed capture stream as a `Microphone`; frames wait in a small bounded queue."""

    def __init__(self) -> None:
        self.dropped = 0
        self._queue: asyncio.Queue[tuple[Frame, float]] = asyncio.Queue(CAPTURE_QUEUE_FRAMES)
        self.on_handoff: Callable[[float], None] | None = None

    def offer(self, frame: Frame, read_at: float) -> None:
        """Queue one frame (on the loop); drops the oldest when the reader has fallen behind."""
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait((frame, read_at))

    async def read(self) -> Frame:
        frame, read_at = await self._queue.get()
        if self.on_handoff is not None:
            self.on_handoff(read_at)
        return frame

    async def aclose(self) -> None:
        return None


class PipelineSpeaker:
    """The playback stream as a `Speaker`: frames go to the jitter buffer, never block the loop.

    Whatever length a writer's frames have, the playback thread gets exact 10 ms frames (the
    APM takes nothing else); a remainder waits for the next write.
    """

    def __init__(self, jitter: JitterBuffer) -> None:
        self._jitter = jitter
        self._reframer = Reframer(SAMPLES_PER_FRAME)

    async def write(self, frame: Frame) -> None:
        for exact in self._reframer.push(frame):
            self._jitter.put(exact)

    async def aclose(self) -> None:
        self._jitter.clear()
