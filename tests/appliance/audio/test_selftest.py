"""`appliance audio-test` on ALSA file devices behind a simulated room."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.audio.measure import probe_sound
from appliance.audio.room import RoomEcho
from appliance.audio.selftest import PROBE_SEED
from appliance.cli import main
from tests.appliance.audio.alsa_devices import SYSTEM_ALSA_CONF, write_file_devices

pytestmark = pytest.mark.integration


def settings_for(tmp_path: Path, mic: object, capsys: pytest.CaptureFixture[str]) -> Path:
    devices = write_file_devices(tmp_path / "alsa", mic)  # type: ignore[arg-type]
    os.environ["ALSA_CONFIG_PATH"] = f"{SYSTEM_ALSA_CONF}:{devices.config}"
    (tmp_path / "board.toml").write_text(
        'name = "file-board"\n[audio]\nbackend = "alsa"\npacing = "clock"\n'
        f'capture_device = "{devices.capture}"\nplayback_device = "{devices.playback}"\n'
        "auto_gain_control = false\n"
    )
    config = tmp_path / "appliance.toml"
    config.write_text(
        f'[device]\nstate_dir = "{tmp_path / "state"}"\n[backend]\nurl = "http://127.0.0.1:1"\n'
        '[board]\nprofile = "board.toml"\n'
    )
    return config


def test_audio_test_reports_level_delay_and_echo_reduction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALSA_CONFIG_PATH", "")
    probe = probe_sound(3.0, seed=PROBE_SEED)
    mic = RoomEcho(delay_ms=60.0).apply(probe)
    code = main(["--config", str(settings_for(tmp_path, mic, capsys)), "audio-test"])
    out = capsys.readouterr().out
    assert code == 0, out
    for name in ("input level", "clipping", "echo path delay", "echo reduction"):
        assert f"PASS  {name}" in out
    delay_ms = float(out.split("echo path delay")[1].split("ms")[0])
    # The file's echo is 60 ms after its start; capture started a few frames before the probe.
    assert 20 <= delay_ms <= 110


def test_a_silent_microphone_fails_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALSA_CONFIG_PATH", "")
    mic = probe_sound(3.0) * 0
    code = main(["--config", str(settings_for(tmp_path, mic, capsys)), "audio-test"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  input level" in out and "hint:" in out
