"""Device tools: the fleet's allowlist decides, a refusal is an answer and a log line, and
the backend checks the `tools` setting against the same vocabulary."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from appliance.board_profile import BoardRelay
from appliance.call.events import ToolCall
from appliance.call.tools import MAX_TOOLS_RUNNING, DeviceTools, ToolAnswer
from appliance.call.tools import Relay as RelayOutput
from appliance.clock import ManualClock
from appliance.status.relay import simulated_relay
from appliance.vocabulary import DEFAULT_TOOLS, DeviceTool
from provisioning.errors import BadRequestError
from provisioning.fleet_settings import validate_settings

pytestmark = pytest.mark.unit

FIELDS = {"CALL_ID": "c-1"}


@dataclass
class Volume:
    volume: float = 1.0


@dataclass
class Relay:
    pulses: list[float] = field(default_factory=list)

    async def pulse(self, seconds: float, *, closed: Callable[[], None] | None = None) -> bool:
        self.pulses.append(seconds)
        if closed is not None:
            closed()
        return True


@dataclass
class StuckRelay:
    """A relay whose pulses never close nor end (each stays under way)."""

    pulses: list[float] = field(default_factory=list)

    async def pulse(self, seconds: float, *, closed: Callable[[], None] | None = None) -> bool:
        self.pulses.append(seconds)
        await asyncio.Event().wait()
        return True


class Replies(list[ToolAnswer]):
    """The answers `DeviceTools.run` gave, in order (called as its `reply`)."""

    def __call__(self, answer: ToolAnswer) -> None:
        self.append(answer)


async def _run(tools: DeviceTools, call: ToolCall) -> ToolAnswer:
    replies = Replies()
    async with asyncio.timeout(5):
        await tools.run(call, FIELDS, replies)
    [answer] = replies
    return answer


def _tools(
    allowed: set[str], relay: RelayOutput | None = None, volume: Volume | None = None
) -> DeviceTools:
    return DeviceTools(
        speaker=volume, status=lambda: {"state": "in_call"}, relay=relay, allowed=allowed
    )


async def test_the_default_allows_ending_the_call_only(caplog: pytest.LogCaptureFixture) -> None:
    assert {DeviceTool.END_CALL} == DEFAULT_TOOLS
    tools = DeviceTools(speaker=Volume(), status=dict)
    answer = await _run(tools, ToolCall("end_call", "1"))
    assert answer.ok and answer.ends_call
    with caplog.at_level(logging.WARNING):
        refused = await _run(tools, ToolCall("set_volume", "2", {"level": 0.3}))
    assert not refused.ok and not refused.ends_call
    assert "not on the fleet's allowlist" in caplog.text
    assert [getattr(r, "TOOL", None) for r in caplog.records] == ["set_volume"]


async def test_allowed_tools_act_and_bad_arguments_are_refused() -> None:
    relay, volume = Relay(), Volume()
    tools = _tools({t.value for t in DeviceTool}, relay, volume)
    set_to = await _run(tools, ToolCall("set_volume", "1", {"level": 0.4}))
    assert json.loads(set_to.output) == {"volume": 0.4}
    assert volume.volume == 0.4
    for level in (1.5, -1, "loud", True, float("nan")):
        answer = await _run(tools, ToolCall("set_volume", "2", {"level": level}))
        assert not answer.ok
    status = await _run(tools, ToolCall("device_status", "3"))
    assert json.loads(status.output) == {"state": "in_call"}
    assert (await _run(tools, ToolCall("pulse_relay", "4", {"seconds": 2}))).ok
    assert not (await _run(tools, ToolCall("pulse_relay", "5", {"seconds": 60}))).ok
    assert relay.pulses == [2.0]
    assert not (await _run(tools, ToolCall("open_pod_bay_doors", "6"))).ok


async def test_a_board_without_a_relay_refuses_the_pulse() -> None:
    answer = await _run(_tools({"pulse_relay"}), ToolCall("pulse_relay", "1"))
    assert not answer.ok and "relay" in answer.output


def test_the_fleet_setting_is_applied_or_refused_whole(caplog: pytest.LogCaptureFixture) -> None:
    tools = DeviceTools(speaker=None, status=dict)
    tools.apply_fleet(["device_status", "set_volume"])
    assert tools.allowed == {DeviceTool.DEVICE_STATUS, DeviceTool.SET_VOLUME}
    with caplog.at_level(logging.WARNING):
        tools.apply_fleet(["device_status", "self_destruct"])
    assert tools.allowed == {DeviceTool.DEVICE_STATUS, DeviceTool.SET_VOLUME}
    assert "tools refused" in caplog.text
    tools.apply_fleet(None)
    assert tools.allowed == DEFAULT_TOOLS
    tools.apply_fleet([])
    assert tools.allowed == frozenset()


def test_the_backend_checks_tools_against_the_same_vocabulary() -> None:
    assert validate_settings({"tools": ["end_call", "pulse_relay"]}) == {
        "tools": ["end_call", "pulse_relay"]
    }
    assert validate_settings({"tools": []}) == {"tools": []}
    for bad in (["self_destruct"], "end_call", ["end_call", "end_call"], [1]):
        with pytest.raises(BadRequestError):
            validate_settings({"tools": bad})


async def test_a_pulse_is_answered_once_the_relay_has_closed_and_one_meanwhile_is_busy() -> None:
    clock = ManualClock()
    relay, pin = simulated_relay(BoardRelay(backend="simulated"), clock=clock)
    tools = DeviceTools(speaker=None, status=dict, relay=relay, allowed={"pulse_relay"})
    replies = Replies()
    async with asyncio.timeout(5):
        pulse = asyncio.create_task(
            tools.run(ToolCall("pulse_relay", "1", {"seconds": 10}), FIELDS, replies)
        )
        while not replies:
            await asyncio.sleep(0)
        # Answered now, not after the 10 s (an RPC caller's deadline may be shorter).
        assert replies[0].ok and json.loads(replies[0].output) == {"pulsed_s": 10.0}
        assert relay.closed and not pulse.done()
        busy = await _run(tools, ToolCall("pulse_relay", "2", {"seconds": 10}))
        assert not busy.ok and busy.output.startswith("busy")
        await clock.advance(10.1)
        await pulse
    assert not relay.closed and len(replies) == 1
    assert [s.state for s in pin.states] == [False, True, False]
    await relay.aclose()


async def test_tool_calls_beyond_the_cap_are_refused_while_the_others_run() -> None:
    relay = StuckRelay()
    tools = _tools({t.value for t in DeviceTool}, relay)
    running = [
        asyncio.create_task(tools.run(ToolCall("pulse_relay", str(n)), FIELDS, Replies()))
        for n in range(MAX_TOOLS_RUNNING)
    ]
    await asyncio.sleep(0)
    assert len(relay.pulses) == MAX_TOOLS_RUNNING
    refused = await _run(tools, ToolCall("device_status", "x"))
    assert not refused.ok and refused.output.startswith("busy")
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    assert (await _run(tools, ToolCall("device_status", "y"))).ok
