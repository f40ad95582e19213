"""Tells systemd the device is ready, what it is doing, and that it is stopping."""

from __future__ import annotations

import logging
from collections.abc import Callable

from appliance.state import State, StateChange

logger = logging.getLogger(__name__)

Notify = Callable[[str], object]


def default_notify() -> Notify | None:
    """systemd-python's notify, or None where it is not installed."""
    try:
        from systemd import daemon  # type: ignore[attr-defined]
    except ImportError:
        return None
    return daemon.notify  # type: ignore[no-any-return]


class SystemdNotifier:
    """Observer: READY=1 once start-up is over, STATUS= on every change, STOPPING=1 at the end.

    READY=1 goes out on the first change away from STARTING, whatever the new state: a
    device that boots into a fault (no network, rejected key, no sound card) is up and
    says why in STATUS=, rather than being restarted by systemd's start timeout.
    """

    def __init__(self, notify: Notify | None) -> None:
        self._notify = notify
        self._ready_sent = False

    def __call__(self, change: StateChange) -> None:
        if self._notify is None:
            return
        messages = [f"STATUS={change.state.value}"]
        if change.previous is State.STARTING and not self._ready_sent:
            self._ready_sent = True
            messages.insert(0, "READY=1")
        if change.state is State.STOPPING:
            messages.insert(0, "STOPPING=1")
        self._notify("\n".join(messages))
