"""The main job: one full local call, with the timeline of its stages in milliseconds.

Starts a LiveKit server on loopback, the backend on SQLite, the demo agent and the device
daemon on the simulated board; enrolls the device with a one-time code; presses the button;
lets the call run until the agent has answered and hung up; prints the timeline; stops
everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import sys
from pathlib import Path

import numpy as np

from appliance.control import send_command
from appliance.daemon import Daemon
from appliance.settings import LoggingSettings, LogLevel
from appliance.state import CallTimeline, StateChange
from appliance.status.journal import setup_logging
from demo import platform_job
from demo.one_call import press_and_wait, state_line
from demo.platform_job import PLATFORMS
from demo.stack import USER_SENTENCE, LocalStack
from demo.tts import synthesize

RATE = 48000


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m demo.main_job` (README command 1)."""
    parser = argparse.ArgumentParser(
        prog="python -m demo.main_job", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    parser.add_argument("--max-call-s", type=float, default=45.0, help="press again after this")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the device's log")
    parser.add_argument(
        "--platform",
        choices=PLATFORMS,
        help="call through this hosted platform's loopback fake (from the checkout's tests/)",
    )
    args = parser.parse_args(argv)
    level: LogLevel = "info" if args.verbose else "warning"
    setup_logging(LoggingSettings(level=level, journal="off"), device_id="-")
    if not args.verbose:
        # livekit-rtc warns about its own FFI handle races (livekit/agents#4203): noise here.
        logging.getLogger("livekit").setLevel(logging.ERROR)
    try:
        if args.platform:
            return asyncio.run(platform_job.run(args.platform, args.workdir, args.max_call_s, say))
        return asyncio.run(_run(args.workdir, args.max_call_s))
    except KeyboardInterrupt:
        return 130


async def _run(workdir: Path | None, max_call_s: float) -> int:
    say("starting the LiveKit server, the backend (SQLite) and the demo agent on loopback")
    async with LocalStack(workdir=workdir, end_after_turns=1) as stack:
        say(f"  LiveKit server  {stack.livekit.url}")
        say(f"  backend         {stack.backend.url}")
        say(f"  demo agent      registered as {stack.agent.agent_name!r}")
        speech = await synthesize(USER_SENTENCE)
        pause = np.zeros(RATE * 2, dtype=np.int16)
        files = stack.write_device("kiosk-demo", np.concatenate([speech, pause]))
        say("admin issues a one-time enrollment code; the device enrolls with its own key")
        settings = await stack.enroll(files)
        if workdir is not None:
            say(f"  device settings {files.config}")

        timelines: list[CallTimeline] = []
        async with Daemon(settings, on_timeline=timelines.append) as daemon:
            states: asyncio.Queue[StateChange] = asyncio.Queue()
            daemon.supervisor.add_observer(states.put_nowait)
            daemon.supervisor.add_observer(lambda change: say(state_line(change)))
            stop = asyncio.Event()
            runner = asyncio.create_task(daemon.run(stop), name="demo-daemon")
            press = functools.partial(send_command, Path(daemon.control_socket), "press")
            try:
                await press_and_wait(states, press, say, answer_within_s=30, max_call_s=max_call_s)
            finally:
                stop.set()
                await runner
        if workdir is not None:
            say(f"  speaker output  {files.speaker_wav}")
    if not timelines:
        say("no call was made")
        return 1
    print()
    print(timelines[-1].format())
    return 0


def say(line: str) -> None:
    """One line of the demo's narration."""
    print(line, flush=True)


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
