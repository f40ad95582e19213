"""The room, in real time, as its own process: hears the kiosk's speaker, writes its microphone.

Run as `python -m tests.appliance.audio.loop.room_sim SPEC.json`. Every 10 ms it reads what the
kiosk's speaker played (the speaker sink's monitor), passes it through the room (speaker
saturation, delay, reverberation), adds a near-end talker and noise, and writes the result to
the sink the kiosk's microphone records. The near-end talker's schedule counts from the first
sound the speaker makes, so it lines up with the agent's speech whenever the kiosk starts.
On SIGTERM, or `max_s` after that first sound, it writes every signal it made to OUT.npz.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from appliance.audio.base import SAMPLE_RATE, SAMPLES_PER_FRAME
from appliance.audio.room import BlockConvolver, ReverbRoom

ONSET_DBFS = -45.0  # the speaker's first 10 ms above this starts the near-end schedule
MOUTH_PREFILL = 5  # periods of silence queued to the microphone sink before the first block
SETTLE_BLOCKS = 30  # consecutive 10 ms blocks from the ear, on time, before the room is ready


def _realtime() -> None:
    # A room that misses its 10 ms slot glitches the loop; on a busy machine this keeps it on
    # time (it is allowed as root or with rtkit limits; without it the run still works).
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))


def main(spec_path: str) -> None:
    import alsaaudio

    spec = json.loads(Path(spec_path).read_text())
    room = ReverbRoom(**spec["room"])
    near = np.load(spec["near_file"]).astype(np.float64)
    near_at = [round(s * SAMPLE_RATE) for s in spec["near_at_s"]]
    max_n = round(spec["max_s"] * SAMPLE_RATE)
    noise = 32768 * 10 ** (room.noise_dbfs / 20)
    rng = np.random.default_rng(room.seed + 100)
    conv = BlockConvolver(room.impulse_response(), SAMPLES_PER_FRAME)
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    _realtime()
    common = {
        "rate": SAMPLE_RATE,
        "channels": 1,
        "format": alsaaudio.PCM_FORMAT_S16_LE,
        "periodsize": SAMPLES_PER_FRAME,
    }
    ear = alsaaudio.PCM(
        alsaaudio.PCM_CAPTURE, device=spec["ear"], periods=spec.get("ear_periods", 4), **common
    )
    mouth = alsaaudio.PCM(
        alsaaudio.PCM_PLAYBACK,
        device=spec["mouth"],
        periods=spec.get("mouth_periods", 10),
        **common,
    )
    # The speaker sink's monitor starts with large blocks until the ear's latency request has
    # reached it: wait until blocks come at 10 ms, then prime the microphone and say ready.
    steady, last = 0, time.monotonic()
    deadline = last + 10.0
    while steady < SETTLE_BLOCKS and time.monotonic() < deadline:
        ear.read()
        now = time.monotonic()
        steady = steady + 1 if now - last < 0.025 else 0
        last = now
    silence = bytes(SAMPLES_PER_FRAME * 2)
    for _ in range(MOUTH_PREFILL):
        mouth.write(silence)
    Path(spec["ready_file"]).touch()
    speaker_rec: list[np.ndarray] = []
    echo_rec: list[np.ndarray] = []
    near_rec: list[np.ndarray] = []
    mic_rec: list[np.ndarray] = []
    times: list[float] = []
    onset: int | None = None
    n = 0
    xruns: list[int] = []  # sample positions (room timeline) of ear and mouth xruns
    while not stop:
        got, data = ear.read()
        if got < 0:
            xruns.append(n)
            continue
        x = np.frombuffer(data, dtype=np.int16)
        if got == 0 or len(x) == 0:
            continue
        if len(x) != SAMPLES_PER_FRAME:  # the plugin hands out whole periods; keep to 10 ms
            x = np.resize(x, SAMPLES_PER_FRAME)
        times.append(time.monotonic())
        xf = x.astype(np.float64)
        if onset is None and 10 * np.log10(np.mean(xf**2) / 32768**2 + 1e-12) > ONSET_DBFS:
            onset = n
        echo = conv.push(room.speaker(xf.astype(np.float32)).astype(np.float64))
        talk = np.zeros(SAMPLES_PER_FRAME)
        if onset is not None:
            for start in near_at:
                a = n - onset - start  # where this block is in the near-end recording
                lo, hi = max(a, 0), min(a + SAMPLES_PER_FRAME, len(near))
                if hi > lo:
                    talk[lo - a : hi - a] += near[lo:hi]
        mic = echo + talk + rng.normal(0.0, noise, SAMPLES_PER_FRAME)
        out = np.clip(np.round(mic), -32768, 32767).astype(np.int16)
        try:
            if mouth.write(out.tobytes()) < 0:
                xruns.append(n)
        except alsaaudio.ALSAAudioError:
            xruns.append(n)
        speaker_rec.append(x.copy())
        echo_rec.append(echo.astype(np.float32))
        near_rec.append(talk.astype(np.float32))
        mic_rec.append(out)
        n += SAMPLES_PER_FRAME
        if onset is not None and n - onset >= max_n:
            break
    np.savez(
        spec["out_file"],
        speaker=np.concatenate(speaker_rec) if speaker_rec else np.zeros(0, np.int16),
        echo=np.concatenate(echo_rec) if echo_rec else np.zeros(0, np.float32),
        near=np.concatenate(near_rec) if near_rec else np.zeros(0, np.float32),
        mic=np.concatenate(mic_rec) if mic_rec else np.zeros(0, np.int16),
        times=np.array(times),
        onset=np.array(-1 if onset is None else onset),
        xruns=np.array(xruns, dtype=np.int64),
    )
    ear.close()
    mouth.close()


if __name__ == "__main__":
    main(sys.argv[1])
