"""Settings and board profiles: good files load; bad ones name the key and the file."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from appliance.board_profile import BoardProfile
from appliance.errors import SettingsError
from appliance.settings import Settings, load_settings

pytestmark = pytest.mark.unit

GOOD = """
[device]
name = "lobby"
state_dir = "state"

[backend]
url = "https://backend.example"
timeout_s = 3

[board]
profile = "simulated"

[call]
max_duration_s = 120

[simulated]
microphone_wav = "mic.wav"
speaker_wav = "/tmp/out.wav"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    return path


def test_good_settings_load_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, GOOD))
    assert settings.device.state_dir == tmp_path / "state"
    assert settings.backend.timeout_s == 3.0
    assert settings.call.max_duration_s == 120.0
    assert settings.call.agent_join_timeout_s == 20.0
    assert settings.simulated.microphone_wav == tmp_path / "mic.wav"
    assert settings.simulated.speaker_wav == Path("/tmp/out.wav")
    assert settings.board.name == "simulated"
    assert settings.board.audio.backend == "simulated"
    assert settings.board.source is not None and settings.board.source.name == "simulated.toml"


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        (("timeout_s = 3", 'timeout_s = "fast"'), "backend.timeout_s", "must be a number"),
        (("timeout_s = 3", "timeout_s = 3\ncolour = 1"), "backend.colour", "unknown key"),
        (("max_duration_s = 120", "max_duration_s = -1"), "call.max_duration_s", "greater than 0"),
        (('url = "https://backend.example"', 'url = "ftp://x"'), "backend.url", "http"),
        (('profile = "simulated"', 'profile = "toaster"'), "board.profile", "toaster"),
        (('name = "lobby"\n', "name = 7\n"), "device.name", "must be a string"),
        (("[call]", "[calls]"), "calls", "unknown key"),
    ],
)
def test_bad_values_name_the_key_and_the_file(
    tmp_path: Path, change: tuple[str, str], key: str, problem: str
) -> None:
    path = _write(tmp_path, GOOD.replace(*change))
    with pytest.raises(SettingsError) as error:
        load_settings(path)
    assert error.value.key == key
    assert str(path) in str(error.value)
    assert problem in str(error.value)


