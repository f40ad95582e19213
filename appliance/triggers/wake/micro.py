"""microWakeWord through pymicro-wakeword: offline TFLite models on 10 ms feature windows."""

from __future__ import annotations

import logging
from pathlib import Path

from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model

from appliance.triggers.wake.base import Detection, Pcm16k, WakeWordError

logger = logging.getLogger(__name__)

SAMPLES_PER_FEATURE = 160  # the frontend emits one feature vector per 10 ms
BUILTIN_MODELS = tuple(m.value for m in Model)


class MicroWakeWordEngine:
    """One microWakeWord model; the score is its sliding-window mean probability."""

    name = "micro"

    def __init__(self, model: str, *, probability_cutoff: float = 0.0) -> None:
        try:
            if model in BUILTIN_MODELS:
                self._mww = MicroWakeWord.from_builtin(Model(model))
            else:
                self._mww = MicroWakeWord.from_config(Path(model))
        except (OSError, ValueError, KeyError) as exc:
            raise WakeWordError(
                f"cannot load microWakeWord model {model!r} (built-in: "
                f"{', '.join(BUILTIN_MODELS)}, or a model's .json file): {exc}"
            ) from exc
        if probability_cutoff > 0:
            self._mww.probability_cutoff = probability_cutoff
        self.cutoff = float(self._mww.probability_cutoff)
        self.keywords = (str(self._mww.wake_word),)
        self._features = MicroWakeWordFeatures()
        self._pending = b""
        self._sample = 0

    def process(self, pcm: Pcm16k) -> list[Detection]:
        """Run the model over `pcm`; a detection is a window whose probability beats the cutoff."""
        detections = []
        self._pending += pcm.tobytes()
        usable = len(self._pending) - len(self._pending) % (2 * SAMPLES_PER_FEATURE)
        chunk, self._pending = self._pending[:usable], self._pending[usable:]
        for features in self._features.process_streaming(chunk):
            self._sample += SAMPLES_PER_FEATURE
            probability = self._mww.process_streaming_prob(features)
            if probability is not None and probability > self.cutoff:
                detections.append(Detection(self.keywords[0], float(probability), self._sample))
        return detections

    def reset(self) -> None:
        """Forget the audio so far (the library reloads the model to clear its state)."""
        self._mww.reset()
        self._features.reset()
        self._pending = b""
        self._sample = 0

    def close(self) -> None:
        """Release the TFLite interpreter."""
        self._mww.close()
