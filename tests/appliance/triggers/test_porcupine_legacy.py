"""Porcupine for real, offline: pvporcupine 1.9.5 (built-in keywords, no AccessKey) in its own venv.

The project venv keeps the current pvporcupine (whose AccessKey path is tested elsewhere); this
test builds, once, a venv with 1.9.5 under the cache dir and runs our engine module there.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.appliance.triggers.speech import CACHE, pink_noise, scene, speak

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
LEGACY_VENV = CACHE.parent / "pvporcupine-1.9.5"
KEYWORDS = ("porcupine", "computer", "bumblebee")
VOICES = ("en", "en-us", "en-gb", "en-us+m3")
SENTENCES = (
    "Hello, I would like to know when the library opens tomorrow morning.",
    "Can you tell me where the nearest train station is?",
    "My computer science class starts at nine.",
)


@pytest.fixture(scope="module")
def legacy_python() -> Path:
    python = LEGACY_VENV / "bin" / "python"
    check = [str(python), "-c", "import pvporcupine, numpy"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", str(LEGACY_VENV)], check=True, timeout=120)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "pvporcupine==1.9.5", "numpy"],
            check=True,
            capture_output=True,
            timeout=300,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"cannot build the pvporcupine 1.9.5 environment: {exc}")
    return python


def _run(python: Path, clips: list[Path]) -> list[list[list[object]]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [str(python), "-m", "tests.appliance.triggers.porcupine_legacy", ",".join(KEYWORDS)]
        + [str(c) for c in clips],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_porcupine_detects_builtin_keywords_and_ignores_sentences(
    legacy_python: Path, tmp_path: Path
) -> None:
    positives = list(itertools.product(KEYWORDS, VOICES, (130, 170)))
    clips = []
    for seed, (keyword, voice, wpm) in enumerate(positives):
        clip = tmp_path / f"pos-{seed}.pcm"
        scene(speak(keyword, voice, wpm), snr_db=15, seed=seed).tofile(clip)
        clips.append(clip)
    negatives = list(itertools.product(SENTENCES, VOICES))
    for seed, (text, voice) in enumerate(negatives):
        clip = tmp_path / f"neg-{seed}.pcm"
        scene(speak(text, voice, 160), snr_db=15, seed=100 + seed).tofile(clip)
        clips.append(clip)
    noise = tmp_path / "noise.pcm"
    pink_noise(16000 * 30, 600, seed=3).tofile(noise)
    clips.append(noise)

    results = _run(legacy_python, clips)
    assert len(results) == len(clips)
    hits = 0
    for (keyword, voice, _), found in zip(positives, results, strict=False):
        assert len(found) <= 1, (keyword, voice, found)
        # Never the wrong keyword.
        assert all(k == keyword for k, _ in found), (keyword, voice, found)
        hits += bool(found)
    assert hits / len(positives) >= 0.6, f"{hits}/{len(positives)} detected"
    false_accepts = results[len(positives) :]
    assert all(found == [] for found in false_accepts), false_accepts
