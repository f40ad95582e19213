"""The main job through a hosted platform's fake: `scripts/demo --platform NAME`.

The platform's own LiveKit server (the fake's keys) and its loopback fake (`tests/platforms/`,
each behaviour citing the platform's document) stand in for the platform; the real backend is
configured with the platform at the fake; the device runs on the simulated board. The
platform's agent greets in its voice, sends the transcript and its state the platform's way
and ends the call the platform's way (Click2Call: a stand-in phone rings, answers, speaks and
hangs up). Prints the states, the transcript the device shows and the same timeline. Runs
from the checkout only: the fakes are test doubles under `tests/`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import tempfile
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np

from appliance.control import send_command
from appliance.daemon import Daemon
from appliance.provisioning_client.enrollment import enroll_device
from appliance.settings import load_settings
from appliance.state import CallTimeline, StateChange
from demo.livekit_server import LiveKitServer
from demo.one_call import press_and_wait, state_line
from demo.stack import write_wav
from demo.tts import synthesize
from provisioning.http import BackendServer
from provisioning.models import CallRecord
from provisioning.rooms import RecordingRoomService

PLATFORMS = ("call2me", "vatel", "thinnestai", "click2call", "hmsvoicedock")
GREETING = "Hello, you are through to the {name} assistant. Goodbye for now."


Say = Callable[[str], None]


async def run(name: str, workdir: Path | None, max_call_s: float, say: Say) -> int:
    """One call through `name`'s fake; returns the exit status."""
    from tests.platforms.agents import AGENTS, PlatformAgent, SipLeg, ThinnestAIAgent, VatelAgent
    from tests.platforms.conftest import FAKES, PLATFORM_KEY, SETTINGS, platform_config
    from tests.platforms.fake_base import FAKE_LIVEKIT_KEY, FAKE_LIVEKIT_SECRET

    timelines: list[CallTimeline] = []
    async with AsyncExitStack() as stack:
        base = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kiosk-")))
        say(f"starting {name}'s stand-in: its LiveKit server, its API fake, the backend")
        livekit = await stack.enter_async_context(
            LiveKitServer(api_key=FAKE_LIVEKIT_KEY, api_secret=FAKE_LIVEKIT_SECRET)
        )
        fake = await stack.enter_async_context(FAKES[name](PLATFORM_KEY, livekit_url=livekit.url))
        greeting = await synthesize(GREETING.format(name=name))
        agents: list[PlatformAgent] = []

        async def dispatch(room: str) -> None:
            # The platform's side of the call, its own way (tests/platforms/agents.py).
            agent = (SipLeg if name == "click2call" else AGENTS[name])(livekit.url, room)
            agents.append(agent)
            await agent.start()
            await agent.wait_for_kiosk()
            if isinstance(agent, SipLeg):
                await agent.ring()
                await asyncio.sleep(2.0)
                await agent.answer()
            await agent.set_state("speaking")
            if not isinstance(agent, SipLeg):
                await agent.say(GREETING.format(name=name))
            await agent.speak(greeting)
            await agent.set_state("listening")
            await asyncio.sleep(1.0)
            reason = "agent_hangup" if isinstance(agent, ThinnestAIAgent | VatelAgent) else ""
            await agent.end(reason)

        fake.on_room = dispatch
        say(f"  LiveKit server  {livekit.url} (the platform's)")
        say(f"  {name} fake  {fake.url}")
        backend_dir = base / "backend"
        backend_dir.mkdir(parents=True, exist_ok=True)
        config = platform_config(backend_dir, name, fake.url, None)
        backend = await stack.enter_async_context(
            BackendServer(config, port=0, rooms=RecordingRoomService())
        )
        say(f"  backend         {backend.url} (calls go to {name}; its key stays here)")
        settings_path = _write_device(base / "kiosk", backend.url)
        settings = load_settings(settings_path)
        code = await backend.core.create_enrollment_code(ttl_s=600, label="kiosk-demo")
        enrollment = await enroll_device(
            settings.device.state_dir, settings.backend.url, settings.device.name, code
        )
        await backend.core.set_device_settings(
            enrollment.device_id, {"provider": SETTINGS[name]}, actor="demo"
        )
        say("the device enrolled; the fleet points it at the platform")
        async with Daemon(settings, on_timeline=timelines.append) as daemon:
            states: asyncio.Queue[StateChange] = asyncio.Queue()
            daemon.supervisor.add_observer(states.put_nowait)
            daemon.supervisor.add_observer(lambda c: say(state_line(c)))
            stop = asyncio.Event()
            runner = asyncio.create_task(daemon.run(stop), name="demo-daemon")
            follower = asyncio.create_task(_show_transcript(daemon, say), name="demo-transcript")
            press = functools.partial(send_command, Path(daemon.control_socket), "press")
            try:
                await press_and_wait(states, press, say, answer_within_s=40, max_call_s=max_call_s)
                calls = await _ended_calls(backend)
                for call in calls:
                    detail = f", {call.end_detail}" if call.end_detail else ""
                    detail += f", outcome {call.outcome}" if call.outcome else ""
                    say(f"  backend record: {call.call_id} ended {call.end_reason}{detail}")
            finally:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
                stop.set()
                await runner
                for agent in agents:
                    await agent.aclose()
    if not timelines:
        say("no call was made")
        return 1
    print()
    print(timelines[-1].format())
    return 0


async def _show_transcript(daemon: Daemon, say: Say) -> None:
    """What a local display would show (`appliance transcript --follow --text`)."""
    lines: asyncio.Queue[str] = daemon.conversation.follow()
    try:
        while True:
            entry = json.loads(await lines.get())
            if entry["final"]:
                say(f"  transcript: {entry['speaker']}: {entry['text']}")
    finally:
        daemon.conversation.unfollow(lines)


async def _ended_calls(backend: BackendServer) -> list[CallRecord]:
    """The backend's records once the device's end report has reached it (within 10 s)."""
    for _ in range(100):
        calls = await backend.core.list_calls()
        if calls and all(call.ended_at is not None for call in calls):
            break
        await asyncio.sleep(0.1)
    return calls


def _write_device(base: Path, backend_url: str) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    write_wav(base / "microphone.wav", np.zeros(4800, dtype=np.int16))
    config = base / "appliance.toml"
    config.write_text(
        '[device]\nname = "kiosk-demo"\nstate_dir = "state"\n\n'
        f'[backend]\nurl = "{backend_url}"\n\n'
        '[board]\nprofile = "simulated"\n\n'
        "[call]\nagent_join_timeout_s = 20.0\n\n"
        '[simulated]\nmicrophone_wav = "microphone.wav"\nspeaker_wav = "speaker.wav"\n'
    )
    return config
