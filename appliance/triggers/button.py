"""Button logic on an injected clock: debounced levels become short and long presses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from appliance.aio import TaskSet, cancel_and_wait
from appliance.clock import Clock

logger = logging.getLogger(__name__)


class Debouncer:
    """Raw level changes in, settled levels out: a level counts once it held for `debounce_s`."""

    def __init__(
        self, *, clock: Clock, debounce_s: float, initial: bool, on_level: Callable[[bool], None]
    ) -> None:
        self._clock = clock
        self._debounce_s = debounce_s
        self._on_level = on_level
        self._raw = self.level = initial
        self._settling: asyncio.Task[None] | None = None

    def edge(self, level: bool) -> None:
        """The input now reads `level` (call on the event loop)."""
        self._raw = level
        if self._settling is None and level != self.level:
            self._settling = asyncio.create_task(self._settle(), name="button-debounce")

    async def _settle(self) -> None:
        # Sample the input once it has had time to stop bouncing; more bounces meanwhile
        # only change what that sample reads.
        try:
            while True:
                seen = self._raw
                await self._clock.sleep(self._debounce_s)
                if self._raw == seen:
                    break
        finally:
            self._settling = None
        if self._raw != self.level:
            self.level = self._raw
            self._on_level(self.level)

    async def aclose(self) -> None:
        """Drop a change that has not settled yet."""
        await cancel_and_wait(self._settling)


class PressLogic:
    """Settled button levels to presses: released before `long_press_s` is short, else long."""

    def __init__(
        self,
        *,
        clock: Clock,
        long_press_s: float,
        on_short: Callable[[], None],
        on_long: Callable[[], None],
    ) -> None:
        self._clock = clock
        self._long_press_s = long_press_s
        self._on_short = on_short
        self._on_long = on_long
        self._timer: asyncio.Task[None] | None = None
        self._timers = TaskSet()  # the hold timer, and any still stopping
        self._long_fired = False

    def level(self, pressed: bool) -> None:
        """The button is now (settled) pressed or released."""
        if pressed:
            self._long_fired = False
            self._cancel_timer()
            if not self._timers.closed:  # a press after aclose has no long press
                self._timer = self._timers.spawn(self._hold(), "button-long-press")
            return
        self._cancel_timer()
        if not self._long_fired:
            logger.debug("button: short press")
            self._on_short()

    async def _hold(self) -> None:
        await self._clock.sleep(self._long_press_s)
        self._timer = None
        # Fires while still held, so the person feels the cancel happen.
        self._long_fired = True
        logger.debug("button: long press")
        self._on_long()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def aclose(self) -> None:
        """Forget a press in progress."""
        self._timer = None
        await self._timers.aclose()
