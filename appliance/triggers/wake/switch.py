"""The wake word the daemon runs, switched at run time by the fleet's settings.

On or off is immediate. Another model means a new engine: it is opened beside the
running one, which goes only once the new one loaded; a model that does not load
leaves the old one running (and says so).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Protocol

from appliance.aio import TaskSet
from appliance.audio.base import Speaker
from appliance.audio.fanout import CaptureFanout
from appliance.clock import Clock
from appliance.settings import Settings
from appliance.state import State, StateChange
from appliance.triggers.wake.engines import resolve_engine
from appliance.triggers.wake.trigger import Triggerable, WakeWordTrigger, open_wake_word

logger = logging.getLogger(__name__)


class WakeHost(Triggerable, Protocol):
    """What the switch needs of the supervisor: triggers, its state, its observers."""

    @property
    def state(self) -> State: ...

    @property
    def muted(self) -> bool: ...

    def add_observer(self, observer: Callable[[StateChange], None]) -> None: ...

    def remove_observer(self, observer: Callable[[StateChange], None]) -> None: ...


class WakeWordSwitch:
    """Owns the running `WakeWordTrigger` (or none) and swaps it on request."""

    def __init__(
        self,
        settings: Settings,
        *,
        capture: CaptureFanout,
        speaker: Speaker,
        supervisor: WakeHost,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._capture = capture
        self._speaker = speaker
        self._supervisor = supervisor
        self._clock = clock
        self._stack = AsyncExitStack()
        self._tasks = TaskSet()
        self.trigger: WakeWordTrigger | None = None
        self.model: str | None = None

    async def open(self) -> WakeWordTrigger | None:
        """Open the wake word the settings file configures (None if off or unavailable)."""
        self.trigger = await self._open(self._settings, self._stack)
        if self.trigger is not None and resolve_engine(self._settings) == "micro":
            self.model = self._settings.wake.micro.model
        return self.trigger

    async def aclose(self) -> None:
        """Stop any model switch, then the wake word."""
        await self._tasks.aclose()
        await self._stack.aclose()

    def wake_word_available(self) -> bool:
        """Whether this device runs a wake-word engine (the file's choice)."""
        return self.trigger is not None

    def models(self) -> frozenset[str]:
        """The models the fleet may choose: microWakeWord's built-in ones, if that runs."""
        if self.model is None:
            return frozenset()
        try:
            from appliance.triggers.wake.micro import BUILTIN_MODELS
        except ImportError:
            return frozenset()
        return frozenset(BUILTIN_MODELS) | {self.model}

    def set_wake_word(self, enabled: bool, model: str | None) -> None:
        """On or off now; another model in the background (`model` None: the file's)."""
        if self.trigger is None:
            return
        wanted = model or self._settings.wake.micro.model
        if self.model is not None and wanted != self.model:
            self._tasks.spawn(self._switch(wanted, enabled), "wake-word-switch")
        else:
            self.trigger.set_enabled(enabled)

    async def _switch(self, model: str, enabled: bool) -> None:
        wake = self._settings.wake
        settings = dataclasses.replace(
            self._settings,
            wake=dataclasses.replace(wake, micro=dataclasses.replace(wake.micro, model=model)),
        )
        stack = AsyncExitStack()
        trigger = await self._open(settings, stack)
        old = self.trigger
        if trigger is None or old is None:
            await stack.aclose()
            logger.warning("wake word model %s did not load; keeping %s", model, self.model)
            if old is not None:
                old.set_enabled(enabled)
            return
        self._supervisor.remove_observer(old.on_state_change)
        old_stack, self._stack = self._stack, stack
        await old_stack.aclose()
        self.trigger, self.model = trigger, model
        trigger.set_enabled(enabled)
        self._supervisor.add_observer(trigger.on_state_change)
        state = self._supervisor.state
        trigger.on_state_change(StateChange(state, state, muted=self._supervisor.muted))
        logger.info("wake word model %s loaded", model)

    async def _open(self, settings: Settings, stack: AsyncExitStack) -> WakeWordTrigger | None:
        return await open_wake_word(
            settings,
            stack,
            capture=self._capture,
            speaker=self._speaker,
            supervisor=self._supervisor,
            clock=self._clock,
        )
