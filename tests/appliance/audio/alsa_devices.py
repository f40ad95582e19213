"""ALSA file-plugin devices for tests: capture reads a raw file, playback writes one."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from appliance.audio.alsa import alsa_pipeline
from appliance.audio.pipeline import AudioPipeline
from appliance.clock import SystemClock
from appliance.settings import BoardAudio

SYSTEM_ALSA_CONF = Path("/usr/share/alsa/alsa.conf")


@dataclass(frozen=True)
class FileDevices:
    """Device names and files of one test ALSA configuration."""

    config: Path
    capture: str
    playback: str
    infile: Path
    outfile: Path

    def played(self, channels: int = 1) -> npt.NDArray[np.int16]:
        """Everything written to the playback device so far (first channel)."""
        pcm = np.fromfile(self.outfile, dtype="<i2") if self.outfile.exists() else np.zeros(0)
        return pcm.reshape(-1, channels)[:, 0].astype(np.int16)


def write_file_devices(
    workdir: Path,
    capture_pcm: npt.NDArray[np.int16],
    *,
    capture_channels: int = 1,
    playback_file: str | None = None,
) -> FileDevices:
    """An ALSA config with `kcap` (reads `capture_pcm`, interleaved) and `kplay` (writes a file)."""
    workdir.mkdir(parents=True, exist_ok=True)
    infile = workdir / "capture.raw"
    outfile = workdir / "playback.raw"
    capture_pcm.astype("<i2").tofile(infile)
    config = workdir / "asound.conf"
    config.write_text(
        f"""
pcm.kcap {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{infile}"
    format "raw"
}}
pcm.kplay {{
    type file
    slave.pcm "null"
    file "{playback_file or outfile}"
    format "raw"
}}
"""
    )
    del capture_channels
    return FileDevices(config, "kcap", "kplay", infile, outfile)


def use_config(config: Path) -> None:
    """Point libasound at the system configuration plus `config` (call before opening PCMs)."""
    os.environ["ALSA_CONFIG_PATH"] = f"{SYSTEM_ALSA_CONF}:{config}"


async def idle_alsa_pipeline(workdir: Path, capture_pcm: npt.NDArray[np.int16]) -> AudioPipeline:
    """A started pipeline with software echo cancellation on file devices, idle as a daemon's."""
    devices = write_file_devices(workdir, capture_pcm)
    use_config(devices.config)
    audio = BoardAudio(
        backend="alsa",
        pacing="clock",
        capture_device=devices.capture,
        playback_device=devices.playback,
        echo_cancellation="software",
    )
    pipeline = alsa_pipeline(audio, clock=SystemClock())
    pipeline.set_call_audio(False)  # what the daemon does whenever no call carries the audio
    await pipeline.start()
    assert pipeline.fault is None, pipeline.fault
    return pipeline
