"""The wake word as a trigger: listens while the device is ready, chimes, and asks for a call."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Protocol

from appliance.audio.base import Speaker
from appliance.audio.fanout import CaptureFanout
from appliance.clock import Clock
from appliance.errors import SettingsError
from appliance.settings import Settings
from appliance.state import StateChange
from appliance.triggers.earcon import Earcon
from appliance.triggers.wake.base import Detection, WakeDetector, WakeWordError
from appliance.triggers.wake.engines import open_engine
from appliance.triggers.wake.listener import WakeListener

logger = logging.getLogger(__name__)

WAKE_SOURCE = "wake_word"


class Triggerable(Protocol):
    """What the wake word needs from the supervisor."""

    def trigger(self, source: str) -> None: ...


def should_listen(change: StateChange, *, hangup_word: bool) -> bool:
    """Listen when a wake word would start a call (or, as a hang-up word, end one); never muted."""
    if change.muted:
        return False
    if change.state.accepts_calls:
        return True
    return hangup_word and change.state.in_call_attempt


class WakeWordTrigger:
    """A state observer that switches the listener; a detection plays the earcon, then triggers."""

    def __init__(
        self,
        listener: WakeListener,
        *,
        supervisor: Triggerable,
        earcon: Earcon | None,
        hangup_word: bool,
    ) -> None:
        self.listener = listener
        self.earcon = earcon
        self._supervisor = supervisor
        self._hangup_word = hangup_word
        self._enabled = True
        self._last: StateChange | None = None

    @property
    def enabled(self) -> bool:
        """Whether the wake word may listen at all (the fleet can switch it off)."""
        return self._enabled

    def set_enabled(self, enabled: bool) -> None:
        """Switch the wake word on or off; on, it listens whenever the state allows."""
        self._enabled = enabled
        if self._last is not None:
            self.on_state_change(self._last)
        elif not enabled:
            self.listener.set_active(False)

    def on_state_change(self, change: StateChange) -> None:
        """Observer: listen or not, as the new state allows."""
        self._last = change
        listen = self._enabled and should_listen(change, hangup_word=self._hangup_word)
        self.listener.set_active(listen)

    def on_wake(self, detection: Detection) -> None:
        """A detection: the chime first (the person hears at once), then the trigger."""
        if self.earcon is not None:
            self.earcon.play()
        self._supervisor.trigger(WAKE_SOURCE)

    async def aclose(self) -> None:
        """Stop listening and chiming."""
        await self.listener.aclose()
        if self.earcon is not None:
            await self.earcon.aclose()


async def open_wake_word(
    settings: Settings,
    stack: AsyncExitStack,
    *,
    capture: CaptureFanout,
    speaker: Speaker,
    supervisor: Triggerable,
    clock: Clock,
) -> WakeWordTrigger | None:
    """Open the configured engine; on a settings or engine error, log it and run without one."""
    try:
        engine = open_engine(settings)
    except (SettingsError, WakeWordError) as exc:
        # Not fatal: the kiosk still works by button.
        logger.error("wake word disabled: %s", exc, extra={"ERROR_CODE": "wake_word_unavailable"})
        return None
    if engine is None:
        logger.info('wake word off (wake.engine = "off")')
        return None
    earcon = Earcon(speaker, clock=clock) if settings.wake.earcon else None
    trigger: WakeWordTrigger | None = None

    def on_wake(detection: Detection) -> None:
        assert trigger is not None
        trigger.on_wake(detection)

    listener = WakeListener(
        WakeDetector(engine, refractory_s=settings.wake.refractory_s),
        capture=capture,
        on_wake=on_wake,
        clock=clock,
    )
    trigger = WakeWordTrigger(
        listener, supervisor=supervisor, earcon=earcon, hangup_word=settings.wake.hangup_word
    )
    stack.push_async_callback(trigger.aclose)
    logger.info(
        "wake word: %s engine, listening for %s",
        engine.name,
        ", ".join(engine.keywords),
        extra={"WAKE_ENGINE": engine.name},
    )
    return trigger