def test_missing_section_and_bad_toml(tmp_path: Path) -> None:
    no_backend = GOOD.replace('[backend]\nurl = "https://backend.example"\ntimeout_s = 3\n', "")
    path = _write(tmp_path, no_backend)
    with pytest.raises(SettingsError, match="backend: missing section"):
        load_settings(path)
    path.write_text("[device\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(path)


def test_a_bad_board_profile_names_its_own_file(tmp_path: Path) -> None:
    profile = tmp_path / "myboard.toml"
    profile.write_text('name = "mine"\n[audio]\nbackend = "cassette"\n')
    path = _write(tmp_path, GOOD.replace('profile = "simulated"', 'profile = "myboard.toml"'))
    with pytest.raises(SettingsError) as error:
        load_settings(path)
    assert error.value.key == "audio.backend"
    assert error.value.path == str(profile)


@pytest.mark.parametrize(
    ("leds", "key", "problem"),
    [
        ('backend = "neon"', "leds.backend", "must be one of"),
        ('backend = "gpio"', "leds.status_pin", "required by the gpio backend"),
        (
            'backend = "gpio"\nstatus_pin = "GPIO22"\nactive_high = "yes"',
            "leds.active_high",
            "true or false",
        ),
    ],
)
def test_a_bad_leds_table_names_the_key(tmp_path: Path, leds: str, key: str, problem: str) -> None:
    profile = tmp_path / "myboard.toml"
    profile.write_text(f'name = "mine"\n[leds]\n{leds}\n')
    path = _write(tmp_path, GOOD.replace('profile = "simulated"', 'profile = "myboard.toml"'))
    with pytest.raises(SettingsError, match=problem) as error:
        load_settings(path)
    assert error.value.key == key


def test_a_gpio_led_loads_and_boards_without_leds_have_none(tmp_path: Path) -> None:
    profile = tmp_path / "myboard.toml"
    profile.write_text(
        'name = "mine"\n[leds]\nbackend = "gpio"\nstatus_pin = "GPIO22"\nactive_high = false\n'
    )
    path = _write(tmp_path, GOOD.replace('profile = "simulated"', 'profile = "myboard.toml"'))
    leds = load_settings(path).board.leds
    assert (leds.backend, leds.status_pin, leds.active_high, leds.pwm) == (
        "gpio",
        "GPIO22",
        False,
        True,
    )
    profile.write_text('name = "bare"\n')
    assert load_settings(path).board.leds.backend == "none"
    assert load_settings(_write(tmp_path, GOOD)).board.leds.backend == "simulated"


def _choice_fields() -> list[tuple[str, str, tuple[str, ...]]]:
    """Every `Literal` setting: (table it lives in, dotted key, its choices)."""
    found: list[tuple[str, str, tuple[str, ...]]] = []

    def walk(cls: type, table: str, prefix: str) -> None:
        for name, hint in typing.get_type_hints(cls).items():
            if typing.get_origin(hint) is typing.Literal:
                found.append((table, f"{prefix}{name}", typing.get_args(hint)))
            elif dataclasses.is_dataclass(hint) and isinstance(hint, type):
                walk(hint, table, f"{prefix}{name}.")

    for section in ("call", "wake", "logging"):
        walk(typing.get_type_hints(Settings)[section], "settings", f"{section}.")
    for part in ("audio", "buttons", "leds"):
        walk(typing.get_type_hints(BoardProfile)[part], "profile", f"{part}.")
    return found


def test_every_string_choice_is_a_literal() -> None:
    keys = {key for _, key, _ in _choice_fields()}
    assert keys == {
        "call.trigger_while_ending",
        "wake.engine",
        "logging.level",
        "logging.journal",
        "audio.backend",
        "audio.pacing",
        "audio.echo_cancellation",
        "audio.linear_echo_algorithm",
        "buttons.backend",
        "buttons.mute_kind",
        "leds.backend",
    }


def _files_with(tmp_path: Path, table: str, key: str, value: str) -> tuple[Path, Path]:
    """Settings and a board profile of their own, with `key` set to `value` in `table`."""
    section, name = key.rsplit(".", 1)
    line = f'{name} = "{value}"\n'
    if value == "gpio":  # what the gpio backends need besides
        line += {"buttons": 'call_pin = "GPIO17"\n', "leds": 'status_pin = "GPIO22"\n'}[section]
    profile = tmp_path / "myboard.toml"
    profile.write_text('name = "mine"\n' + (f"[{section}]\n{line}" if table == "profile" else ""))
    text = GOOD.replace('profile = "simulated"', 'profile = "myboard.toml"')
    if table == "settings" and section == "call":
        text = text.replace("[call]\n", f"[call]\n{line}")
    elif table == "settings":
        text += f"\n[{section}]\n{line}"
    return _write(tmp_path, text), profile


@pytest.mark.parametrize(("table", "key", "allowed"), _choice_fields())
def test_a_choice_outside_its_literal_names_the_key_the_file_and_the_choices(
    tmp_path: Path, table: str, key: str, allowed: tuple[str, ...]
) -> None:
    path, profile = _files_with(tmp_path, table, key, "nonsense")
    with pytest.raises(SettingsError) as error:
        load_settings(path)
    assert error.value.key == key
    assert error.value.path == str(profile if table == "profile" else path)
    assert f"must be one of {allowed}" in str(error.value)
    for value in allowed:  # and each choice loads, as itself
        path, _ = _files_with(tmp_path, table, key, value)
        holder: object = load_settings(path)
        holder = holder if table == "settings" else holder.board
        for part in key.split("."):
            holder = getattr(holder, part)
        assert holder == value
