"""ALSA capture and playback through pyalsaaudio: two PCMs, each with its own real-time thread."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from appliance.audio.base import FRAME_MS, SAMPLE_RATE, SAMPLES_PER_FRAME, Frame
from appliance.audio.delay import StreamDelay
from appliance.audio.jitter import JitterBuffer
from appliance.audio.pipeline import AudioPipeline, SessionHooks
from appliance.audio.processing import AudioProcessor, ProcessingOptions
from appliance.audio.resample import Reframer, StreamResampler
from appliance.clock import Clock
from appliance.errors import (
    AudioDeviceBusyError,
    AudioDeviceError,
    AudioDeviceLostError,
    AudioDeviceMissingError,
    AudioFormatError,
)
from appliance.settings import BoardAudio

logger = logging.getLogger(__name__)

PcmFactory = Callable[..., Any]
"""Makes an `alsaaudio.PCM`-like object; tests wrap the real one to inject faults."""

Deliver = Callable[[list[Frame], float], None]
"""Called on the capture thread with processed frames and when they were read (monotonic)."""

# After this many periods with nothing to play the playback stream is stopped (not fed
# silence) until audio arrives: an idle device neither wakes for playback nor runs the echo
# canceller's reverse stream.
PLAYBACK_IDLE_PERIODS = 20
# While no call needs low latency, capture is read and processed this many ms at a time and
# handed to the loop in one go: an eighth of the wake-ups of 10 ms periods for the wake word.
IDLE_BLOCK_MS = 80
# A resting playback thread wakes this often to check its device (and to show it is alive).
REST_CHECK_S = 1.0
# The echo canceller's delay is recomputed from the device's figures this often (frames).
DELAY_EVERY_FRAMES = 10
# Real-time priority (SCHED_FIFO) the audio threads ask for; refused without the privilege
# (CAP_SYS_NICE, or the unit's LimitRTPRIO), and then they run as ordinary threads.
RT_PRIORITY = 10


@dataclass(frozen=True)
class AlsaConfig:
    """What the two PCMs are opened with, from the board profile."""

    capture_device: str = "default"
    playback_device: str = "default"
    rate: int = SAMPLE_RATE
    capture_channels: int = 1
    capture_channel: int = 0
    playback_channels: int = 1
    period_frames: int = 0
    buffer_periods: int = 4
    pacing: str = "device"
    echo_delay_ms: float = 0.0

    @classmethod
    def from_board(cls, audio: BoardAudio) -> AlsaConfig:
        """The configuration a board profile's [audio] table describes."""
        return cls(
            capture_device=audio.capture_device,
            playback_device=audio.playback_device,
            rate=audio.sample_rate,
            capture_channels=audio.capture_channels,
            capture_channel=audio.capture_channel,
            playback_channels=audio.playback_channels,
            period_frames=audio.period_frames,
            buffer_periods=audio.buffer_periods,
            pacing=audio.pacing,
            echo_delay_ms=audio.echo_delay_ms,
        )

    @property
    def period(self) -> int:
        """Frames per ALSA period at the device rate."""
        return self.period_frames or self.rate * FRAME_MS // 1000


def translate_error(exc: Exception, device: str, *, opening: bool) -> AudioDeviceError:
    """Our error for a pyalsaaudio error: missing, busy, lost mid-stream, or another failure."""
    message = str(exc)
    lowered = message.lower()
    if "busy" in lowered:
        return AudioDeviceBusyError(f"ALSA device {device!r} is busy: {message}")
    if opening and ("no such file" in lowered or "no such device" in lowered):
        return AudioDeviceMissingError(f"ALSA device {device!r} does not exist: {message}")
    if not opening:
        return AudioDeviceLostError(f"ALSA device {device!r} failed mid-stream: {message}")
    return AudioDeviceError(f"ALSA device {device!r} could not be opened: {message}")


def default_pcm_factory() -> PcmFactory:
    """`alsaaudio.PCM`, imported only when a real ALSA board is opened."""
    import alsaaudio

    return alsaaudio.PCM  # type: ignore[no-any-return]


