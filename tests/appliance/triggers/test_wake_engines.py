"""Real wake-word engines on espeak-ng speech mixed with room noise at 16 kHz."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest

from appliance.errors import SettingsError
from appliance.settings import Settings, load_settings
from appliance.triggers.wake import WakeDetector, WakeWordError, open_engine, resolve_engine
from tests.appliance.triggers.speech import RATES, VOICES, pink_noise, scene, speak

pytestmark = pytest.mark.integration

POSITIVES = {
    "okay_nabu": ("okay nabu", "Okay nabu, when does the library open?"),
    "alexa": ("alexa", "Alexa, what time is it?"),
    "hey_mycroft": ("hey mycroft", "hey my croft, turn on the lights"),
}
NEGATIVES = (
    "Hello, I would like to know when the library opens tomorrow morning.",
    "Can you tell me where the nearest train station is?",
    "Okay, now I understand, thank you very much.",
    "Hey, my name is Alex and I came about my appointment.",
    "The weather on the coast will be windy with some rain in the afternoon.",
)
# espeak-ng's voices are not people: its "+f2"/"+f3" variants are often missed (by
# okay_nabu even without noise), so the bar is a detection rate, higher for the others.
MIN_DETECTION_RATE = 0.6
MIN_DETECTION_RATE_PLAIN_VOICES = 0.8


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    path = tmp_path / "appliance.toml"
    path.write_text(
        '[device]\nstate_dir = "state"\n[backend]\nurl = "http://127.0.0.1:1"\n'
        '[simulated]\nspeaker_wav = "speaker.wav"\n'
    )
    return load_settings(path, env={})


def _micro(settings: Settings, model: str) -> WakeDetector:
    wake = dataclasses.replace(
        settings.wake,
        engine="micro",
        micro=dataclasses.replace(settings.wake.micro, model=model),
    )
    engine = open_engine(dataclasses.replace(settings, wake=wake))
    assert engine is not None
    return WakeDetector(engine, refractory_s=2.0)


@pytest.mark.parametrize("model", sorted(POSITIVES))
def test_micro_wake_word_detects_its_keyword_in_noise(settings: Settings, model: str) -> None:
    detector = _micro(settings, model)
    cases = list(itertools.product(POSITIVES[model], VOICES, RATES))
    hits = []
    for seed, (text, voice, wpm) in enumerate(cases):
        detector.reset()
        clip = scene(speak(text, voice, wpm), snr_db=15, seed=seed)
        detections = detector.process(clip)
        assert len(detections) <= 1, f"{text!r} ({voice}) detected twice: {detections}"
        if detections:
            hits.append((text, voice, wpm))
            # Detected within the clip, after the speech started.
            assert 0.7 < detections[0].time_s <= clip.size / 16000
            assert detections[0].score is not None and detections[0].score > 0.5
    rate = len(hits) / len(cases)
    assert rate >= MIN_DETECTION_RATE, f"{model}: {len(hits)}/{len(cases)} detected"
    plain = [c for c in cases if "+f" not in c[1]]
    plain_hits = [c for c in hits if "+f" not in c[1]]
    assert len(plain_hits) / len(plain) >= MIN_DETECTION_RATE_PLAIN_VOICES, plain_hits


# hey_jarvis loads and runs, but espeak-ng's "hey jarvis" scores under 0.05 in every voice
# (1 of 24 detected in the benchmark), so only its negative side can be tested here.
@pytest.mark.parametrize("model", [*sorted(POSITIVES), "hey_jarvis"])
def test_micro_wake_word_ignores_ordinary_speech_and_noise(settings: Settings, model: str) -> None:
    detector = _micro(settings, model)
    for seed, (text, voice) in enumerate(itertools.product(NEGATIVES, VOICES[:4])):
        detector.reset()
        detections = detector.process(scene(speak(text, voice, 160), snr_db=15, seed=seed))
        assert detections == [], f"{model} fired on {text!r} ({voice})"
    detector.reset()
    assert detector.process(pink_noise(16000 * 30, 600, seed=7)) == []


def test_micro_detects_across_chunk_boundaries(settings: Settings) -> None:
    """10 ms chunks (as the listener feeds it) give the same detection as one buffer."""
    clip = scene(speak("okay nabu", "en", 160), snr_db=20, seed=1)
    whole = _micro(settings, "okay_nabu").process(clip)
    chunked = _micro(settings, "okay_nabu")
    pieces = [chunked.process(clip[i : i + 160]) for i in range(0, clip.size, 160)]
    found = [d for piece in pieces for d in piece]
    assert len(whole) == 1 and found == whole


def test_unknown_micro_model_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(WakeWordError, match="okay_nabu"):
        _micro(settings, "no_such_model")


def test_auto_picks_porcupine_only_with_an_access_key(tmp_path: Path, settings: Settings) -> None:
    assert resolve_engine(settings) == "micro"
    assert settings.source is not None
    with_key = load_settings(settings.source, env={"PICOVOICE_ACCESS_KEY": "k"})
    assert with_key.wake.porcupine.access_key == "k"
    assert resolve_engine(with_key) == "porcupine"


def _porcupine_settings(settings: Settings, key: str) -> Settings:
    wake = dataclasses.replace(
        settings.wake,
        engine="porcupine",
        porcupine=dataclasses.replace(settings.wake.porcupine, access_key=key),
    )
    return dataclasses.replace(settings, wake=wake)


def test_porcupine_without_access_key_says_where_the_key_goes(settings: Settings) -> None:
    with pytest.raises(SettingsError) as info:
        open_engine(_porcupine_settings(settings, ""))
    assert info.value.key == "wake.porcupine.access_key"
    assert info.value.path == str(settings.source)
    assert "PICOVOICE_ACCESS_KEY" in str(info.value) and "missing" in str(info.value)


def test_porcupine_rejects_a_bad_access_key_as_a_settings_error(settings: Settings) -> None:
    with pytest.raises(SettingsError) as info:
        open_engine(_porcupine_settings(settings, "not-a-real-key"))
    assert info.value.key == "wake.porcupine.access_key"
    assert "rejected" in str(info.value)
    assert "not-a-real-key" not in str(info.value)  # the key is never echoed


def test_porcupine_unknown_keyword_names_the_key(settings: Settings) -> None:
    s = _porcupine_settings(settings, "k")
    wake = dataclasses.replace(
        s.wake, porcupine=dataclasses.replace(s.wake.porcupine, keywords=("abracadabra",))
    )
    with pytest.raises(SettingsError, match=r"wake\.porcupine\.keywords"):
        open_engine(dataclasses.replace(s, wake=wake))


def test_wake_settings_are_type_checked(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[device]\nstate_dir = "s"\n[backend]\nurl = "http://x"\n'
        '[simulated]\nspeaker_wav = "s.wav"\n'
        '[wake.porcupine]\nsensitivities = [0.5, "high"]\n'
    )
    with pytest.raises(SettingsError, match=r"wake\.porcupine\.sensitivities\[1\]"):
        load_settings(path, env={})
    path.write_text(path.read_text().replace('[0.5, "high"]', "[0.5, 0.6]"))
    with pytest.raises(SettingsError, match="one value per keyword"):
        load_settings(path, env={})


def test_silence_is_not_a_detection(settings: Settings) -> None:
    detector = _micro(settings, "alexa")
    assert detector.process(np.zeros(16000 * 5, dtype=np.int16)) == []
