"""The fleet's settings on the device: applied at check-in over the file's, bad ones refused."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from appliance.audio.base import SAMPLES_PER_FRAME, Frame
from appliance.audio.volume import ScaledSpeaker
from appliance.errors import AwaitingApprovalError, BackendUnreachableError
from appliance.fleet_settings import FleetSettings
from appliance.settings import CallSettings
from appliance.state import State
from appliance.status.leds import PATTERNS

from .test_supervisor import start_harness, stop_harness

pytestmark = pytest.mark.unit

FILE_CALL = CallSettings(max_duration_s=600, idle_timeout_s=60, cooldown_s=1)


class Policy:
    def __init__(self) -> None:
        self.settings: list[CallSettings] = []

    def set_call_settings(self, settings: CallSettings) -> None:
        self.settings.append(settings)


class Volume:
    volume = 1.0


class Wake:
    def __init__(self, available: bool = True) -> None:
        self.available = available
        self.switched: list[tuple[bool, str | None]] = []

    def wake_word_available(self) -> bool:
        return self.available

    def set_wake_word(self, enabled: bool, model: str | None) -> None:
        self.switched.append((enabled, model))


def fleet(wake: Wake | None = None) -> tuple[FleetSettings, Policy, Volume]:
    policy, volume = Policy(), Volume()
    applier = FleetSettings(
        FILE_CALL,
        supervisor=policy,
        speaker=volume,
        wake_word=wake,
        models=lambda: frozenset({"okay_nabu", "hey_jarvis"}),
    )
    return applier, policy, volume


def test_the_call_policy_comes_from_the_fleet_over_the_file_and_back() -> None:
    applier, policy, _ = fleet()
    applier.apply({"call": {"max_duration_s": 120, "cooldown_s": 5}})
    assert (policy.settings[-1].max_duration_s, policy.settings[-1].cooldown_s) == (120.0, 5.0)
    assert policy.settings[-1].idle_timeout_s == 60  # not sent: the file's
    applier.apply({"call": {"max_duration_s": 120, "cooldown_s": 5}})
    assert len(policy.settings) == 1, "the same settings again change nothing"
    applier.apply({})
    assert policy.settings[-1] == FILE_CALL


@pytest.mark.parametrize(
    "bad",
    [
        {"max_duration_s": 5},
        {"max_duration_s": "long"},
        {"cooldown_s": float("nan")},
        {"idle_timeout_s": True},
    ],
)
def test_a_value_the_device_cannot_apply_is_refused_and_the_last_good_one_kept(
    bad: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    applier, policy, _ = fleet()
    applier.apply({"call": {"max_duration_s": 120, "idle_timeout_s": 30, "cooldown_s": 2}})
    with caplog.at_level(logging.WARNING, logger="appliance.fleet_settings"):
        applier.apply(
            {"call": {"max_duration_s": 120, "idle_timeout_s": 30, "cooldown_s": 2, **bad}}
        )
    [key] = bad
    assert any(
        f"call.{key}" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records
    )
    last = policy.settings[-1]
    assert (last.max_duration_s, last.idle_timeout_s, last.cooldown_s) == (120.0, 30.0, 2.0)


def test_the_speaker_volume_is_applied_and_a_bad_one_refused() -> None:
    applier, _, volume = fleet()
    applier.apply({"speaker_volume": 0.25})
    assert volume.volume == 0.25
    applier.apply({"speaker_volume": 3})
    assert volume.volume == 0.25
    applier.apply({})
    assert volume.volume == 1.0


def test_the_wake_word_switches_and_a_model_the_device_lacks_is_refused() -> None:
    wake = Wake()
    applier, _, _ = fleet(wake)
    applier.apply({"wake_word": {"enabled": False}})
    applier.apply({"wake_word": {"enabled": True, "model": "hey_jarvis"}})
    applier.apply({"wake_word": {"enabled": True, "model": "no_such_model"}})
    assert wake.switched == [(False, None), (True, "hey_jarvis")]
    applier.apply({})
    assert wake.switched[-1] == (True, None)
    without = Wake(available=False)
    applier, _, _ = fleet(without)
    applier.apply({"wake_word": {"enabled": True}})
    assert without.switched == []


class Recorder:
    def __init__(self) -> None:
        self.frames: list[Frame] = []

    async def write(self, frame: Frame) -> None:
        self.frames.append(frame)

    async def aclose(self) -> None:
        return None


async def test_the_scaled_speaker_plays_at_the_fleet_volume() -> None:
    inner = Recorder()
    speaker = ScaledSpeaker(inner)
    frame = np.full(SAMPLES_PER_FRAME, 10_000, dtype=np.int16)
    await speaker.write(frame)
    speaker.volume = 0.5
    await speaker.write(frame)
    await speaker.write(frame)
    assert [int(f[0]) for f in inner.frames] == [10_000, 5_000, 5_000]
    assert inner.frames[1] is not inner.frames[2], "each frame its own array (the speaker keeps it)"


async def test_a_pending_device_waits_in_its_own_state_then_becomes_ready() -> None:
    h = await start_harness(heartbeat_s=60.0, backoff_max_s=60.0)
    try:
        h.backend.check_ins = [AwaitingApprovalError("403 device_pending")] * 9
        await h.supervisor.keeper.check_in_now()
        h.supervisor.keeper.wake()
        await h.settle()
        assert h.supervisor.state is State.AWAITING_APPROVAL
        assert (
            not State.AWAITING_APPROVAL.is_fault
            and PATTERNS[State.AWAITING_APPROVAL].blinks is None
        )
        await h.press()
        assert h.calls == [] and h.supervisor.state is State.AWAITING_APPROVAL
        # It asks again with a backoff capped at 10 s (not the backend's 60 s), and is ready
        # once approved, without a restart.
        for _ in range(12):
            await h.clock.advance(5)
        assert h.supervisor.state is State.READY
        gaps = np.diff(h.backend.check_in_times[:10])
        assert max(gaps) == 10.0 and list(gaps[-3:]) == [10.0] * 3, gaps
    finally:
        await stop_harness(h)


async def test_each_check_in_reports_state_and_the_last_fault() -> None:
    h = await start_harness(heartbeat_s=60.0)
    try:
        h.backend.check_ins = [BackendUnreachableError("down")]
        first = len(h.backend.reports)
        # The failing check-in, the one after its backoff, and a heartbeat after that.
        for _ in range(100):
            if len(h.backend.reports) >= first + 3:
                break
            await h.clock.advance(5)
        reports = [r for r in h.backend.reports if r is not None]
        assert len(reports) >= first + 3
        assert reports[-1].state == "ready"
        assert reports[-1].last_error == "E03"  # backend_unreachable, shown before
    finally:
        await stop_harness(h)
