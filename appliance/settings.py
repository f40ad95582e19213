"""Device settings: frozen dataclasses built once at start-up from TOML and the board profile.

Every choice is a `Literal` type, checked when the file is read (`toml_tables.build`); the
board profile is its own module (`board_profile.py`), re-exported here for its many readers.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from appliance.board_profile import DEFAULT_BOARD_DIR as DEFAULT_BOARD_DIR
from appliance.board_profile import INSTALLED_BOARD_DIR as INSTALLED_BOARD_DIR
from appliance.board_profile import BoardAudio as BoardAudio
from appliance.board_profile import BoardButtons as BoardButtons
from appliance.board_profile import BoardLeds as BoardLeds
from appliance.board_profile import BoardProfile as BoardProfile
from appliance.board_profile import BoardSelection as BoardSelection
from appliance.board_profile import load_board_profile as load_board_profile
from appliance.errors import SettingsError
from appliance.toml_tables import build, read_toml, reject_unknown, required

# What a trigger does while a call is ending: nothing, or a call once it has ended.
WhileEnding = Literal["ignore", "redial"]
# "auto" is Porcupine when an AccessKey is set, else microWakeWord.
WakeEngine = Literal["auto", "micro", "porcupine", "off"]
LogLevel = Literal["debug", "info", "warning", "error"]
# Whether to write to the journal.
JournalMode = Literal["auto", "on", "off"]


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
    trigger_while_ending: WhileEnding = "ignore"
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

    engine: WakeEngine = "auto"
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
    """Log level and whether to write to the journal."""

    level: LogLevel = "info"
    journal: JournalMode = "auto"


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


PICOVOICE_ACCESS_KEY_ENV = "PICOVOICE_ACCESS_KEY"


def load_settings(path: Path, *, env: Mapping[str, str] | None = None) -> Settings:
    """Read the device's TOML settings and its board profile; errors name the key and the file."""
    env = os.environ if env is None else env
    path = Path(path)
    raw = read_toml(path)
    base = path.parent
    reject_unknown(raw, {f.name for f in dataclasses.fields(Settings)} - {"source"}, path, "")
    if "board" in raw and not isinstance(raw["board"], Mapping):
        raise SettingsError(path, "board", "must be a table")
    selection = build(BoardSelection, raw.get("board", {}), path, "board", base)
    settings = Settings(
        device=build(DeviceSettings, required(raw, "device", path), path, "device", base),
        backend=build(BackendSettings, required(raw, "backend", path), path, "backend", base),
        board=load_board_profile(selection, settings_path=path),
        call=build(CallSettings, raw.get("call", {}), path, "call", base),
        button=build(ButtonSettings, raw.get("button", {}), path, "button", base),
        wake=_with_env_access_key(
            build(WakeSettings, raw.get("wake", {}), path, "wake", base), env
        ),
        simulated=build(SimulatedSettings, raw.get("simulated", {}), path, "simulated", base),
        logging=build(LoggingSettings, raw.get("logging", {}), path, "logging", base),
        source=path,
    )
    _check_values(settings, path)
    return settings


def _with_env_access_key(wake: WakeSettings, env: Mapping[str, str]) -> WakeSettings:
    key = env.get(PICOVOICE_ACCESS_KEY_ENV, "")
    if wake.porcupine.access_key or not key:
        return wake
    return dataclasses.replace(wake, porcupine=dataclasses.replace(wake.porcupine, access_key=key))


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
    if settings.board.audio.backend == "simulated" and settings.simulated.speaker_wav is None:
        raise SettingsError(path, "simulated.speaker_wav", "is required by the simulated board")