def open_pcm(
    factory: PcmFactory, config: AlsaConfig, *, capture: bool, channels: int
) -> tuple[Any, int, int]:
    """Open one PCM as `config` asks; returns it and the buffer and period it got, in frames."""
    import alsaaudio

    device = config.capture_device if capture else config.playback_device
    try:
        pcm = factory(
            type=alsaaudio.PCM_CAPTURE if capture else alsaaudio.PCM_PLAYBACK,
            mode=alsaaudio.PCM_NORMAL,
            rate=config.rate,
            channels=channels,
            format=alsaaudio.PCM_FORMAT_S16_LE,
            periodsize=config.period,
            periods=config.buffer_periods,
            device=device,
        )
        info = pcm.info()
    except alsaaudio.ALSAAudioError as exc:
        raise translate_error(exc, device, opening=True) from exc
    if info["rate"] != config.rate or info["channels"] != channels:
        pcm.close()
        raise AudioFormatError(
            f"ALSA device {device!r} cannot do {config.rate} Hz, {channels} channel(s); "
            f"it offered {info['rate']} Hz, {info['channels']} channel(s)"
        )
    return pcm, int(info["buffer_size"]), int(info.get("period_size") or config.period)


class Pacer:
    """Keeps a loop at one period per `period_s` by its own clock, for devices that don't block.

    It sleeps with `time.sleep`, not `Event.wait`: a timed `Event.wait` builds a lock and runs
    `Condition`'s bookkeeping on every call, which costs the audio threads more than the sleep
    itself. The threads check their stop event once per period, so a stop waits one period.
    """

    def __init__(
        self,
        period_s: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._period_s = period_s
        self._monotonic = monotonic
        self._sleep = sleep
        self._next = monotonic()

    def wait(self, periods: int = 1) -> None:
        """Sleep until the next `periods` are due; skip ahead (not burst) after a stall."""
        self._next += self._period_s * periods
        delay = self._next - self._monotonic()
        if delay > 0:
            self._sleep(delay)
        elif delay < -10 * self._period_s:
            self._next = self._monotonic()


class XrunLog:
    """Logs recovered xruns at most once per `every_s` per stream, with the count since.

    A struggling device can xrun every period; a log line each time would cost the audio
    thread more than the recovery and flood the journal.
    """

    def __init__(
        self,
        message: str,
        *,
        every_s: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._message = message
        self._every_s = every_s
        self._monotonic = monotonic
        self._last: float | None = None
        self._unlogged = 0

    def count(self, total: int) -> None:
        """One more xrun; `total` is the stream's count so far."""
        self._unlogged += 1
        now = self._monotonic()
        if self._last is None or now - self._last >= self._every_s:
            logger.warning(
                "%s (%d since the last report)",
                self._message,
                self._unlogged,
                extra={"XRUNS": total},
            )
            self._last, self._unlogged = now, 0


@dataclass
class StreamStats:
    """Counters the threads update; read by diagnostics and tests."""

    capture_xruns: int = 0
    playback_xruns: int = 0
    frames_captured: int = 0
    frames_played: int = 0
    playback_rests: int = 0
    capture_started_at: float = 0.0  # monotonic time the capture loop started
    playback_delay_ms: float = 0.0
    capture_delay_ms: float = 0.0


class AlsaSession:
    """Both PCMs open and their threads running, until a fault or `close`."""

    def __init__(
        self,
        config: AlsaConfig,
        *,
        processor: AudioProcessor,
        jitter: JitterBuffer,
        volume: float,
        deliver: Deliver,
        on_fault: Callable[[AudioDeviceError], None],
        pcm_factory: PcmFactory | None = None,
    ) -> None:
        self.config = config
        self.stats = StreamStats()
        self._processor = processor
        self._jitter = jitter
        self._volume = volume
        self._deliver = deliver
        self._on_fault = on_fault
        self._factory = pcm_factory
        self._stop = threading.Event()
        self._fault_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._capture: Any = None
        self._playback: Any = None
        self._playback_buffer = 0
        self._playback_period = config.period
        self._idle_block = 1  # set when the capture PCM is opened
        # Read by the capture thread before each block, written from the loop.
        self._block_periods = 1
        self._capture_xrun_log = XrunLog("capture overrun recovered")
        self._playback_xrun_log = XrunLog("playback underrun recovered")
        # Monotonic time each thread last moved, written by the thread, read by the watchdog.
        self._capture_moved_at = 0.0
        self._playback_moved_at = 0.0
        self.delay = StreamDelay(acoustic_ms=config.echo_delay_ms)

    @property
    def idle_block_periods(self) -> int:
        """Periods read and processed together while no call needs low latency."""
        return self._idle_block

    def progress(self) -> dict[str, float]:
        """When each thread last moved (monotonic): a read, a write, a resting speaker's check."""
        return {"alsa-capture": self._capture_moved_at, "alsa-playback": self._playback_moved_at}

    def set_low_latency(self, low_latency: bool) -> None:
        """Hand each period over as soon as it is read (a call), or in idle blocks (otherwise)."""
        self._block_periods = 1 if low_latency else self._idle_block

    def open(self) -> None:
        """Open both PCMs (blocking); raises a typed AudioDeviceError."""
        factory = self._factory or default_pcm_factory()
        cfg = self.config
        wanted = max(1, round(IDLE_BLOCK_MS * cfg.rate / 1000 / cfg.period))
        # An idle block plus the usual buffer: a late wake-up has more room, not less.
        capture_cfg = replace(cfg, buffer_periods=wanted + cfg.buffer_periods)
        self._capture, buffer, period = open_pcm(
            factory, capture_cfg, capture=True, channels=cfg.capture_channels
        )
        # The device may grant a smaller buffer (dsnoop, small drivers): blocks shrink to fit.
        self._idle_block = max(1, min(wanted, buffer // period - cfg.buffer_periods))
        if self._idle_block < wanted:
            logger.warning(
                "capture buffer of %d periods leaves room for idle blocks of %d, not %d",
                buffer // period,
                self._idle_block,
                wanted,
            )
        try:
            self._playback, self._playback_buffer, self._playback_period = open_pcm(
                factory, cfg, capture=False, channels=cfg.playback_channels
            )
        except AudioDeviceError:
            self._capture.close()
            raise

    def start(self) -> None:
        """Start the capture and playback threads."""
        loops = (("alsa-capture", self._capture_loop), ("alsa-playback", self._play_loop))
        self._capture_moved_at = self._playback_moved_at = time.monotonic()
        for name, target in loops:
            thread = threading.Thread(target=self._guard, args=(target,), name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def close(self) -> None:
        """Stop the threads and release both devices (blocking)."""
        self._stop.set()
        self._jitter.wake()
        stuck = set()
        for thread in self._threads:
            thread.join(timeout=2.0)
            if thread.is_alive():
                stuck.add(thread.name)
        pcms = (("alsa-capture", self._capture), ("alsa-playback", self._playback))
        for name, pcm in pcms:
            if pcm is None:
                continue
            if name in stuck:
                # Closing a PCM under a thread blocked in it (hung hardware) frees what the
                # thread is using; leave it to the process's exit instead.
                logger.error("%s thread did not stop; its ALSA device is left open", name)
                continue
            try:
                pcm.close()
            except Exception as exc:  # a device already gone cannot be closed cleanly
                logger.debug("closing a PCM failed: %s", exc)
        self._capture = self._playback = None

    def _guard(self, loop: Callable[[], None]) -> None:
        _ask_for_realtime()
        try:
            loop()
        except AudioDeviceError as exc:
            self._fail(exc)
        except Exception as exc:
            # Anything else (APM, resampler, a malformed frame) must not end the thread
            # silently and leave the device deaf: report it as a lost device, to be reopened.
            logger.exception("audio thread failed")
            self._fail(AudioDeviceLostError(f"audio thread failed: {exc}"))

    def _fail(self, exc: AudioDeviceError) -> None:
        # An unplugged device fails both threads at once: the session reports one fault, so a
        # second one cannot close the session that replaces it.
        with self._fault_lock:
            if self._stop.is_set():
                return
            self._stop.set()
        self._on_fault(exc)

    def _capture_loop(self) -> None:
        cfg = self.config
        resampler = StreamResampler(cfg.rate, SAMPLE_RATE) if cfg.rate != SAMPLE_RATE else None
        reframer = Reframer(SAMPLES_PER_FRAME)
        pacer = Pacer(cfg.period / cfg.rate) if cfg.pacing == "clock" else None
        pcm = self._capture  # close() clears the attribute; a stuck read still holds this one
        self.stats.capture_started_at = time.monotonic()
        while not self._stop.is_set():
            block = self._block_periods
            if pacer is not None:
                # As a real device does: a period can be read once it has been captured.
                pacer.wait(block)
            elif block > 1:
                # One wake-up per block: the buffer keeps `buffer_periods` more free for lateness.
                self._sleep_until_available(pcm, block * cfg.period)
            frames: list[Frame] = []
            read_at = 0.0
            for i in range(block):
                samples = self._read_period(
                    pcm, measure_delay=block == 1, device_paced=pacer is None
                )
                if i == 0:
                    read_at = self._capture_moved_at = time.monotonic()
                if samples is None:
                    continue
                if cfg.capture_channels > 1:
                    samples = samples[cfg.capture_channel :: cfg.capture_channels]
                if resampler is not None:
                    samples = resampler.push(samples)
                for frame in reframer.push(samples):
                    frames.append(self._processor.process_capture(frame))
            if frames:
                self.stats.frames_captured += len(frames)
                self._deliver(frames, read_at)

    def _read_period(self, pcm: Any, *, measure_delay: bool, device_paced: bool) -> Frame | None:
        """One period from the capture PCM (None after a recovered overrun)."""
        import alsaaudio

        cfg = self.config
        try:
            n, data = pcm.read()
            if measure_delay and n > 0:
                # What was still waiting in the buffer, plus this period: the capture delay.
                waiting = max(0, pcm.avail()) if device_paced else 0
                self.stats.capture_delay_ms = (waiting + n) * 1000 / cfg.rate
                self.delay.add_capture(self.stats.capture_delay_ms)
        except alsaaudio.ALSAAudioError as exc:
            raise translate_error(exc, cfg.capture_device, opening=False) from exc
        if n < 0:  # -EPIPE: an overrun; pyalsaaudio prepares the PCM on the next read
            self.stats.capture_xruns += 1
            self._capture_xrun_log.count(self.stats.capture_xruns)
            return None
        return np.frombuffer(data, dtype=np.int16) if n > 0 else None

    def _sleep_until_available(self, pcm: Any, frames: int) -> None:
        """Sleep (rather than block once per period) until `frames` can be read at once."""
        import alsaaudio

        try:
            available = pcm.avail()
        except alsaaudio.ALSAAudioError as exc:
            raise translate_error(exc, self.config.capture_device, opening=False) from exc
        if available < 0:
            return  # an overrun or a lost device (-errno): the next read recovers or fails
        missing = frames - available
        if missing > 0:
            time.sleep(missing / self.config.rate)

    def _play_loop(self) -> None:
        import alsaaudio

        cfg = self.config
        pcm = self._playback
        resampler = StreamResampler(SAMPLE_RATE, cfg.rate) if cfg.rate != SAMPLE_RATE else None
        pacer = Pacer(FRAME_MS / 1000) if cfg.pacing == "clock" else None
        # Reused every period: the real-time loop allocates nothing for volume or channels.
        scaled = np.empty(SAMPLES_PER_FRAME, dtype=np.int16)
        device_frame = cfg.rate * FRAME_MS // 1000  # one 10 ms frame at the device's rate
        interleaved = np.empty((device_frame, cfg.playback_channels), dtype=np.int16)
        idle_periods = 0
        while not self._stop.is_set():
            if self._jitter.playing:
                idle_periods = 0
            elif (idle_periods := idle_periods + 1) > PLAYBACK_IDLE_PERIODS:
                self._rest_until_audio(pcm)
                idle_periods = 0
                pacer = Pacer(FRAME_MS / 1000) if cfg.pacing == "clock" else None
                continue
            frame = self._jitter.get()  # always exactly one 10 ms frame
            if self._volume != 1.0:
                np.multiply(frame, self._volume, out=scaled, casting="unsafe")
                frame = scaled
            # The echo canceller's reverse stream is exactly what goes to the device.
            self._processor.process_render(frame)
            out = resampler.push(frame) if resampler is not None else frame
            if cfg.playback_channels > 1:
                if len(out) == device_frame:
                    interleaved[:] = out[:, np.newaxis]
                    out = interleaved.reshape(-1)
                else:  # the resampler's output can wander by a sample around a frame
                    out = np.repeat(out, cfg.playback_channels)
            try:
                written = pcm.write(out) if len(out) else 0
                avail = pcm.avail() if pacer is None else self._playback_buffer
            except alsaaudio.ALSAAudioError as exc:
                if "broken pipe" in str(exc).lower():  # an underrun pyalsaaudio did not recover
                    self._count_playback_xrun()
                    continue
                raise translate_error(exc, cfg.playback_device, opening=False) from exc
            if written < 0:
                self._count_playback_xrun()
            self._playback_moved_at = time.monotonic()
            self.stats.frames_played += 1
            self.stats.playback_delay_ms = (self._playback_buffer - avail) * 1000 / cfg.rate
            self.delay.add_playback(self.stats.playback_delay_ms)
            if self.stats.frames_played % DELAY_EVERY_FRAMES == 1:
                self._processor.set_stream_delay_ms(self.delay.value_ms())
            if pacer is not None:
                pacer.wait()

    def _rest_until_audio(self, pcm: Any) -> None:
        """Stop the playback stream until there is audio again, then restart it primed.

        Priming with silence puts back the buffered periods the stream had before it
        stopped, so the first frames do not run the buffer dry (and the delay is unchanged).
        While resting, the device is checked once a second, so an unplugged speaker is a
        fault now, not at the next earcon; each check counts as the thread moving.
        """
        import alsaaudio

        cfg = self.config
        disconnected = getattr(alsaaudio, "PCM_STATE_DISCONNECTED", 8)
        try:
            pcm.drop()
            self.stats.playback_rests += 1
            while not self._stop.is_set() and not self._jitter.wait_for_audio(REST_CHECK_S):
                if pcm.state() == disconnected:
                    raise AudioDeviceLostError(
                        f"ALSA device {cfg.playback_device!r} was disconnected"
                    )
                self._playback_moved_at = time.monotonic()
            if self._stop.is_set():
                return
            # pyalsaaudio prepares a stopped PCM again on the next write.
            period = self._playback_period
            silence = bytes(period * cfg.playback_channels * 2)
            for _ in range(max(0, self._playback_buffer // period - 1)):
                pcm.write(silence)
        except alsaaudio.ALSAAudioError as exc:
            raise translate_error(exc, cfg.playback_device, opening=False) from exc

    def _count_playback_xrun(self) -> None:
        self.stats.playback_xruns += 1
        self._playback_xrun_log.count(self.stats.playback_xruns)


def _ask_for_realtime() -> None:
    """Ask for SCHED_FIFO for the calling thread; a refusal leaves it an ordinary thread.

    A loaded device (a wake-word engine, a LiveKit call, a software update) must not make the
    audio threads late: a late playback write is an underrun the echo canceller hears as a
    delay jump. The threads block on the device nearly all the time, so they take little.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
    except (AttributeError, OSError) as exc:
        logger.debug("audio thread stays at normal priority: %s", exc)


def processing_options(audio: BoardAudio) -> ProcessingOptions:
    """The APM stages a board profile asks for (no software AEC when the board cancels echo)."""
    return ProcessingOptions(
        echo_cancellation=audio.echo_cancellation == "software",
        noise_suppression=audio.noise_suppression,
        high_pass_filter=audio.high_pass_filter,
        auto_gain_control=audio.auto_gain_control,
        linear_filter_ms=audio.linear_echo_filter_ms,
        linear_algorithm=audio.linear_echo_algorithm,
    )


def alsa_pipeline(
    audio: BoardAudio, *, clock: Clock, pcm_factory: PcmFactory | None = None
) -> AudioPipeline:
    """The pipeline for a board with ALSA devices (not started)."""
    config = AlsaConfig.from_board(audio)
    processor = AudioProcessor(processing_options(audio))
    jitter = JitterBuffer(
        prefill_frames=max(1, audio.jitter_prefill_ms // FRAME_MS),
        max_frames=max(1, audio.jitter_max_ms // FRAME_MS),
    )

    def open_session(hooks: SessionHooks) -> AlsaSession:
        return AlsaSession(
            config,
            processor=processor,
            jitter=jitter,
            volume=audio.volume,
            deliver=hooks.deliver,
            on_fault=hooks.fault,
            pcm_factory=pcm_factory,
        )

    return AudioPipeline(open_session, processor=processor, jitter=jitter, clock=clock)
