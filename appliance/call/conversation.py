"""What the far end says and does, for whoever shows it: a local display, the status LED.

The call (`worker_call.py`) hands each `Transcript` and `AgentStateChanged` here. Transcripts
go to the journal at debug level only, and to each follower of the control socket's
`transcript --follow` (a bounded queue each; a slow reader loses the oldest lines, never
holds up the call). The agent's state goes to its observers (the status LED).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping

from appliance.call.events import AgentActivity, Transcript

logger = logging.getLogger(__name__)

# Lines a follower may fall behind by before the oldest are dropped.
FOLLOW_QUEUE = 200
# Lines kept for `appliance transcript` (the latest call's; a new call starts afresh).
RECENT_LINES = 200


def transcript_line(transcript: Transcript, call_id: str | None, ts: float) -> str:
    """One transcript as the control socket sends it: a JSON object on one line."""
    return json.dumps(
        {
            "ts": round(ts, 3),
            "call_id": call_id,
            "speaker": transcript.speaker.value,
            "final": transcript.final,
            "segment_id": transcript.segment_id,
            "text": transcript.text,
        },
        separators=(",", ":"),
    )


class Conversation:
    """The current call's transcripts and agent state, fanned out to followers and observers."""

    def __init__(self) -> None:
        self._followers: set[asyncio.Queue[str]] = set()
        self._observers: list[Callable[[AgentActivity | None], None]] = []
        self._recent: deque[str] = deque(maxlen=RECENT_LINES)
        self._call_id: str | None = None
        self.agent_state: AgentActivity | None = None

    def recent(self) -> list[str]:
        """The latest call's final lines so far (kept in memory only, never on disk)."""
        return list(self._recent)

    def follow(self) -> asyncio.Queue[str]:
        """A queue of transcript lines from now on; `unfollow` it when done."""
        queue: asyncio.Queue[str] = asyncio.Queue(FOLLOW_QUEUE)
        self._followers.add(queue)
        return queue

    def unfollow(self, queue: asyncio.Queue[str]) -> None:
        self._followers.discard(queue)

    def add_observer(self, observer: Callable[[AgentActivity | None], None]) -> None:
        """Told each change of the agent's state (None: not listening, thinking or speaking)."""
        self._observers.append(observer)

    def transcript(
        self, transcript: Transcript, *, call_id: str | None, fields: Mapping[str, str]
    ) -> None:
        """A line: to the journal at debug level, and to every follower."""
        logger.debug(
            "transcript %s%s: %s",
            transcript.speaker.value,
            "" if transcript.final else " (interim)",
            transcript.text,
            extra=dict(fields),
        )
        line = transcript_line(transcript, call_id, time.time())
        if call_id != self._call_id:
            self._call_id = call_id
            self._recent.clear()
        if transcript.final:
            self._recent.append(line)
        for queue in self._followers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(line)

    def set_agent_state(self, state: AgentActivity | None) -> None:
        """The far end's state changed (None when the call is over)."""
        if state is self.agent_state:
            return
        self.agent_state = state
        for observer in self._observers:
            observer(state)
