"""The kiosk's tools an agent may call in a call: the fleet's allowlist and what each does.

Runs in the daemon (the speaker, the status and the relay are here); the call worker brings
each `ToolCall` (LiveKit RPC, or a platform's data message) and takes the answer back. A
tool the fleet's `tools` setting does not list is refused and logged; so is one this board
cannot do (no relay). A relay pulse is answered once the relay has closed, and refused
while another is under way; at most MAX_TOOLS_RUNNING tool calls run at once, the rest are
refused. See docs/platforms.md, "Device tools".
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from appliance.call.events import ToolCall
from appliance.vocabulary import DEFAULT_TOOLS, DeviceTool

logger = logging.getLogger(__name__)

# The longest relay pulse an agent may ask for (a door opener needs a second or two).
MAX_PULSE_S = 10.0
DEFAULT_PULSE_S = 1.0
# Tool calls under way at once (a pulse is under way until the relay opens again); a far end
# that sends more is refused, so no flood of calls piles up tasks on the kiosk.
MAX_TOOLS_RUNNING = 4


class VolumeControl(Protocol):
    """The speaker's volume, 0.0 to 1.0 (`audio/volume.py`'s ScaledSpeaker)."""

    volume: float


class Relay(Protocol):
    """A relay output (a door opener): closed for a moment, then open again."""

    async def pulse(self, seconds: float, *, closed: Callable[[], None] | None = None) -> bool:
        """Close for `seconds` (`closed()` once closed); False at once if a pulse is under way."""
        ...


@dataclass(frozen=True)
class ToolAnswer:
    """What the far end gets back; `ends_call` asks the run to end the call once answered."""

    ok: bool
    output: str
    ends_call: bool = False


class DeviceTools:
    """Decides and runs tool calls; the fleet's allowlist may change between calls."""

    def __init__(
        self,
        *,
        speaker: VolumeControl | None,
        status: Callable[[], Mapping[str, Any]],
        relay: Relay | None = None,
        allowed: Iterable[str] = DEFAULT_TOOLS,
    ) -> None:
        self._speaker = speaker
        self._status = status
        self._relay = relay
        self._allowed = frozenset(DeviceTool(name) for name in allowed)
        self._running = 0

    @property
    def allowed(self) -> frozenset[DeviceTool]:
        return self._allowed

    def set_allowed(self, names: Iterable[str]) -> None:
        """The fleet's `tools` setting (names already checked)."""
        self._allowed = frozenset(DeviceTool(name) for name in names)

    def apply_fleet(self, value: object) -> None:
        """The check-in's `tools` (absent: the default); a value that is not a list of known
        tool names is refused with one log line and the last good one stays."""
        if value is None:
            wanted = DEFAULT_TOOLS
        elif isinstance(value, list) and all(
            isinstance(v, str) and v in set(DeviceTool) for v in value
        ):
            wanted = frozenset(DeviceTool(v) for v in value)
        else:
            logger.warning(
                "fleet settings: tools refused: must be a list of %s",
                ", ".join(t.value for t in DeviceTool),
            )
            return
        if wanted != self._allowed:
            self._allowed = wanted
            logger.info("fleet settings: tools %s", ", ".join(sorted(wanted)) or "none")

    async def run(
        self, call: ToolCall, fields: Mapping[str, str], reply: Callable[[ToolAnswer], None]
    ) -> None:
        """Run `call` if it is allowed and `reply` once; a refusal or a bad argument is a reply,
        not an error. A relay pulse is answered once the relay has closed and this returns
        once it has opened again (cancelling opens it at once)."""
        extra = {**fields, "TOOL": call.name}
        if self._running >= MAX_TOOLS_RUNNING:
            logger.warning("tool call refused: %d under way", self._running, extra=extra)
            reply(ToolAnswer(False, f"busy: {self._running} tool calls are under way"))
            return
        if call.name not in set(DeviceTool):
            logger.warning("tool call refused: no such tool", extra=extra)
            reply(ToolAnswer(False, f"no such tool: {call.name}"))
            return
        tool = DeviceTool(call.name)
        if tool not in self._allowed:
            logger.warning("tool call refused: not on the fleet's allowlist", extra=extra)
            reply(ToolAnswer(False, f"not allowed on this kiosk: {tool.value}"))
            return
        self._running += 1
        try:
            if tool is DeviceTool.PULSE_RELAY:
                await self._pulse(call.args, extra, reply)
            else:
                answer = self._run(tool, call.args)
                logger.info("tool call: %s", tool.value, extra=extra)
                reply(answer)
        except ValueError as exc:
            logger.warning("tool call refused: %s", exc, extra=extra)
            reply(ToolAnswer(False, str(exc)))
        finally:
            self._running -= 1

    def _run(self, tool: DeviceTool, args: Mapping[str, Any]) -> ToolAnswer:
        if tool is DeviceTool.END_CALL:
            return ToolAnswer(True, "ending the call", ends_call=True)
        if tool is DeviceTool.SET_VOLUME:
            if self._speaker is None:
                raise ValueError("this kiosk has no speaker volume")
            level = _number(args.get("level"), "level", 0.0, 1.0)
            self._speaker.volume = level
            return ToolAnswer(True, json.dumps({"volume": level}))
        return ToolAnswer(True, json.dumps(dict(self._status()), sort_keys=True))

    async def _pulse(
        self, args: Mapping[str, Any], extra: Mapping[str, str], reply: Callable[[ToolAnswer], None]
    ) -> None:
        if self._relay is None:
            raise ValueError("this kiosk's board has no relay output")
        seconds = _number(args.get("seconds", DEFAULT_PULSE_S), "seconds", 0.05, MAX_PULSE_S)

        def closed() -> None:
            logger.info("tool call: %s", DeviceTool.PULSE_RELAY.value, extra=extra)
            reply(ToolAnswer(True, json.dumps({"pulsed_s": seconds})))

        if not await self._relay.pulse(seconds, closed=closed):
            logger.warning("tool call refused: the relay is pulsing", extra=extra)
            reply(ToolAnswer(False, "busy: the relay is already pulsing"))


def _number(value: object, name: str, low: float, high: float) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ValueError(f"{name} must be a number from {low:g} to {high:g}")
    return float(value)
