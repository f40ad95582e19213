"""One call's deadlines from the call policy: agent join, maximum duration, no speech."""

from __future__ import annotations

from appliance.settings import CallSettings
from appliance.state import EndReason
from appliance.vocabulary import OnNoAnswer


class CallDeadlines:
    """When the call must end if nothing else happens, and why; times are clock.monotonic()."""

    def __init__(self, settings: CallSettings, now: float) -> None:
        self._settings = settings
        self._join_deadline = now + settings.agent_join_timeout_s
        self._join_reason = EndReason.AGENT_TIMEOUT
        self._max_deadline: float | None = None
        self._last_speech = now
        self._rejoin_deadline: float | None = None

    def ring(self, timeout_s: float, on_no_answer: OnNoAnswer, now: float) -> None:
        """The call rings people first: nobody for `timeout_s` ends it `no_answer`, or gives
        the agent the backend then dispatches its usual join time."""
        if on_no_answer is OnNoAnswer.END:
            self._join_deadline, self._join_reason = now + timeout_s, EndReason.NO_ANSWER
        else:
            self._join_deadline = now + timeout_s + self._settings.agent_join_timeout_s

    @property
    def agent_joined(self) -> bool:
        """Whether the agent has joined."""
        return self._max_deadline is not None

    def joined(self, now: float) -> None:
        """The agent joined: the duration cap and the idle timer start now."""
        self._max_deadline = now + self._settings.max_duration_s
        self._last_speech = now

    def speech(self, now: float) -> None:
        """Someone (the person or the agent) spoke: the idle timer starts again."""
        self._last_speech = now

    @property
    def interrupted(self) -> bool:
        """Whether the call is rejoining after a lost connection."""
        return self._rejoin_deadline is not None

    def interrupt(self, now: float) -> None:
        """The connection (or the agent with the room) was lost: it must be back within the
        rejoin window. Repeated interruptions do not extend it."""
        if self._rejoin_deadline is None:
            self._rejoin_deadline = now + self._settings.rejoin_window_s

    def rejoined(self, now: float) -> None:
        """The device is back in the room by its own rejoin: the agent (there, or
        dispatched again) now has `agent_join_timeout_s` to be heard from."""
        self._rejoin_deadline = now + self._settings.agent_join_timeout_s

    def restored(self, now: float) -> None:
        """The call is back: no rejoin deadline, and the idle timer starts again."""
        self._rejoin_deadline = None
        self._last_speech = now

    def next(self) -> tuple[float, EndReason]:
        """The earliest deadline and the reason the call ends if it passes."""
        if self._rejoin_deadline is not None:
            # While rejoining nobody can speak: the idle timer waits, the duration cap not.
            deadline, reason = self._rejoin_deadline, EndReason.CONNECTION_LOST
            if self._max_deadline is not None and self._max_deadline < deadline:
                deadline, reason = self._max_deadline, EndReason.MAX_DURATION
            return deadline, reason
        if self._max_deadline is None:
            return self._join_deadline, self._join_reason
        deadline, reason = self._max_deadline, EndReason.MAX_DURATION
        idle = self._settings.idle_timeout_s
        if idle > 0 and self._last_speech + idle < deadline:
            deadline, reason = self._last_speech + idle, EndReason.IDLE
        return deadline, reason


class ActivityMeter:
    """Crude speech activity from frame levels: enough loud 10 ms frames in a short window."""

    def __init__(
        self,
        *,
        threshold_rms: float = 500.0,
        min_frames: int = 10,
        window_frames: int = 30,
        report_every_s: float = 1.0,
    ) -> None:
        self._threshold = threshold_rms
        self._min_frames = min_frames
        self._window = window_frames
        self._every = report_every_s
        self._recent: list[bool] = []
        self._reported_at: float | None = None

    def push(self, rms: float, now: float) -> bool:
        """Feed one frame's RMS; True when speech is heard and was not reported just before."""
        self._recent.append(rms >= self._threshold)
        if len(self._recent) > self._window:
            del self._recent[0]
        if sum(self._recent) < self._min_frames:
            return False
        if self._reported_at is not None and now - self._reported_at < self._every:
            return False
        self._reported_at = now
        return True
