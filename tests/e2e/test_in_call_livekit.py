"""The own LiveKit's in-call conventions on the real stack: the demo agent's transcripts and
`lk.agent.state` reach a local display (the control socket) and the LED's observer; tools
over LiveKit RPC, one allowed by the fleet and one refused."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc

from appliance.call.events import AgentActivity
from appliance.call.livekit_call import TOOL_REFUSED
from appliance.control import follow_lines
from appliance.state import State
from appliance.status.leds import AGENT_PATTERNS
from demo.stack import LocalStack
from tests.e2e.conftest import ended_record, run_device

pytestmark = pytest.mark.e2e


async def _lines(socket: str, into: list[dict[str, object]]) -> None:
    async for line in follow_lines(Path(socket), "transcript follow"):
        into.append(json.loads(line))


async def _until(predicate: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_transcripts_agent_state_and_tools_over_rpc(stack: LocalStack) -> None:
    files = stack.write_device(
        "kiosk-conventions", np.zeros(48000, dtype=np.int16), idle_timeout_s=0, cooldown_s=0
    )
    settings = await asyncio.wait_for(stack.enroll(files), 10)
    [enrolled] = [
        d for d in await stack.backend.core.list_devices() if d.name == "kiosk-conventions"
    ]
    # The fleet allows the status tool (and ending the call); not the volume.
    await stack.backend.core.set_device_settings(
        enrolled.device_id,
        {"tools": ["end_call", "device_status", "pulse_relay"]},
        actor="test",
    )
    async with run_device(settings) as device:
        await device.watcher.wait_for(State.READY, 15)
        daemon = device.daemon
        assert daemon.tools is not None
        async with asyncio.timeout(10):
            while "device_status" not in daemon.tools.allowed:
                daemon.supervisor.keeper.wake()
                await asyncio.sleep(0.2)
        states: list[AgentActivity | None] = []
        daemon.conversation.add_observer(states.append)
        lines: list[dict[str, object]] = []
        follower = asyncio.create_task(_lines(daemon.control_socket, lines))
        try:
            daemon.press()
            session = await stack.agent.next_session(timeout=20)
            await device.watcher.wait_for(State.IN_CALL, 20)
            # The greeting: the agent's transcript and its speaking state.
            await _until(lambda: any(line["speaker"] == "agent" for line in lines), 20)
            await _until(lambda: AgentActivity.LISTENING in states, 20)
            assert AgentActivity.SPEAKING in states
            (greeting,) = [line for line in lines if line["speaker"] == "agent"][:1]
            assert greeting["text"] == session.options.greeting
            assert greeting["final"] is True

            # A user line published by the agent for the kiosk's microphone track.
            (kiosk,) = session.room.remote_participants.values()
            (mic,) = kiosk.track_publications.values()
            await session.room.local_participant.send_text(
                "when does the library open",
                topic="lk.transcription",
                attributes={
                    "lk.transcription_final": "false",
                    "lk.segment_id": "SG_user",
                    "lk.transcribed_track_id": mic.sid,
                },
            )
            await _until(lambda: any(line["speaker"] == "user" for line in lines), 10)
            user = next(line for line in lines if line["speaker"] == "user")
            assert (user["text"], user["final"], user["segment_id"]) == (
                "when does the library open",
                False,
                "SG_user",
            )

            # An allowed tool answers; one the fleet does not allow is refused.
            rpc = session.room.local_participant
            status = json.loads(
                await rpc.perform_rpc(
                    destination_identity=kiosk.identity, method="device_status", payload="{}"
                )
            )
            assert status["state"] == "in_call" and status["device"] == "kiosk-conventions"
            with pytest.raises(rtc.RpcError) as refused:
                await rpc.perform_rpc(
                    destination_identity=kiosk.identity,
                    method="set_volume",
                    payload='{"level": 0.1}',
                )
            assert refused.value.code == TOOL_REFUSED
            assert daemon.speaker.volume == 1.0

            # The door opener: the board profile's relay, a gpiozero pin (mock on this board).
            pulsed = await rpc.perform_rpc(
                destination_identity=kiosk.identity,
                method="pulse_relay",
                payload='{"seconds": 2}',
            )
            assert json.loads(pulsed) == {"pulsed_s": 2.0}
            pin = daemon.board.relay_pin
            # Answered once closed; opened again in the background.
            assert [s.state for s in pin.states][:2] == [False, True]
            with pytest.raises(rtc.RpcError) as busy:  # one pulse at a time, none queued
                await rpc.perform_rpc(
                    destination_identity=kiosk.identity, method="pulse_relay", payload=""
                )
            assert busy.value.code == TOOL_REFUSED and "busy" in busy.value.message
            async with asyncio.timeout(5):
                while len(pin.states) < 3:
                    await asyncio.sleep(0.05)
            assert [s.state for s in pin.states] == [False, True, False]

            # The agent ends the call with the end_call tool.
            await rpc.perform_rpc(
                destination_identity=kiosk.identity, method="end_call", payload=""
            )
            await device.watcher.wait_for(State.READY, 15)
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        ending = [c for c in device.watcher.changes if c.state is State.ENDING]
        assert [c.reason for c in ending] == ["agent_ended"]
        assert states[-1] is None  # the call's end clears the agent's state
        call_id = device.timelines[-1].call_id
        assert {line["call_id"] for line in lines} == {call_id}
        record = await ended_record(stack, str(call_id))
        assert record.end_reason == "agent_ended"
        # A local display asks the running daemon: `appliance transcript --text`.
        command = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "appliance",
            "--config",
            str(files.config),
            "transcript",
            "--text",
            stdout=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            out, _ = await command.communicate()
        assert command.returncode == 0
        shown = out.decode().splitlines()
        assert shown[0] == f"agent: {session.options.greeting}"
        assert "user: when does the library open" not in shown  # an interim line
    assert set(AGENT_PATTERNS) == set(AgentActivity)
