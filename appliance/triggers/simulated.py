"""The simulated board's call button, pressed by a command, stdin or a test."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class SimulatedButton:
    """A call button; `press()` is safe to call from any thread."""

    def __init__(self, *, on_press: Callable[[], None], loop: asyncio.AbstractEventLoop) -> None:
        self._on_press = on_press
        self._loop = loop
        self.presses = 0

    def press(self) -> None:
        """Press and release the button once."""
        self._loop.call_soon_threadsafe(self._pressed)

    def _pressed(self) -> None:
        self.presses += 1
        self._on_press()
