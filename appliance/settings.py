"""Device settings: frozen dataclasses built once at start-up from TOML and the board profile."""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from appliance.errors import SettingsError

DEFAULT_BOARD_DIR = Path(__file__).resolve().parent.parent / "board"
INSTALLED_BOARD_DIR = Path("/usr/share/kiosk-voice/board")


@dataclass(frozen=True)
class DeviceSettings:
    """Who this device is and where it keeps its key and enrollment."""

    state_dir: Path
    name: str = "kiosk"


@dataclass(frozen=True)
class BackendSettings:
    """How to reach the provisioning backend."""

    url: str
    timeout_s: float = 5.0
    # While idle the device checks in this often (±10 %), which also renews its held grant.
    heartbeat_s: float = 60.0
    # Hold a call token while idle, so a press goes straight to LiveKit.
    hold_grant: bool = True


@dataclass(frozen=True)
class BoardSelection:
    """Which board profile to load: a name in `dir`, or a path to a TOML file."""

    profile: str = "simulated"
    dir: Path | None = None


@dataclass(frozen=True)
class CallSettings:
    """Call policy the device applies until the backend overrides it."""

    agent_join_timeout_s: float = 20.0
    max_duration_s: float = 600.0
    status_topic: str = "kiosk.call_status"
    connect_timeout_s: float = 10.0
    # Hang up when neither side has spoken for this long (0 turns it off).
    idle_timeout_s: float = 60.0
    # Data topic on which the agent (and only the agent) may send {"v":1,"type":"end_call"}.
    control_topic: str = "kiosk.control"
    # After a call, triggers are ignored for this long.
    cooldown_s: float = 1.0
    # What a trigger does while a call is ending: "ignore", or "redial" once it has ended.
    trigger_while_ending: str = "ignore"
    # A call whose connection (or room) is lost must be back within this, else connection_lost.
    rejoin_window_s: float = 30.0


@dataclass(frozen=True)
class ButtonSettings:
    """How presses of the call button are read."""

    long_press_s: float = 1.5


@dataclass(frozen=True)
class MicroWakeSettings:
    """microWakeWord: a built-in model name or a model's JSON file; cutoff 0 keeps its own."""

    model: str = "okay_nabu"
    probability_cutoff: float = 0.0


@dataclass(frozen=True)
class PorcupineWakeSettings:
    """Porcupine: AccessKey (or $PICOVOICE_ACCESS_KEY), keywords or .ppn files, sensitivities."""

    access_key: str = ""
    keywords: tuple[str, ...] = ("porcupine",)
    keyword_paths: tuple[Path, ...] = ()
    sensitivities: tuple[float, ...] = ()
    model_path: Path | None = None


@dataclass(frozen=True)
class WakeSettings:
    """The wake word: engine "auto" is Porcupine when an AccessKey is set, else microWakeWord."""

    engine: str = "auto"
    refractory_s: float = 2.0
    # Whether saying the wake word during a call hangs up.
    hangup_word: bool = False
    earcon: bool = True
    micro: MicroWakeSettings = field(default_factory=MicroWakeSettings)
    porcupine: PorcupineWakeSettings = field(default_factory=PorcupineWakeSettings)


@dataclass(frozen=True)
class SimulatedSettings:
    """Files behind the simulated board's microphone and speaker."""

    microphone_wav: Path | None = None
    speaker_wav: Path | None = None
    loop_microphone: bool = True


@dataclass(frozen=True)
class LoggingSettings:
    """Log level and whether to write to the journal ("auto", "on" or "off")."""

    level: str = "info"
    journal: str = "auto"


