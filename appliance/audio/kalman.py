"""A partitioned-block frequency-domain Kalman filter: a linear echo canceller in numpy.

The linear stage's default filter, in place of speexdsp's MDF (docs/audio.md, "The lounge"):
in the closed loop it leaves AEC3 behind it a residual that changes smoothly, and the lounge's
steady state then met the target, which it missed with speexdsp's filter.

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
    """Echo canceller for blocks of `block` samples, modelling `taps` samples of echo path.

    Its state and the per-partition working arrays are allocated once; a block allocates
    only the FFTs' outputs and a few arrays of one spectrum's length.
    """

    def __init__(self, block: int, taps: int) -> None:
        if block <= 0 or taps <= 0:
            raise ValueError("the block and the echo path must be at least one sample long")
        self.block = block
        self.partitions = -(-taps // block)
        bins = block + 1
        shape = (self.partitions, bins)
        self._weights = np.zeros(shape, dtype=np.complex128)
        self._spectra = np.zeros(shape, dtype=np.complex128)  # the reference's, newest first
        self._power = np.zeros(shape)  # |spectra|^2
        self._uncertainty = np.full(shape, INITIAL_UNCERTAINTY)
        self._error_power = np.ones(bins)
        self._frame = np.zeros(2 * block)  # the reference's last two blocks
        self._padded = np.zeros(2 * block)
        self._work = np.zeros(shape, dtype=np.complex128)
        self._gain = np.zeros(shape)
        self._scratch = np.zeros(shape)

    def reset(self) -> None:
        """Forget the echo path (the delay in front of the filter moved)."""
        self._weights[:] = 0
        self._spectra[:] = 0
        self._power[:] = 0
        self._uncertainty[:] = INITIAL_UNCERTAINTY
        self._error_power[:] = 1.0
        self._frame[:] = 0

    def process(self, reference: Samples, captured: Samples) -> npt.NDArray[np.float64]:
        """The captured block less the echo estimate; the filter then adapts."""
        n = self.block
        frame, spectra, power, work = self._frame, self._spectra, self._power, self._work
        frame[:n] = frame[n:]
        frame[n:] = reference
        spectra[1:] = spectra[:-1]
        spectra[0] = np.fft.rfft(frame)
        power[1:] = power[:-1]
        np.square(spectra[0].real, out=power[0])
        power[0] += np.square(spectra[0].imag)
        np.multiply(spectra, self._weights, out=work)
        estimate = np.fft.irfft(work.sum(axis=0), 2 * n)[n:]
        error = np.asarray(captured, dtype=np.float64) - estimate
        self._padded[n:] = error
        spectrum = np.fft.rfft(self._padded)
        self._error_power *= ERROR_SMOOTHING
        self._error_power += (1 - ERROR_SMOOTHING) * (spectrum.real**2 + spectrum.imag**2)
        np.multiply(power, self._uncertainty, out=self._scratch)
        expected = self._scratch.sum(axis=0) + self._error_power + 1e-6
        gain = np.divide(self._uncertainty, expected, out=self._gain)
        # The update, constrained to the first half of each partition (a linear convolution).
        np.conjugate(spectra, out=work)
        work *= gain
        work *= spectrum
        step = np.fft.irfft(work, 2 * n, axis=1)
        step[:, n:] = 0
        self._weights += np.fft.rfft(step, axis=1)
        # The uncertainty: A^2 (1 - gain |X|^2 / 2) phi + (1 - A^2) |W|^2.
        scratch = self._scratch
        np.multiply(gain, power, out=scratch)
        scratch *= -0.5
        scratch += 1
        scratch *= TRANSITION**2
        self._uncertainty *= scratch
        np.square(self._weights.real, out=scratch)
        self._uncertainty += (1 - TRANSITION**2) * scratch
        np.square(self._weights.imag, out=scratch)
        self._uncertainty += (1 - TRANSITION**2) * scratch
        return error
