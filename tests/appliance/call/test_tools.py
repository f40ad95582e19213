"""Device tools: the fleet's allowlist decides, a refusal is an answer and a log line, and
the backend checks the `tools` setting against the same vocabulary."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import pytest

from appliance.call.events import ToolCall
from appliance.call.tools import DeviceTools
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

    async def pulse(self, seconds: float) -> None:
        self.pulses.append(seconds)


def _tools(
    allowed: set[str], relay: Relay | None = None, volume: Volume | None = None
) -> DeviceTools:
    return DeviceTools(
        speaker=volume, status=lambda: {"state": "in_call"}, relay=relay, allowed=allowed
    )


async def test_the_default_allows_ending_the_call_only(caplog: pytest.LogCaptureFixture) -> None:
    assert {DeviceTool.END_CALL} == DEFAULT_TOOLS
    tools = DeviceTools(speaker=Volume(), status=dict)
    answer = await tools.run(ToolCall("end_call", "1"), FIELDS)
    assert answer.ok and answer.ends_call
    with caplog.at_level(logging.WARNING):
        refused = await tools.run(ToolCall("set_volume", "2", {"level": 0.3}), FIELDS)
    assert not refused.ok and not refused.ends_call
    assert "not on the fleet's allowlist" in caplog.text
    assert [getattr(r, "TOOL", None) for r in caplog.records] == ["set_volume"]


async def test_allowed_tools_act_and_bad_arguments_are_refused() -> None:
    relay, volume = Relay(), Volume()
    tools = _tools({t.value for t in DeviceTool}, relay, volume)
    set_to = await tools.run(ToolCall("set_volume", "1", {"level": 0.4}), FIELDS)
    assert json.loads(set_to.output) == {"volume": 0.4}
    assert volume.volume == 0.4
    for level in (1.5, -1, "loud", True, float("nan")):
        answer = await tools.run(ToolCall("set_volume", "2", {"level": level}), FIELDS)
        assert not answer.ok
    status = await tools.run(ToolCall("device_status", "3"), FIELDS)
    assert json.loads(status.output) == {"state": "in_call"}
    assert (await tools.run(ToolCall("pulse_relay", "4", {"seconds": 2}), FIELDS)).ok
    assert not (await tools.run(ToolCall("pulse_relay", "5", {"seconds": 60}), FIELDS)).ok
    assert relay.pulses == [2.0]
    assert not (await tools.run(ToolCall("open_pod_bay_doors", "6"), FIELDS)).ok


async def test_a_board_without_a_relay_refuses_the_pulse() -> None:
    answer = await _tools({"pulse_relay"}).run(ToolCall("pulse_relay", "1"), FIELDS)
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
