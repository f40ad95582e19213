"""The wake word: one engine protocol, engines imported only when opened, and the listener."""

from appliance.triggers.wake.base import Detection, WakeDetector, WakeEngine, WakeWordError
from appliance.triggers.wake.engines import open_engine, resolve_engine

__all__ = [
    "Detection",
    "WakeDetector",
    "WakeEngine",
    "WakeWordError",
    "open_engine",
    "resolve_engine",
]
