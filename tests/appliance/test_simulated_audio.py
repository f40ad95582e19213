"""The simulated board's microphone and speaker, paced by a manual clock."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import pytest

from appliance.audio.base import SAMPLES_PER_FRAME
from appliance.audio.fanout import CaptureFanout
from appliance.audio.simulated import WavMicrophone, WavSpeaker, read_wav_mono
from appliance.clock import ManualClock
from demo.stack import write_wav

pytestmark = pytest.mark.unit


@pytest.fixture
def ramp_wav(tmp_path: Path) -> Path:
    path = tmp_path / "ramp.wav"
    write_wav(path, np.arange(2400, dtype=np.int16))  # 50 ms at 48 kHz
    return path


async def test_microphone_is_paced_in_real_time_and_loops(ramp_wav: Path) -> None:
    clock = ManualClock()
    mic = WavMicrophone(ramp_wav, loop=True, clock=clock)
    reader = asyncio.create_task(mic.read())
    await clock.advance(0.005)
    assert not reader.done()  # the first 10 ms frame is not captured yet
    await clock.advance(0.005)
    first = await asyncio.wait_for(reader, 1)
    assert first.tolist() == list(range(480))
    frames = []
    for _ in range(5):
        task = asyncio.create_task(mic.read())
        await clock.advance(0.01)
        frames.append(await asyncio.wait_for(task, 1))
    assert frames[-1][0] == 0  # the sixth frame starts the file again


async def test_microphone_delivers_a_period_of_frames_at_once(ramp_wav: Path) -> None:
    clock = ManualClock()
    mic = WavMicrophone(ramp_wav, period_ms=30, clock=clock)
    reader = asyncio.create_task(mic.read())
    await clock.advance(0.02)
    assert not reader.done()  # the first period is not captured yet
    await clock.advance(0.01)
    frames = [await asyncio.wait_for(reader, 1)]
    frames += [await asyncio.wait_for(mic.read(), 1) for _ in range(2)]  # no time passes
    assert [f[0] for f in frames] == [0, 480, 960]
    reader = asyncio.create_task(mic.read())
    await clock.advance(0.02)
    assert not reader.done()  # the fourth frame ends the second period
    await clock.advance(0.01)
    assert (await asyncio.wait_for(reader, 1))[0] == 1440


def test_microphone_period_is_whole_frames() -> None:
    with pytest.raises(ValueError, match="period_ms"):
        WavMicrophone(None, period_ms=25)


async def test_microphone_jumps_to_live_after_nobody_read(ramp_wav: Path) -> None:
    clock = ManualClock()
    mic = WavMicrophone(ramp_wav, loop=False, clock=clock)
    await clock.advance(10.0)
    reader = asyncio.create_task(mic.read())
    await clock.advance(0.01)
    frame = await asyncio.wait_for(reader, 1)
    assert not frame.any()  # ten seconds in, the 50 ms file is long over: silence


async def test_speaker_records_what_it_plays(tmp_path: Path) -> None:
    path = tmp_path / "out" / "speaker.wav"
    speaker = WavSpeaker(path)
    tone = (1000 * np.sin(np.arange(SAMPLES_PER_FRAME) / 5)).astype(np.int16)
    for _ in range(3):
        await speaker.write(tone)
    await speaker.aclose()
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getnframes()) == (48000, 1, 1440)
    assert np.array_equal(read_wav_mono(path), np.tile(tone, 3))


async def test_wav_at_another_rate_is_resampled(tmp_path: Path) -> None:
    path = tmp_path / "16k.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(np.zeros(3200, dtype=np.int16).tobytes())  # 100 ms stereo
    assert abs(len(read_wav_mono(path)) - 4800) <= 48


async def test_fanout_gives_each_reader_every_frame_and_drops_the_oldest(ramp_wav: Path) -> None:
    clock = ManualClock()
    fanout = CaptureFanout(WavMicrophone(ramp_wav, clock=clock))
    fanout.start()
    a = fanout.subscribe("a", max_frames=2)
    b = fanout.subscribe("b", max_frames=10)
    for _ in range(4):
        await clock.advance(0.01)
    a_frames = [await asyncio.wait_for(a.read(), 1) for _ in range(2)]
    b_frames = [await asyncio.wait_for(b.read(), 1) for _ in range(4)]
    assert [f[0] for f in b_frames] == [0, 480, 960, 1440]
    assert [f[0] for f in a_frames] == [960, 1440] and a.dropped == 2
    await a.aclose()
    await fanout.aclose()


async def test_batching_reader_is_woken_once_per_batch(ramp_wav: Path) -> None:
    clock = ManualClock()
    fanout = CaptureFanout(WavMicrophone(ramp_wav, clock=clock))
    fanout.start()
    sub = fanout.subscribe("batched", max_frames=10, batch_frames=3)
    reader = asyncio.create_task(sub.read_batch())
    for _ in range(2):
        await clock.advance(0.01)
    assert not reader.done()  # two frames queued: not woken yet
    await clock.advance(0.01)
    batch = await asyncio.wait_for(reader, 1)
    assert [f[0] for f in batch] == [0, 480, 960]
    await clock.advance(0.041)
    assert [f[0] for f in await asyncio.wait_for(sub.read_batch(), 1)] == [1440, 1920, 0, 480]
    with pytest.raises(ValueError, match="batch_frames"):
        fanout.subscribe("too-big", max_frames=2, batch_frames=3)
    await sub.aclose()
    await fanout.aclose()
