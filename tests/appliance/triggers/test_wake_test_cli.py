"""`appliance wake-test` over WAV files: detections with time and score, and its errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from appliance.cli import EXIT_SETTINGS, main
from demo.stack import write_wav
from tests.appliance.triggers.speech import scene, speak

pytestmark = pytest.mark.integration

RATE = 16000


def _config(tmp_path: Path, wake: str = "") -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(
        '[device]\nstate_dir = "state"\n[backend]\nurl = "http://127.0.0.1:1"\n'
        f'[simulated]\nspeaker_wav = "speaker.wav"\n{wake}'
    )
    return path


def test_prints_each_detection_with_time_and_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PICOVOICE_ACCESS_KEY", raising=False)
    first = scene(speak("okay nabu", "en", 150), snr_db=20, seed=1, pad_s=2.0)
    between = scene(speak("The bus leaves at ten past four.", "en-gb", 160), snr_db=20, seed=2)
    second = scene(speak("okay nabu", "en-us", 170), snr_db=20, seed=3, pad_s=1.0)
    pcm = np.concatenate([first, between, second])
    wav = tmp_path / "recording.wav"
    write_wav(wav, pcm, rate=RATE)
    assert main(["--config", str(_config(tmp_path)), "wake-test", str(wav)]) == 0
    out = capsys.readouterr().out
    lines = re.findall(r"^\s+([\d.]+) s  Okay Nabu\s+score ([\d.]+)$", out, re.MULTILINE)
    assert len(lines) == 2, out
    times = [float(t) for t, _ in lines]
    # Each detection comes just after its utterance ends.
    first_end = (first.size - 2 * 2.0 * RATE) / RATE
    second_end = (first.size + between.size + second.size - 2 * 1.0 * RATE) / RATE
    assert first_end - 0.5 < times[0] < first_end + 1.0
    assert second_end - 0.5 < times[1] < second_end + 1.0
    assert all(0.5 < float(score) <= 1.0 for _, score in lines)
    assert "engine micro" in out and "2 detection(s)" in out

    # A cutoff no window reaches: nothing is reported.
    assert (
        main(["--config", str(_config(tmp_path)), "wake-test", str(wav), "--threshold", "0.9999"])
        == 0
    )
    assert "0 detection(s)" in capsys.readouterr().out


def test_porcupine_without_a_key_is_a_settings_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PICOVOICE_ACCESS_KEY", raising=False)
    wav = tmp_path / "silence.wav"
    write_wav(wav, np.zeros(RATE, dtype=np.int16), rate=RATE)
    config = _config(tmp_path, '[wake]\nengine = "porcupine"\n')
    assert main(["--config", str(config), "wake-test", str(wav)]) == EXIT_SETTINGS
    err = capsys.readouterr().err
    assert "wake.porcupine.access_key" in err and "PICOVOICE_ACCESS_KEY" in err
    assert str(config) in err