@dataclass(frozen=True)
class BoardAudio:
    """The board's audio hardware: ALSA device names, format, buffering and processing."""

    backend: str = "simulated"
    sample_rate: int = 48000
    capture_device: str = "default"
    playback_device: str = "default"
    capture_channels: int = 1
    capture_channel: int = 0
    playback_channels: int = 1
    # ALSA period in frames at sample_rate (0: 10 ms) and the buffer length in periods.
    period_frames: int = 0
    buffer_periods: int = 4
    # "device": blocking ALSA I/O paces the threads; "clock": they pace themselves (file devices).
    pacing: str = "device"
    # "software" (WebRTC AEC in the firmware), "board" (XMOS array, speakerphone DSP) or "off".
    echo_cancellation: str = "software"
    noise_suppression: bool = True
    high_pass_filter: bool = True
    # Off by default: after software echo cancellation it lifts the residual echo (the
    # closed loop measured 13.7-38.4 dB of echo removed with it on, 41-52 dB off).
    auto_gain_control: bool = False
    # Acoustic and converter delay beyond what ALSA reports, added to the AEC's stream delay.
    echo_delay_ms: float = 0.0
    volume: float = 1.0
    jitter_prefill_ms: int = 20
    jitter_max_ms: int = 40


@dataclass(frozen=True)
class BoardButtons:
    """The board's call button."""

    backend: str = "simulated"
    call_pin: str | None = None
    pull_up: bool = True
    # An optional mute input: a "switch" (closed = muted) or a "button" (each press toggles).
    mute_pin: str | None = None
    mute_kind: str = "switch"
    debounce_s: float = 0.03


@dataclass(frozen=True)
class BoardLeds:
    """The board's status LED: "gpio" (a pin), "simulated" (recorded) or "none"."""

    backend: str = "none"
    status_pin: str | None = None
    # Whether driving the pin high lights the LED (false: the LED sinks into the pin).
    active_high: bool = True
    # PWM gives brightness levels; without it any level above 0 is simply on.
    pwm: bool = True


@dataclass(frozen=True)
class BoardProfile:
    """A board: which audio, button and LED hardware it has, from `board/<name>.toml`."""

    name: str
    description: str = ""
    audio: BoardAudio = field(default_factory=BoardAudio)
    buttons: BoardButtons = field(default_factory=BoardButtons)
    leds: BoardLeds = field(default_factory=BoardLeds)
    source: Path | None = None


