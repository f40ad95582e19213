"""The frequency-domain Kalman echo filter on its own: it converges, keeps its model through
double talk, follows an echo path that changes, and forgets it on reset."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.audio.kalman import KalmanEchoFilter
from appliance.audio.measure import ratio_db
from tests.appliance.audio.speech import talker

pytestmark = pytest.mark.unit

RATE = 24000
BLOCK = 240  # 10 ms
TAPS = 1200  # 50 ms of echo path


def path(seed: int, *, delay: int = 24, gain: float = 0.5) -> np.ndarray:
    """A decaying echo path of 40 ms behind `delay` samples, `gain` in energy terms."""
    rng = np.random.default_rng(seed)
    ir = rng.normal(0, 1, 960) * np.exp(-np.arange(960) / 150)
    ir = np.concatenate([np.zeros(delay), ir])
    return ir * np.sqrt(gain / np.sum(ir**2))


def run(flt: KalmanEchoFilter, far: np.ndarray, echo: np.ndarray, near: np.ndarray) -> np.ndarray:
    n = len(far) // BLOCK * BLOCK
    return np.concatenate(
        [
            flt.process(far[i : i + BLOCK], echo[i : i + BLOCK] + near[i : i + BLOCK])
            for i in range(0, n, BLOCK)
        ]
    )


def seconds(a: float, b: float) -> slice:
    return slice(int(a * RATE), int(b * RATE))


def test_it_removes_the_echo_and_keeps_the_person_through_double_talk() -> None:
    far = talker(8.0, seed=11)[::2].astype(np.float64)  # 48 kHz speech-like noise, taken at 24
    echo = np.convolve(far, path(1))[: len(far)]
    near = np.zeros(len(far))
    near[seconds(4, 5)] = talker(2.0, seed=12)[::2][:RATE].astype(np.float64) * 0.5
    out = run(KalmanEchoFilter(BLOCK, TAPS), far, echo, near)

    assert ratio_db(echo[seconds(3, 4)], out[seconds(3, 4)]) > 25, "converged"
    # While the person talks, what comes out is the person with little echo under it.
    during = seconds(4.1, 5)
    assert ratio_db(near[during], out[during] - near[during]) > 15
    assert abs(ratio_db(near[during], out[during])) < 0.5
    # The model survived the person: the echo stays removed right after them.
    assert ratio_db(echo[seconds(5, 6)], out[seconds(5, 6)]) > 25


def test_it_follows_an_echo_path_that_changes() -> None:
    far = talker(10.0, seed=21)[::2].astype(np.float64)
    half = len(far) // 2
    before = np.convolve(far, path(2))[:half]
    after = np.convolve(far, path(3, delay=60, gain=0.3))[half : len(far)]
    echo = np.concatenate([before, after])
    out = run(KalmanEchoFilter(BLOCK, TAPS), far, echo, np.zeros(len(far)))

    changed = half / RATE

    def erle(a: float, b: float) -> float:
        return ratio_db(
            echo[seconds(changed + a, changed + b)], out[seconds(changed + a, changed + b)]
        )

    assert erle(-1, 0) > 25, "converged on the first path"
    assert erle(0, 0.3) < 15, "the change shows at first"
    assert erle(2, 3) > 20, "and is followed"


def test_reset_forgets_the_path() -> None:
    far = talker(4.0, seed=31)[::2].astype(np.float64)
    echo = np.convolve(far, path(4))[: len(far)]
    flt = KalmanEchoFilter(BLOCK, TAPS)
    run(flt, far, echo, np.zeros(len(far)))
    flt.reset()
    block = slice(RATE, RATE + BLOCK)
    assert np.allclose(flt.process(far[block], echo[block]), echo[block])


def test_a_filter_needs_a_block_and_a_path() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        KalmanEchoFilter(0, TAPS)
