"""Board profiles (`board/<name>.toml`): which audio, button, LED and relay hardware a board has.

Loaded and checked once, here; `board.py` opens what a valid profile names and checks nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from appliance.errors import SettingsError
from appliance.toml_tables import build, read_toml

DEFAULT_BOARD_DIR = Path(__file__).resolve().parent.parent / "board"
INSTALLED_BOARD_DIR = Path("/usr/share/kiosk-voice/board")

AudioBackend = Literal["simulated", "alsa"]
# "device": blocking ALSA I/O paces the threads; "clock": they pace themselves (file devices).
AudioPacing = Literal["device", "clock"]
# "software" (WebRTC AEC in the firmware), "board" (XMOS array, speakerphone DSP) or "off".
EchoCancellation = Literal["software", "board", "off"]
# The linear stage's adaptive filter: a frequency-domain Kalman filter (numpy) or speexdsp's MDF.
LinearEchoAlgorithm = Literal["kalman", "speexdsp"]
ButtonBackend = Literal["simulated", "gpio"]
# A "switch" (closed = muted) or a "button" (each press toggles).
MuteKind = Literal["switch", "button"]
LedBackend = Literal["gpio", "simulated", "none"]
RelayBackend = Literal["gpio", "simulated", "none"]


@dataclass(frozen=True)
class BoardSelection:
    """Which board profile to load: a name in `dir`, or a path to a TOML file."""

    profile: str = "simulated"
    dir: Path | None = None


@dataclass(frozen=True)
class BoardAudio:
    """The board's audio hardware: ALSA device names, format, buffering and processing."""

    backend: AudioBackend = "simulated"
    sample_rate: int = 48000
    capture_device: str = "default"
    playback_device: str = "default"
    capture_channels: int = 1
    capture_channel: int = 0
    playback_channels: int = 1
    # ALSA period in frames at sample_rate (0: 10 ms) and the buffer length in periods.
    period_frames: int = 0
    buffer_periods: int = 4
    pacing: AudioPacing = "device"
    echo_cancellation: EchoCancellation = "software"
    noise_suppression: bool = True
    high_pass_filter: bool = True
    # Off by default: after software echo cancellation it lifts the residual echo (the
    # closed loop measured 13.7-38.4 dB of echo removed with it on, 41-52 dB off).
    auto_gain_control: bool = False
    # A linear echo filter ahead of AEC3 (ms of echo it models; 0: not run): keeps a person
    # talking over the agent at full level (docs/audio.md, "Linear pre-stage"). Its algorithm:
    # the Kalman filter met the targets in a 0.5 s room where speexdsp's MDF did not
    # (docs/audio.md, "The lounge").
    linear_echo_filter_ms: int = 0
    linear_echo_algorithm: LinearEchoAlgorithm = "kalman"
    # Acoustic and converter delay beyond what ALSA reports, added to the AEC's stream delay.
    echo_delay_ms: float = 0.0
    volume: float = 1.0
    jitter_prefill_ms: int = 20
    jitter_max_ms: int = 40


@dataclass(frozen=True)
class BoardButtons:
    """The board's call button: on GPIO, or simulated on gpiozero's mock pins."""

    backend: ButtonBackend = "simulated"
    call_pin: str | None = None
    pull_up: bool = True
    # An optional mute input (see MuteKind).
    mute_pin: str | None = None
    mute_kind: MuteKind = "switch"
    debounce_s: float = 0.03


@dataclass(frozen=True)
class BoardLeds:
    """The board's status LED: "gpio" (a pin), "simulated" (recorded) or "none"."""

    backend: LedBackend = "none"
    status_pin: str | None = None
    # Whether driving the pin high lights the LED (false: the LED sinks into the pin).
    active_high: bool = True
    # PWM gives brightness levels; without it any level above 0 is simply on.
    pwm: bool = True


@dataclass(frozen=True)
class BoardRelay:
    """A relay output an agent may pulse (a door opener): "gpio", "simulated" or "none"."""

    backend: RelayBackend = "none"
    pin: str | None = None
    # Whether driving the pin high closes the relay.
    active_high: bool = True


@dataclass(frozen=True)
class BoardProfile:
    """A board: which audio, button and LED hardware it has, from `board/<name>.toml`."""

    name: str
    description: str = ""
    audio: BoardAudio = field(default_factory=BoardAudio)
    buttons: BoardButtons = field(default_factory=BoardButtons)
    leds: BoardLeds = field(default_factory=BoardLeds)
    relay: BoardRelay = field(default_factory=BoardRelay)
    source: Path | None = None


def load_board_profile(selection: BoardSelection, *, settings_path: Path) -> BoardProfile:
    """Find, read and check the board profile that `selection` names."""
    candidate = Path(selection.profile)
    if candidate.suffix == ".toml":
        profile_path = candidate if candidate.is_absolute() else settings_path.parent / candidate
    else:
        dirs = [selection.dir] if selection.dir else [DEFAULT_BOARD_DIR, INSTALLED_BOARD_DIR]
        found = [
            d / f"{selection.profile}.toml"
            for d in dirs
            if (d / f"{selection.profile}.toml").exists()
        ]
        if not found:
            looked = ", ".join(str(d) for d in dirs)
            raise SettingsError(
                settings_path,
                "board.profile",
                f"no board profile {selection.profile!r} in {looked}",
            )
        profile_path = found[0]
    raw = read_toml(profile_path)
    profile = build(BoardProfile, raw, profile_path, "", profile_path.parent)
    profile = dataclasses.replace(profile, source=profile_path)
    _check_audio(profile.audio, profile_path)
    if profile.buttons.backend == "gpio" and not profile.buttons.call_pin:
        raise SettingsError(profile_path, "buttons.call_pin", "is required by the gpio backend")
    if profile.leds.backend == "gpio" and not profile.leds.status_pin:
        raise SettingsError(profile_path, "leds.status_pin", "is required by the gpio backend")
    if profile.relay.backend == "gpio" and not profile.relay.pin:
        raise SettingsError(profile_path, "relay.pin", "is required by the gpio backend")
    return profile


def _check_audio(audio: BoardAudio, path: Path) -> None:
    if not 8000 <= audio.sample_rate <= 192000:
        raise SettingsError(path, "audio.sample_rate", "must be between 8000 and 192000")
    for key in ("capture_channels", "playback_channels", "buffer_periods"):
        if getattr(audio, key) < 1:
            raise SettingsError(path, f"audio.{key}", "must be at least 1")
    if not 0 <= audio.capture_channel < audio.capture_channels:
        raise SettingsError(path, "audio.capture_channel", "must be below capture_channels")
    for key in ("period_frames", "echo_delay_ms"):
        if getattr(audio, key) < 0:
            raise SettingsError(path, f"audio.{key}", "must not be negative")
    if audio.linear_echo_filter_ms and not 50 <= audio.linear_echo_filter_ms <= 500:
        raise SettingsError(path, "audio.linear_echo_filter_ms", "must be 0 or 50 to 500")
    if not 0.0 <= audio.volume <= 1.0:
        raise SettingsError(path, "audio.volume", "must be between 0.0 and 1.0")
    if not 10 <= audio.jitter_prefill_ms <= audio.jitter_max_ms <= 200:
        raise SettingsError(
            path, "audio.jitter_max_ms", "need 10 <= jitter_prefill_ms <= jitter_max_ms <= 200"
        )
