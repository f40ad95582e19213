"""Tells systemd the device is ready, what it does, that it is stopping; reads the watchdog."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

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


def watchdog_period_s(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog period systemd asked process `pid` for (`WatchdogSec=`), or None.

    As `sd_watchdog_enabled`: `WATCHDOG_USEC` gives the period; `WATCHDOG_PID`, when set,
    must be this process (a child that inherited the variables is not watched).
    """
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    watched = environ.get("WATCHDOG_PID")
    try:
        period_us = int(usec)
        if watched and int(watched) != pid:
            return None
    except ValueError:
        logger.warning(
            "ignored a malformed systemd watchdog setting: WATCHDOG_USEC=%r WATCHDOG_PID=%r",
            usec,
            watched,
        )
        return None
    return period_us / 1_000_000 if period_us > 0 else None


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
