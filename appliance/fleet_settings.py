"""The fleet's settings for this device, as the backend sends them at each check-in.

The device's own file stays the fallback: a key the backend does not send keeps the
file's value. Every value is checked again here (the backend checked it too); a value
this device cannot apply is refused with one log line naming it, and the last good
value stays. A change applies at the check-in that brings it, without a restart; a
call in progress keeps the settings it started with (its deadlines are made at its
start).

    call.max_duration_s, call.idle_timeout_s, call.cooldown_s   the call policy
    wake_word.enabled, wake_word.model                          the wake word
    speaker_volume                                              0.0 to 1.0, on top of
                                                                the board's calibration
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from appliance.settings import CallSettings

logger = logging.getLogger(__name__)

# (minimum, maximum) this device accepts for each call-policy key, in seconds.
CALL_LIMITS_S = {
    "max_duration_s": (10.0, 7200.0),
    "idle_timeout_s": (0.0, 3600.0),
    "cooldown_s": (0.0, 600.0),
}


class CallPolicyTarget(Protocol):
    """Who takes a new call policy (the supervisor)."""

    def set_call_settings(self, settings: CallSettings) -> None: ...


class VolumeTarget(Protocol):
    """Who takes a new speaker volume (`audio/volume.py`'s ScaledSpeaker)."""

    volume: float


class WakeWordTarget(Protocol):
    """Who switches the wake word (the daemon): on or off, and which model."""

    def wake_word_available(self) -> bool: ...

    def set_wake_word(self, enabled: bool, model: str | None) -> None: ...


class FleetSettings:
    """Applies the settings of each check-in over the file's; keeps the last good values."""

    def __init__(
        self,
        file_call: CallSettings,
        *,
        supervisor: CallPolicyTarget,
        speaker: VolumeTarget | None,
        wake_word: WakeWordTarget | None,
        models: Callable[[], frozenset[str]] = frozenset,
    ) -> None:
        self._file_call = file_call
        self._supervisor = supervisor
        self._speaker = speaker
        self._wake_word = wake_word
        self._models = models
        # What was last applied, per key; a key's bad value keeps its entry as it was.
        self._applied: dict[str, Any] = {}

    @property
    def applied(self) -> Mapping[str, Any]:
        """The fleet values in force, by dotted key (for status and tests)."""
        return dict(self._applied)

    def apply(self, sent: Mapping[str, Any]) -> None:
        """Apply one check-in's settings; unknown keys (newer backends) are ignored."""
        self._apply_call(sent.get("call"))
        self._apply_volume(sent.get("speaker_volume"))
        self._apply_wake_word(sent.get("wake_word"))

    # The call policy

    def _apply_call(self, table: object) -> None:
        wanted = dict(self._applied_call())
        if isinstance(table, Mapping):
            for key, (low, high) in CALL_LIMITS_S.items():
                if key not in table:
                    wanted.pop(key, None)  # no longer set by the fleet: the file's value
                    continue
                value = table[key]
                if isinstance(value, int | float) and _number(value) and low <= value <= high:
                    wanted[key] = float(value)
                else:
                    _refused(f"call.{key}", value, f"a number from {low:g} to {high:g}")
        elif table is None:
            wanted = {}
        else:
            _refused("call", table, "an object")
        if wanted == self._applied_call():
            return
        policy = dataclasses.replace(
            self._file_call,
            max_duration_s=wanted.get("max_duration_s", self._file_call.max_duration_s),
            idle_timeout_s=wanted.get("idle_timeout_s", self._file_call.idle_timeout_s),
            cooldown_s=wanted.get("cooldown_s", self._file_call.cooldown_s),
        )
        self._supervisor.set_call_settings(policy)
        for key in CALL_LIMITS_S:
            self._applied.pop(f"call.{key}", None)
        self._applied.update({f"call.{k}": v for k, v in wanted.items()})
        logger.info("fleet settings: call policy %s", _shown(wanted) or "from the file")

    def _applied_call(self) -> dict[str, float]:
        prefix = "call."
        return {k[len(prefix) :]: v for k, v in self._applied.items() if k.startswith(prefix)}

    # The speaker

    def _apply_volume(self, value: object) -> None:
        if self._speaker is None:
            if value is not None:
                _refused("speaker_volume", value, "a board with a speaker")
            return
        if value is None:
            volume = 1.0
        elif isinstance(value, int | float) and _number(value) and 0.0 <= value <= 1.0:
            volume = float(value)
        else:
            _refused("speaker_volume", value, "a number from 0 to 1")
            return
        if volume != self._speaker.volume:
            self._speaker.volume = volume
            logger.info("fleet settings: speaker volume %.2f", volume)
        if value is None:
            self._applied.pop("speaker_volume", None)
        else:
            self._applied["speaker_volume"] = volume

    # The wake word

    def _apply_wake_word(self, table: object) -> None:
        if self._wake_word is None or not self._wake_word.wake_word_available():
            if table is not None:
                _refused("wake_word", table, "a device with a wake-word engine")
            return
        enabled: bool = self._applied.get("wake_word.enabled", True)
        model: str | None = self._applied.get("wake_word.model")
        if isinstance(table, Mapping):
            value = table.get("enabled", True)
            if isinstance(value, bool):
                enabled = value
            else:
                _refused("wake_word.enabled", value, "true or false")
            if "model" in table:
                value = table["model"]
                if isinstance(value, str) and value in self._models():
                    model = value
                else:
                    known = ", ".join(sorted(self._models())) or "none"
                    _refused("wake_word.model", value, f"a model this device has ({known})")
            else:
                model = None
        elif table is None:
            enabled, model = True, None
        else:
            _refused("wake_word", table, "an object")
            return
        if (enabled, model) == (
            self._applied.get("wake_word.enabled", True),
            self._applied.get("wake_word.model"),
        ):
            return
        self._wake_word.set_wake_word(enabled, model)
        self._applied["wake_word.enabled"] = enabled
        if model is None:
            self._applied.pop("wake_word.model", None)
        else:
            self._applied["wake_word.model"] = model
        logger.info(
            "fleet settings: wake word %s%s",
            "on" if enabled else "off",
            f", model {model}" if model else "",
        )


def _number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _refused(key: str, value: object, wanted: str) -> None:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:60] + "…"
    logger.warning(
        "fleet settings: %s = %s refused (wanted %s); keeping the last good value",
        key,
        shown,
        wanted,
        extra={"SETTING": key},
    )


def _shown(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(values.items()))
