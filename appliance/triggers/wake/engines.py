"""Which engine the settings ask for, opened with its package imported only then."""

from __future__ import annotations

from pathlib import Path

from appliance.settings import Settings
from appliance.triggers.wake.base import WakeEngine, WakeWordError


def resolve_engine(settings: Settings) -> str | None:
    """The engine to run: "micro", "porcupine", or None when the wake word is off."""
    wake = settings.wake
    if wake.engine == "off":
        return None
    if wake.engine == "auto":
        return "porcupine" if wake.porcupine.access_key else "micro"
    return wake.engine


def open_engine(settings: Settings) -> WakeEngine | None:
    """Open the configured engine; SettingsError for a bad key, WakeWordError if unavailable."""
    engine = resolve_engine(settings)
    where = settings.source or "the settings file"
    base = Path(settings.source).parent if settings.source else Path.cwd()
    if engine is None:
        return None
    if engine == "micro":
        try:
            from appliance.triggers.wake.micro import BUILTIN_MODELS, MicroWakeWordEngine
        except ImportError as exc:
            raise WakeWordError(
                "microWakeWord is not installed (pip install 'kiosk-voice[wake]')"
            ) from exc
        model = settings.wake.micro.model
        if model not in BUILTIN_MODELS:
            model = str(base / Path(model).expanduser())
        return MicroWakeWordEngine(model, probability_cutoff=settings.wake.micro.probability_cutoff)
    try:
        from appliance.triggers.wake.porcupine import PorcupineEngine
    except ImportError as exc:
        raise WakeWordError("Porcupine is not installed (pip install 'kiosk-voice[wake]')") from exc
    porcupine = settings.wake.porcupine
    return PorcupineEngine(
        access_key=porcupine.access_key,
        keywords=porcupine.keywords,
        keyword_paths=porcupine.keyword_paths,
        sensitivities=porcupine.sensitivities,
        model_path=porcupine.model_path,
        settings_file=where,
    )
