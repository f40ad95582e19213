"""Sounds the kiosk makes itself in a call, mixed with the far end's voice."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from appliance.audio.base import SAMPLE_RATE

# The call is about to hit its platform's time limit: two short 880 Hz beeps at -12 dBFS.
BEEP_HZ = 880.0
BEEP_S = 0.15
GAP_S = 0.1
LEVEL = 0.25


def limit_warning() -> npt.NDArray[np.int16]:
    """Two beeps with a gap, 10 ms ramps at each edge (no clicks), 48 kHz mono int16."""
    n = int(BEEP_S * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    beep = np.sin(2 * np.pi * BEEP_HZ * t) * LEVEL
    ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.01 * SAMPLE_RATE))
    shaped = (beep * ramp * 32767).astype(np.int16)
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.int16)
    return np.concatenate([shaped, gap, shaped])
