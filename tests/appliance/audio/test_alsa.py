"""The ALSA backend on real libasound (file-plugin devices): streams, pacing, faults, xruns."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import alsaaudio
import numpy as np
import pytest

from appliance.audio.alsa import AlsaConfig, AlsaSession, alsa_pipeline
from appliance.audio.pipeline import AudioPipeline
from appliance.clock import SystemClock
from appliance.errors import (
    AudioDeviceBusyError,
    AudioDeviceError,
    AudioDeviceLostError,
    AudioDeviceMissingError,
    AudioFormatError,
)
from appliance.settings import BoardAudio
from tests.appliance.audio.alsa_devices import FileDevices, use_config, write_file_devices

pytestmark = pytest.mark.integration

PLAIN = BoardAudio(
    backend="alsa",
    pacing="clock",
    echo_cancellation="off",
    noise_suppression=False,
    high_pass_filter=False,
    auto_gain_control=False,
)


class Listener:
    """Records what the pipeline tells the supervisor."""

    def __init__(self) -> None:
        self.events: list[str | AudioDeviceError] = []

    def audio_fault(self, exc: AudioDeviceError) -> None:
        self.events.append(exc)

    def audio_recovered(self) -> None:
        self.events.append("recovered")


def ramp(seconds: float, channels: int = 1) -> np.ndarray:
    n = int(seconds * 48000)
    mono = (np.arange(n) % 20000 - 10000).astype(np.int16)
    if channels == 1:
        return mono
    return np.stack([mono if c == 1 else -mono for c in range(channels)], axis=1).reshape(-1)


def pipeline_on(devices: FileDevices, factory: Any = None, **audio: Any) -> AudioPipeline:
    use_config(devices.config)
    settings = dataclasses.replace(
        PLAIN, capture_device=devices.capture, playback_device=devices.playback, **audio
    )
    return alsa_pipeline(settings, clock=SystemClock(), pcm_factory=factory)


def replug(devices: FileDevices, old: str, new: str) -> None:
    """A new ALSA configuration in which `old` became `new` (libasound caches the old file)."""
    config = devices.config.with_name("asound-replugged.conf")
    config.write_text(devices.config.read_text().replace(old, new))
    use_config(config)


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_capture_and_playback_run_in_real_time_through_libasound(tmp_path: Path) -> None:
    devices = write_file_devices(tmp_path, ramp(2.0))
    pipeline = pipeline_on(devices, volume=0.5)
    await pipeline.start()
    try:
        t0 = time.monotonic()
        got = []
        for _ in range(50):
            async with asyncio.timeout(1):
                got.append(await pipeline.microphone.read())
            await pipeline.speaker.write(np.full(480, 2000, dtype=np.int16))
        elapsed = time.monotonic() - t0
    finally:
        await pipeline.aclose()
    # Paced by the backend's own clock: the file device alone would return all of it at once.
    assert 0.4 <= elapsed <= 0.8
    assert np.array_equal(np.concatenate(got), ramp(2.0)[: 50 * 480])
    played = devices.played()
    assert np.count_nonzero(played == 1000) >= 40 * 480, "volume 0.5 applied to what is played"


async def test_one_channel_of_a_two_mic_array_at_16_khz_is_resampled(tmp_path: Path) -> None:
    rate = 16000
    t = np.arange(rate * 2) / rate
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    stereo = np.stack([np.zeros_like(tone), tone], axis=1).reshape(-1)
    devices = write_file_devices(tmp_path, stereo)
    pipeline = pipeline_on(
        devices, sample_rate=rate, capture_channels=2, capture_channel=1, playback_channels=2
    )
    await pipeline.start()
    try:
        got = [await asyncio.wait_for(pipeline.microphone.read(), 3) for _ in range(60)]
    finally:
        await pipeline.aclose()
    out = np.concatenate(got[10:]).astype(np.float64)
    assert all(len(f) == 480 for f in got)
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.argmax(spectrum) * 48000 / len(out)
    assert abs(peak_hz - 440) < 5
    assert np.sqrt(np.mean(out**2)) > 4000, "channel 1 (the tone) was taken, not channel 0"


async def test_a_missing_device_faults_and_recovers_when_it_appears(tmp_path: Path) -> None:
    devices = write_file_devices(tmp_path, ramp(2.0))
    missing = dataclasses.replace(devices, capture="nosuchdevice")
    pipeline = pipeline_on(missing)
    listener = Listener()
    pipeline.add_listener(listener)
    await pipeline.start()
    try:
        assert isinstance(pipeline.fault, AudioDeviceMissingError)
        assert isinstance(listener.events[0], AudioDeviceMissingError)
        # The device appears under that name: the next retry opens it.
        replug(devices, "kcap", "nosuchdevice")
        await asyncio.wait_for(pipeline.wait_open(), 10)
        await wait_until(lambda: "recovered" in listener.events)
        assert pipeline.fault is None
    finally:
        await pipeline.aclose()


class FaultyPcm:
    """A real libasound PCM whose reads/opens fail the way pyalsaaudio reports it on hardware."""

    opens = 0

    def __init__(self, busy_opens: int = 0, offered_rate: int | None = None, xrun_at: int = -1):
        self.busy_opens = busy_opens
        self.offered_rate = offered_rate
        self.xrun_at = xrun_at

    def __call__(self, **kwargs: Any) -> Any:
        FaultyPcm.opens += 1
        if self.busy_opens > 0:
            self.busy_opens -= 1
            # File devices cannot be held busy; this is pyalsaaudio's own error text for EBUSY.
            raise alsaaudio.ALSAAudioError(f"Device or resource busy [{kwargs['device']}]")
        pcm = alsaaudio.PCM(**kwargs)
        return _Wrapped(pcm, self.offered_rate, self.xrun_at)


class _Wrapped:
    def __init__(self, pcm: Any, offered_rate: int | None, xrun_at: int) -> None:
        self._pcm, self._rate, self._xrun_at, self._reads = pcm, offered_rate, xrun_at, 0

    def info(self) -> dict[str, Any]:
        info = dict(self._pcm.info())
        if self._rate is not None:  # set_rate_near on a card that cannot do the rate
            info["rate"] = self._rate
        return info

    def read(self) -> tuple[int, bytes]:
        self._reads += 1
        if self._reads == self._xrun_at:
            return -32, b""  # what pyalsaaudio returns on an overrun (-EPIPE)
        result: tuple[int, bytes] = self._pcm.read()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pcm, name)


async def test_a_busy_device_is_told_apart_and_retried(tmp_path: Path) -> None:
    devices = write_file_devices(tmp_path, ramp(2.0))
    pipeline = pipeline_on(devices, factory=FaultyPcm(busy_opens=1))
    await pipeline.start()
    try:
        assert isinstance(pipeline.fault, AudioDeviceBusyError)
        assert "busy" in str(pipeline.fault)
        await asyncio.wait_for(pipeline.wait_open(), 10)
        assert pipeline.fault is None
    finally:
        await pipeline.aclose()


async def test_a_device_that_cannot_do_the_rate_gets_a_format_error(tmp_path: Path) -> None:
    devices = write_file_devices(tmp_path, ramp(2.0))
    pipeline = pipeline_on(devices, factory=FaultyPcm(offered_rate=44100))
    await pipeline.start()
    try:
        assert isinstance(pipeline.fault, AudioFormatError)
        assert "44100" in str(pipeline.fault)
        assert pipeline.session is None
    finally:
        await pipeline.aclose()


async def test_a_device_lost_mid_stream_faults_and_is_reopened(tmp_path: Path) -> None:
    # /dev/full: libasound's file plugin fails the write with a real EIO, as an unplugged card.
    devices = write_file_devices(tmp_path, ramp(3.0), playback_file="/dev/full")
    pipeline = pipeline_on(devices)
    listener = Listener()
    pipeline.add_listener(listener)
    await pipeline.start()
    try:
        await wait_until(lambda: isinstance(pipeline.fault, AudioDeviceLostError))
        assert pipeline.opened == 1
        replug(devices, "/dev/full", str(devices.outfile))
        await wait_until(lambda: pipeline.opened == 2 and pipeline.session is not None, 10)
        await asyncio.wait_for(pipeline.microphone.read(), 1)
        assert isinstance(listener.events[0], AudioDeviceLostError)
        assert listener.events[-1] == "recovered"
    finally:
        await pipeline.aclose()


async def test_an_overrun_is_counted_and_the_stream_goes_on(tmp_path: Path) -> None:
    devices = write_file_devices(tmp_path, ramp(2.0))
    pipeline = pipeline_on(devices, factory=FaultyPcm(xrun_at=5))
    await pipeline.start()
    try:
        for _ in range(20):
            await asyncio.wait_for(pipeline.microphone.read(), 1)
        session = pipeline.session
        assert isinstance(session, AlsaSession)
        assert session.stats.capture_xruns == 1
        assert pipeline.fault is None
    finally:
        await pipeline.aclose()


class _GarbageRead(_Wrapped):
    def read(self) -> tuple[int, bytes]:
        self._reads += 1
        if self._reads == 3:
            return 1, b"\x00"  # half a sample: numpy refuses it, an error nobody translated
        return super().read()


async def test_an_unexpected_error_in_an_audio_thread_is_a_fault_not_a_silent_death(
    tmp_path: Path,
) -> None:
    devices = write_file_devices(tmp_path, ramp(2.0))
    pipeline = pipeline_on(
        devices, factory=lambda **kwargs: _GarbageRead(alsaaudio.PCM(**kwargs), None, -1)
    )
    listener = Listener()
    pipeline.add_listener(listener)
    await pipeline.start()
    try:
        await wait_until(lambda: bool(listener.events))
        fault = listener.events[0]
        assert isinstance(fault, AudioDeviceLostError)
        assert "audio thread failed" in str(fault)
    finally:
        await pipeline.aclose()


async def test_idle_capture_comes_in_blocks_and_a_call_gets_each_frame_at_once(
    tmp_path: Path,
) -> None:
    devices = write_file_devices(tmp_path, ramp(4.0))
    pipeline = pipeline_on(devices)
    stamps: list[float] = []
    pipeline.microphone.on_handoff = stamps.append
    pipeline.set_call_audio(False)
    await pipeline.start()
    try:
        session = pipeline.session
        assert isinstance(session, AlsaSession) and session.idle_block_periods == 8
        idle = [await asyncio.wait_for(pipeline.microphone.read(), 3) for _ in range(60)]
        idle_stamps, stamps[:] = list(stamps), []
        pipeline.set_call_audio(True)
        call = [await asyncio.wait_for(pipeline.microphone.read(), 1) for _ in range(40)]
    finally:
        await pipeline.aclose()
    # Idle: frames handed over eight at a time (one read time per block); nothing lost or reordered.
    assert 6 <= len(set(idle_stamps)) <= 9
    assert np.array_equal(np.concatenate(idle + call), ramp(4.0)[: 100 * 480])
    # In a call, the block being read when it was switched finishes, then one frame per read
    # (the last 20 cannot include an idle block, however late the loop switched).
    assert len(set(stamps[-20:])) == 20


async def test_playback_stops_while_there_is_nothing_to_play_and_restarts_intact(
    tmp_path: Path,
) -> None:
    devices = write_file_devices(tmp_path, ramp(4.0))
    # Room either way, so a loaded machine's late wake-ups cannot break the chime.
    pipeline = pipeline_on(devices, jitter_prefill_ms=40, jitter_max_ms=200)
    await pipeline.start()
    try:
        session = pipeline.session
        assert isinstance(session, AlsaSession)
        await wait_until(lambda: session.stats.playback_rests == 1)
        played = session.stats.frames_played
        await asyncio.sleep(0.3)
        assert session.stats.frames_played == played, "nothing written while resting"
        # A chime arrives in real time: it plays whole, after the primed silence, no underrun.
        chime = [np.full(480, 100 + i, dtype=np.int16) for i in range(15)]
        start_at = time.monotonic()
        for i, frame in enumerate(chime):  # on an absolute schedule, as the earcon is paced
            await pipeline.speaker.write(frame)
            await asyncio.sleep(max(0.0, start_at + (i + 1) * 0.01 - time.monotonic()))
        await wait_until(lambda: session.stats.playback_rests == 2)
    finally:
        await pipeline.aclose()
    assert pipeline.jitter.underruns == 1, "only the chime's end ran the buffer dry"
    out = devices.played()
    start = int(np.flatnonzero(out == 100)[0])
    assert np.array_equal(out[start : start + 15 * 480], np.concatenate(chime))
    assert not out[start - 3 * 480 : start].any(), "primed with the buffer's worth of silence"


class _Unpluggable:
    """A real PCM whose state() reports a USB device gone, once `gone` is set."""

    gone = False

    def __init__(self, pcm: Any) -> None:
        self._pcm = pcm

    def state(self) -> int:
        return alsaaudio.PCM_STATE_DISCONNECTED if _Unpluggable.gone else self._pcm.state()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pcm, name)


async def test_a_speaker_unplugged_while_resting_is_a_fault_within_a_second(
    tmp_path: Path,
) -> None:
    devices = write_file_devices(tmp_path, ramp(6.0))
    _Unpluggable.gone = False
    pipeline = pipeline_on(devices, factory=lambda **kw: _Unpluggable(alsaaudio.PCM(**kw)))
    await pipeline.start()
    try:
        session = pipeline.session
        assert isinstance(session, AlsaSession)
        await wait_until(lambda: session.stats.playback_rests == 1)
        _Unpluggable.gone = True
        t0 = time.monotonic()
        await wait_until(lambda: isinstance(pipeline.fault, AudioDeviceLostError), 3)
        assert time.monotonic() - t0 < 1.5
        assert "disconnected" in str(pipeline.fault)
    finally:
        _Unpluggable.gone = False
        await pipeline.aclose()


async def test_two_channel_playback_gets_the_scaled_frame_on_both_channels(tmp_path: Path) -> None:
    devices = write_file_devices(tmp_path, ramp(2.0))
    pipeline = pipeline_on(devices, volume=0.5, playback_channels=2)
    await pipeline.start()
    try:
        # Odd-sized writes: the speaker cuts them into exact 10 ms frames for the thread.
        for _ in range(30):
            await pipeline.speaker.write(np.full(700, 2000, dtype=np.int16))
            await asyncio.sleep(0.0145)
    finally:
        await pipeline.aclose()
    played = np.fromfile(devices.outfile, dtype="<i2").reshape(-1, 2)
    loud = played[played[:, 0] != 0]
    assert len(loud) >= 40 * 480 and (loud == 1000).all(), "both channels, volume 0.5"


async def test_one_unplug_is_one_fault_and_late_reports_cannot_close_the_new_session(
    tmp_path: Path,
) -> None:
    devices = write_file_devices(tmp_path, ramp(3.0), playback_file="/dev/full")
    pipeline = pipeline_on(devices)
    hooks: list[Any] = []
    open_session = pipeline._open_session

    def recording(h: Any) -> Any:
        hooks.append(h)
        return open_session(h)

    pipeline._open_session = recording
    await pipeline.start()
    try:
        await wait_until(lambda: isinstance(pipeline.fault, AudioDeviceLostError))
        # Both threads failing at once: a session reports the first failure only.
        faults: list[AudioDeviceError] = []
        session = AlsaSession(
            AlsaConfig(),
            processor=pipeline.processor,
            jitter=pipeline.jitter,
            volume=1.0,
            deliver=lambda frames, at: None,
            on_fault=faults.append,
        )
        session._fail(AudioDeviceLostError("capture: I/O error"))
        session._fail(AudioDeviceLostError("playback: I/O error"))
        assert [str(f) for f in faults] == ["capture: I/O error"]

        replug(devices, "/dev/full", str(devices.outfile))
        await wait_until(lambda: pipeline.opened == 2 and pipeline.session is not None, 10)
        # A report from the closed session arriving late is not a fault of the new one.
        hooks[0].fault(AudioDeviceLostError("late news from the old session"))
        await asyncio.sleep(0.3)
        assert pipeline.session is not None and pipeline.fault is None and pipeline.opened == 2
        await asyncio.wait_for(pipeline.microphone.read(), 1)
    finally:
        await pipeline.aclose()


class _SmallCaptureBuffer:
    """A real PCM that reports the capture buffer a dsnoop-like device grants: 6 periods."""

    def __init__(self, pcm: Any) -> None:
        self._pcm = pcm

    def info(self) -> dict[str, Any]:
        info = dict(self._pcm.info())
        if self._pcm.pcmtype() == alsaaudio.PCM_CAPTURE:
            info["buffer_size"] = 6 * info["period_size"]
        return info

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pcm, name)


async def test_idle_blocks_shrink_to_fit_a_small_capture_buffer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    devices = write_file_devices(tmp_path, ramp(2.0))
    pipeline = pipeline_on(devices, factory=lambda **kw: _SmallCaptureBuffer(alsaaudio.PCM(**kw)))
    pipeline.set_call_audio(False)
    with caplog.at_level("WARNING"):
        await pipeline.start()
    try:
        session = pipeline.session
        assert isinstance(session, AlsaSession)
        # Six periods granted, four kept free for late wake-ups: blocks of two.
        assert session.idle_block_periods == 2 and session._block_periods == 2
        assert "leaves room for idle blocks of 2, not 8" in caplog.text
        got = [await asyncio.wait_for(pipeline.microphone.read(), 1) for _ in range(20)]
    finally:
        await pipeline.aclose()
    assert np.array_equal(np.concatenate(got), ramp(2.0)[: 20 * 480])
