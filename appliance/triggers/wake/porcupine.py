"""Porcupine through pvporcupine: keywords or .ppn files; 2.x and later need an AccessKey."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pvporcupine

from appliance.errors import SettingsError
from appliance.triggers.wake.base import Detection, Pcm16k, WakeWordError

logger = logging.getLogger(__name__)

ACCESS_KEY_HINT = (
    "set [wake.porcupine] access_key in {where} or the PICOVOICE_ACCESS_KEY environment "
    'variable (a free key is at https://console.picovoice.ai/), or use engine = "micro"'
)


def needs_access_key() -> bool:
    """Whether the installed pvporcupine takes an AccessKey (2.x and later do; 1.9 does not)."""
    return "access_key" in inspect.signature(pvporcupine.create).parameters


class PorcupineEngine:
    """Porcupine on 512-sample frames; it reports no score, only which keyword."""

    name = "porcupine"

    def __init__(
        self,
        *,
        access_key: str,
        keywords: tuple[str, ...] = (),
        keyword_paths: tuple[Path, ...] = (),
        sensitivities: tuple[float, ...] = (),
        model_path: Path | None = None,
        settings_file: object = "the settings file",
    ) -> None:
        kwargs: dict[str, Any] = {}
        if keyword_paths:
            kwargs["keyword_paths"] = [str(p) for p in keyword_paths]
            self.keywords = tuple(Path(p).stem.split("_")[0] for p in keyword_paths)
        else:
            unknown = sorted(set(keywords) - set(pvporcupine.KEYWORDS))
            if unknown:
                raise SettingsError(
                    settings_file,
                    "wake.porcupine.keywords",
                    f"not built in: {unknown} (built in: {sorted(pvporcupine.KEYWORDS)})",
                )
            kwargs["keywords"] = list(keywords)
            self.keywords = tuple(keywords)
        if sensitivities:
            kwargs["sensitivities"] = list(sensitivities)
        if model_path is not None:
            kwargs["model_path"] = str(model_path)
        if needs_access_key():
            if not access_key:
                raise SettingsError(
                    settings_file,
                    "wake.porcupine.access_key",
                    "missing: " + ACCESS_KEY_HINT.format(where=settings_file),
                )
            kwargs["access_key"] = access_key
        try:
            self._porcupine = pvporcupine.create(**kwargs)
        except pvporcupine.PorcupineError as exc:
            if _is_key_problem(exc):
                raise SettingsError(
                    settings_file,
                    "wake.porcupine.access_key",
                    "rejected by Porcupine: " + ACCESS_KEY_HINT.format(where=settings_file),
                ) from exc
            raise WakeWordError(f"Porcupine could not start: {exc}") from exc
        except (ValueError, OSError) as exc:
            raise WakeWordError(f"Porcupine could not start: {exc}") from exc
        self.frame_length = int(self._porcupine.frame_length)
        self._pending = np.zeros(0, dtype=np.int16)
        self._sample = 0

    def process(self, pcm: Pcm16k) -> list[Detection]:
        """Run Porcupine over whole 512-sample frames of `pcm`, keeping the remainder."""
        detections = []
        buffered = np.concatenate([self._pending, pcm])
        n = self.frame_length
        whole = len(buffered) - len(buffered) % n
        for start in range(0, whole, n):
            index = self._porcupine.process(buffered[start : start + n])
            self._sample += n
            if index >= 0:
                detections.append(Detection(self.keywords[index], None, self._sample))
        self._pending = buffered[whole:]
        return detections

    def reset(self) -> None:
        """Forget buffered audio; Porcupine keeps no other state we can clear."""
        self._pending = np.zeros(0, dtype=np.int16)
        self._sample = 0

    def close(self) -> None:
        """Release the engine."""
        self._porcupine.delete()


def _is_key_problem(exc: Exception) -> bool:
    names = {type(exc).__name__}
    text = str(exc)
    return (
        bool(names & {"PorcupineActivationError", "PorcupineActivationRefusedError"})
        or "AccessKey" in text
    )
