"""A throwaway PulseAudio daemon on a private socket: the loop between the kiosk and the room."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SYSTEM_ALSA_CONF = Path("/usr/share/alsa/alsa.conf")

# Two null sinks: the kiosk plays into `kiosk_speaker`, the room hears its monitor; the room
# plays into `kiosk_air`, the kiosk's microphone is its monitor. No hardware, no network.
SINKS = ("kiosk_speaker", "kiosk_air")


@dataclass(frozen=True)
class PulseLoop:
    """The daemon's socket and the ALSA configuration naming the four ends of the loop."""

    socket: Path
    alsa_config: Path
    # ALSA PCM names (the kiosk's real path: libasound -> the `pulse` plugin -> the daemon).
    kiosk_playback: str = "kiosk_speaker"
    kiosk_capture: str = "kiosk_mic"
    room_ear: str = "room_ear"
    room_mouth: str = "room_mouth"

    @property
    def env(self) -> dict[str, str]:
        """Environment for a process that opens the loop's PCMs."""
        return {
            "ALSA_CONFIG_PATH": f"{SYSTEM_ALSA_CONF}:{self.alsa_config}",
            "PULSE_SERVER": f"unix:{self.socket}",
        }


def pulse_available() -> str | None:
    """Why the loop cannot run here (None when it can)."""
    if shutil.which("pulseaudio") is None:
        return "pulseaudio is not installed (scripts/setup installs it)"
    plugins = list(Path("/usr/lib").glob("*/alsa-lib/libasound_module_pcm_pulse.so"))
    if not plugins:
        return "the ALSA pulse plugin is not installed (libasound2-plugins)"
    return None


def _alsa_config(socket: Path) -> str:
    pcms = {
        "kiosk_speaker": "kiosk_speaker",
        "kiosk_mic": "kiosk_air.monitor",
        "room_ear": "kiosk_speaker.monitor",
        "room_mouth": "kiosk_air",
    }
    return "".join(
        f'pcm.{name} {{\n    type pulse\n    server "unix:{socket}"\n    device "{device}"\n}}\n'
        for name, device in pcms.items()
    )


@contextlib.contextmanager
def pulse_loop(workdir: Path, *, timeout_s: float = 10.0) -> Iterator[PulseLoop]:
    """Start a private PulseAudio daemon with the loop's sinks; stop it on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    socket = workdir / "native"
    socket.unlink(missing_ok=True)  # a daemon killed earlier leaves its socket behind
    script = workdir / "loop.pa"
    sinks = "".join(
        f"load-module module-null-sink sink_name={sink} rate=48000 channels=1 format=s16le\n"
        for sink in SINKS
    )
    script.write_text(
        f"load-module module-native-protocol-unix socket={socket} auth-anonymous=1\n{sinks}"
    )
    config = workdir / "asound.conf"
    config.write_text(_alsa_config(socket))
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(home),
        "PULSE_RUNTIME_PATH": str(home / "runtime"),
        "PULSE_STATE_PATH": str(home / "state"),
    }
    log = (workdir / "pulseaudio.log").open("wb")
    proc = subprocess.Popen(
        [
            "pulseaudio",
            "-n",
            "-F",
            str(script),
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--use-pid-file=no",
            "--disable-shm=yes",
            "--realtime=yes",
            "--high-priority=yes",
            "--log-target=stderr",
            "--log-level=warning",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"pulseaudio did not start: {(workdir / 'pulseaudio.log').read_text()}"
                )
            time.sleep(0.05)
        # The daemon makes its sink threads real-time itself; client streams are read by its
        # main thread, which a loaded machine would otherwise leave waiting for a core.
        with contextlib.suppress(OSError):
            os.sched_setscheduler(proc.pid, os.SCHED_FIFO, os.sched_param(15))
        yield PulseLoop(socket=socket, alsa_config=config)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
