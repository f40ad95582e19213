"""Runs our Porcupine engine in a pvporcupine 1.9.5 environment (offline, no AccessKey).

Usage: python -m tests.appliance.triggers.porcupine_legacy KEYWORDS CLIP... ; prints, per
clip (raw 16 kHz int16 files), a JSON list of [keyword, seconds] detections.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from appliance.triggers.wake.base import WakeDetector
from appliance.triggers.wake.porcupine import PorcupineEngine, needs_access_key


def main() -> None:
    """Print each clip's detections as a JSON line."""
    assert not needs_access_key(), "this runner is for pvporcupine 1.9.x"
    keywords = tuple(sys.argv[1].split(","))
    engine = PorcupineEngine(access_key="", keywords=keywords, sensitivities=(0.6,) * len(keywords))
    detector = WakeDetector(engine, refractory_s=2.0)
    for clip in sys.argv[2:]:
        detector.reset()
        pcm = np.fromfile(Path(clip), dtype=np.int16)
        found = [[d.keyword, round(d.time_s, 3)] for d in detector.process(pcm)]
        print(json.dumps(found), flush=True)
    engine.close()


if __name__ == "__main__":
    main()
