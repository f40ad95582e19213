"""A partitioned-block frequency-domain Kalman filter: a linear echo canceller in numpy.

The candidate to replace speexdsp's MDF in the linear stage (docs/audio.md, "The lounge"):
in the closed loop it left AEC3 behind it a residual that changes smoothly, and the lounge's
steady state and early barge-in then met the targets. Not yet the shipped stage.

Each block of `n` samples: the reference's last `2n` samples are transformed, the echo
estimate is the sum over partitions of reference spectrum times weights (overlap-save), and
each weight moves by a Kalman gain, per partition and bin:

    gain = phi / (sum_p |X_p|^2 phi_p + psi)
    phi <- A^2 (1 - gain |X|^2 / 2) phi + (1 - A^2) |W|^2

where `phi` is how uncertain a weight is and `psi` the error's smoothed power (the person,
noise and what the filter cannot model): a person talking makes `psi` large and the gain
small, so the filter keeps its model through double talk without a detector.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# The state's uncertainty at the start (numpy's unscaled FFT of int16-scale samples): ten times
# more adapted so fast that AEC3 behind the stage did worse, ten times less too slowly to keep
# the person (docs/audio.md).
INITIAL_UNCERTAINTY = 1e-2
TRANSITION = 0.9995  # A: how much of a weight carries over from one block to the next
ERROR_SMOOTHING = 0.5  # psi's smoothing per block

Samples = npt.NDArray[np.floating] | npt.NDArray[np.integer]


class KalmanEchoFilter:
    """Echo canceller for blocks of `block` samples, modelling `taps` samples of echo path."""

    def __init__(self, block: int, taps: int) -> None:
        if block <= 0 or taps <= 0:
            raise ValueError("the block and the echo path must be at least one sample long")
        self.block = block
        self.partitions = -(-taps // block)
        bins = block + 1
        shape = (self.partitions, bins)
        self._weights = np.zeros(shape, dtype=np.complex128)
        self._spectra = np.zeros(shape, dtype=np.complex128)  # the reference's, newest first
        self._uncertainty = np.full(shape, INITIAL_UNCERTAINTY)
        self._error_power = np.ones(bins)
        self._previous = np.zeros(block)
        self._padded = np.zeros(2 * block)

    def reset(self) -> None:
        """Forget the echo path (the delay in front of the filter moved)."""
        self._weights[:] = 0
        self._spectra[:] = 0
        self._uncertainty[:] = INITIAL_UNCERTAINTY
        self._error_power[:] = 1.0
        self._previous[:] = 0

    def process(self, reference: Samples, captured: Samples) -> npt.NDArray[np.float64]:
        """The captured block less the echo estimate; the filter then adapts."""
        n = self.block
        x = np.array(reference, dtype=np.float64)  # a copy: kept as the next block's past
        self._spectra[1:] = self._spectra[:-1]
        self._spectra[0] = np.fft.rfft(np.concatenate([self._previous, x]))
        self._previous = x
        estimate = np.fft.irfft(np.einsum("pk,pk->k", self._spectra, self._weights), 2 * n)[n:]
        error = np.asarray(captured, dtype=np.float64) - estimate
        self._padded[n:] = error
        spectrum = np.fft.rfft(self._padded)
        power = self._spectra.real**2 + self._spectra.imag**2
        self._error_power *= ERROR_SMOOTHING
        self._error_power += (1 - ERROR_SMOOTHING) * (spectrum.real**2 + spectrum.imag**2)
        expected = np.einsum("pk,pk->k", power, self._uncertainty) + self._error_power + 1e-6
        gain = self._uncertainty / expected
        # The update, constrained to the first half of each partition (a linear convolution).
        step = np.fft.irfft(gain * np.conj(self._spectra) * spectrum, 2 * n, axis=1)
        step[:, n:] = 0
        self._weights += np.fft.rfft(step, axis=1)
        magnitude = self._weights.real**2 + self._weights.imag**2
        self._uncertainty *= TRANSITION**2 * (1 - 0.5 * gain * power)
        self._uncertainty += (1 - TRANSITION**2) * magnitude
        return error