@dataclass(frozen=True)
class Settings:
    """Everything the daemon is configured with."""

    device: DeviceSettings
    backend: BackendSettings
    board: BoardProfile
    call: CallSettings = field(default_factory=CallSettings)
    button: ButtonSettings = field(default_factory=ButtonSettings)
    wake: WakeSettings = field(default_factory=WakeSettings)
    simulated: SimulatedSettings = field(default_factory=SimulatedSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    source: Path | None = None


_LOG_LEVELS = ("debug", "info", "warning", "error")
_AUDIO_BACKENDS = ("simulated", "alsa")
_BUTTON_BACKENDS = ("simulated", "gpio")
_LED_BACKENDS = ("gpio", "simulated", "none")
_WAKE_ENGINES = ("auto", "micro", "porcupine", "off")
_WHILE_ENDING = ("ignore", "redial")
PICOVOICE_ACCESS_KEY_ENV = "PICOVOICE_ACCESS_KEY"

T = TypeVar("T")


def load_settings(path: Path, *, env: Mapping[str, str] | None = None) -> Settings:
    """Read the device's TOML settings and its board profile; errors name the key and the file."""
    env = os.environ if env is None else env
    path = Path(path)
    raw = _read_toml(path)
    base = path.parent
    _reject_unknown(raw, {f.name for f in dataclasses.fields(Settings)} - {"source"}, path, "")
    if "board" in raw and not isinstance(raw["board"], Mapping):
        raise SettingsError(path, "board", "must be a table")
    selection = _build(BoardSelection, raw.get("board", {}), path, "board", base)
    settings = Settings(
        device=_build(DeviceSettings, _required(raw, "device", path), path, "device", base),
        backend=_build(BackendSettings, _required(raw, "backend", path), path, "backend", base),
        board=load_board_profile(selection, settings_path=path),
        call=_build(CallSettings, raw.get("call", {}), path, "call", base),
        button=_build(ButtonSettings, raw.get("button", {}), path, "button", base),
        wake=_with_env_access_key(
            _build(WakeSettings, raw.get("wake", {}), path, "wake", base), env
        ),
        simulated=_build(SimulatedSettings, raw.get("simulated", {}), path, "simulated", base),
        logging=_build(LoggingSettings, raw.get("logging", {}), path, "logging", base),
        source=path,
    )
    _check_values(settings, path)
    return settings


def _with_env_access_key(wake: WakeSettings, env: Mapping[str, str]) -> WakeSettings:
    key = env.get(PICOVOICE_ACCESS_KEY_ENV, "")
    if wake.porcupine.access_key or not key:
        return wake
    return dataclasses.replace(wake, porcupine=dataclasses.replace(wake.porcupine, access_key=key))


def load_board_profile(selection: BoardSelection, *, settings_path: Path) -> BoardProfile:
    """Find and read the board profile that `selection` names."""
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
    raw = _read_toml(profile_path)
    profile = _build(BoardProfile, raw, profile_path, "", profile_path.parent)
    profile = dataclasses.replace(profile, source=profile_path)
    if profile.audio.backend not in _AUDIO_BACKENDS:
        raise SettingsError(profile_path, "audio.backend", f"must be one of {_AUDIO_BACKENDS}")
    _check_audio(profile.audio, profile_path)
    if profile.buttons.backend not in _BUTTON_BACKENDS:
        raise SettingsError(profile_path, "buttons.backend", f"must be one of {_BUTTON_BACKENDS}")
    if profile.buttons.mute_kind not in ("switch", "button"):
        raise SettingsError(
            profile_path, "buttons.mute_kind", "must be one of ('switch', 'button')"
        )
    if profile.buttons.backend == "gpio" and not profile.buttons.call_pin:
        raise SettingsError(profile_path, "buttons.call_pin", "is required by the gpio backend")
    if profile.leds.backend not in _LED_BACKENDS:
        raise SettingsError(profile_path, "leds.backend", f"must be one of {_LED_BACKENDS}")
    if profile.leds.backend == "gpio" and not profile.leds.status_pin:
        raise SettingsError(profile_path, "leds.status_pin", "is required by the gpio backend")
    return profile


def _check_values(settings: Settings, path: Path) -> None:
    if not settings.backend.url.startswith(("http://", "https://")):
        raise SettingsError(path, "backend.url", "must start with http:// or https://")
    for key, value in (
        ("backend.timeout_s", settings.backend.timeout_s),
        ("call.agent_join_timeout_s", settings.call.agent_join_timeout_s),
        ("call.max_duration_s", settings.call.max_duration_s),
        ("call.connect_timeout_s", settings.call.connect_timeout_s),
        ("button.long_press_s", settings.button.long_press_s),
    ):
        if value <= 0:
            raise SettingsError(path, key, "must be greater than 0")
    for key, value in (
        ("call.idle_timeout_s", settings.call.idle_timeout_s),
        ("call.cooldown_s", settings.call.cooldown_s),
        ("call.rejoin_window_s", settings.call.rejoin_window_s),
        ("wake.refractory_s", settings.wake.refractory_s),
    ):
        if value < 0:
            raise SettingsError(path, key, "must not be negative")
    # A heartbeat more often than every 5 s would be a load on the fleet's backend.
    if settings.backend.heartbeat_s != 0 and settings.backend.heartbeat_s < 5:
        raise SettingsError(path, "backend.heartbeat_s", "must be 0 (off) or at least 5")
    if settings.call.trigger_while_ending not in _WHILE_ENDING:
        raise SettingsError(path, "call.trigger_while_ending", f"must be one of {_WHILE_ENDING}")
    if settings.wake.engine not in _WAKE_ENGINES:
        raise SettingsError(path, "wake.engine", f"must be one of {_WAKE_ENGINES}")
    if not 0 <= settings.wake.micro.probability_cutoff < 1:
        raise SettingsError(path, "wake.micro.probability_cutoff", "must be from 0 up to 1")
    porcupine = settings.wake.porcupine
    if porcupine.sensitivities and len(porcupine.sensitivities) != len(
        porcupine.keyword_paths or porcupine.keywords
    ):
        raise SettingsError(
            path, "wake.porcupine.sensitivities", "needs one value per keyword (or none)"
        )
    if any(not 0 <= s <= 1 for s in porcupine.sensitivities):
        raise SettingsError(path, "wake.porcupine.sensitivities", "must each be from 0 to 1")
    if settings.logging.level not in _LOG_LEVELS:
        raise SettingsError(path, "logging.level", f"must be one of {_LOG_LEVELS}")
    if settings.logging.journal not in ("auto", "on", "off"):
        raise SettingsError(path, "logging.journal", "must be one of ('auto', 'on', 'off')")
    if settings.board.audio.backend == "simulated" and settings.simulated.speaker_wav is None:
        raise SettingsError(path, "simulated.speaker_wav", "is required by the simulated board")


def _check_audio(audio: BoardAudio, path: Path) -> None:
    choices = {
        "pacing": ("device", "clock"),
        "echo_cancellation": ("software", "board", "off"),
    }
    for key, allowed in choices.items():
        if getattr(audio, key) not in allowed:
            raise SettingsError(path, f"audio.{key}", f"must be one of {allowed}")
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
    if not 0.0 <= audio.volume <= 1.0:
        raise SettingsError(path, "audio.volume", "must be between 0.0 and 1.0")
    if not 10 <= audio.jitter_prefill_ms <= audio.jitter_max_ms <= 200:
        raise SettingsError(
            path, "audio.jitter_max_ms", "need 10 <= jitter_prefill_ms <= jitter_max_ms <= 200"
        )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise SettingsError(path, None, "file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(path, None, f"not valid TOML: {exc}") from exc


def _required(raw: Mapping[str, Any], key: str, path: Path) -> Any:
    if key not in raw:
        raise SettingsError(path, key, "missing section")
    return raw[key]


def _reject_unknown(raw: Mapping[str, Any], known: set[str], path: Path, prefix: str) -> None:
    for key in raw:
        if key not in known:
            raise SettingsError(
                path, f"{prefix}{key}", f"unknown key (known: {', '.join(sorted(known))})"
            )


def _build(cls: type[T], raw: Any, path: Path, section: str, base: Path) -> T:
    """Build dataclass `cls` from a TOML table, checking each key's name and type."""
    prefix = f"{section}." if section else ""
    if not isinstance(raw, Mapping):
        raise SettingsError(path, section or None, "must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    _reject_unknown(raw, set(fields) - {"source"}, path, prefix)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, value in raw.items():
        values[name] = _convert(hints[name], value, path, f"{prefix}{name}", base)
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in values and no_default:
            raise SettingsError(path, f"{prefix}{name}", "missing required key")
    return cls(**values)


def _convert(hint: Any, value: Any, path: Path, key: str, base: Path) -> Any:
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list):
            raise SettingsError(path, key, f"must be a list, not {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_convert(item, v, path, f"{key}[{i}]", base) for i, v in enumerate(value))
    if isinstance(hint, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(options[0], value, path, key, base)
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type, hint), value, path, key, base)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise SettingsError(path, key, "must be a non-empty path string")
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SettingsError(path, key, f"must be a number, not {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(path, key, f"must be an integer, not {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise SettingsError(path, key, f"must be true or false, not {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise SettingsError(path, key, f"must be a string, not {value!r}")
        return value
    raise SettingsError(path, key, f"unsupported setting type {hint!r}")  # pragma: no cover
