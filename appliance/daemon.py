"""The daemon: composes settings, hardware, the backend client, the supervisor and its observers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any

import httpx

from appliance.aio import AsyncResource, cancel_and_wait
from appliance.audio.volume import ScaledSpeaker
from appliance.backoff import Backoff
from appliance.board import Board, open_board
from appliance.call.conversation import Conversation
from appliance.call.events import CallEvent
from appliance.call.ringing import RingTone
from appliance.call.tools import DeviceTools
from appliance.call.worker_call import WorkerCall
from appliance.call.workers import CallWorkers
from appliance.clock import Clock, SystemClock
from appliance.control import ControlServer
from appliance.fleet_settings import FleetSettings
from appliance.provisioning_client import CallGrant, DeviceKey, Enrollment, ProvisioningClient
from appliance.provisioning_client.call_marker import CallMarker
from appliance.provisioning_client.outbox import Outbox
from appliance.provisioning_client.records import DurableCallRecords, send_report
from appliance.service.doctor import package_version
from appliance.settings import Settings
from appliance.state import CallTimeline
from appliance.status.leds import StatusLed
from appliance.status.systemd import SystemdNotifier, default_notify, watchdog_period_s
from appliance.status.watchdog import Watchdog, watch_device
from appliance.supervisor import Supervisor
from appliance.triggers.wake.switch import WakeWordSwitch
from appliance.triggers.wake.trigger import WakeWordTrigger

logger = logging.getLogger(__name__)

CONTROL_SOCKET_NAME = "control.sock"
OUTBOX_DIR_NAME = "outbox"
# The outbox retries at least this often, so a record lands within ~36 s of the backend's return.
OUTBOX_MAX_BACKOFF_S = 30.0
OUTBOX_FLUSH_ON_STOP_S = 2.0


class Daemon(AsyncResource):
    """One running device. `async with Daemon(settings) as d: await d.run(stop)`."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        on_timeline: Callable[[CallTimeline], None] | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock or SystemClock()
        self._transport = transport
        self._on_timeline = on_timeline
        self._stack = AsyncExitStack()
        self._board: Board | None = None
        self._supervisor: Supervisor | None = None
        self._outbox: Outbox | None = None
        self._call_workers: CallWorkers | None = None
        self._muted_at_start = False
        self._speaker: ScaledSpeaker | None = None
        self._wake_switch: WakeWordSwitch | None = None
        self.fleet_settings: FleetSettings | None = None
        # The current call's transcripts and agent state (a local display, the LED).
        self.conversation = Conversation()
        self.tools: DeviceTools | None = None

    @property
    def supervisor(self) -> Supervisor:
        """The state machine (after `__aenter__`)."""
        assert self._supervisor is not None, "the daemon is not open"
        return self._supervisor

    @property
    def board(self) -> Board:
        """The opened hardware (after `__aenter__`)."""
        assert self._board is not None, "the daemon is not open"
        return self._board

    @property
    def speaker(self) -> ScaledSpeaker:
        """What calls and the earcon play into: the fleet's volume over the board's speaker."""
        assert self._speaker is not None, "the daemon is not open"
        return self._speaker

    @property
    def wake_word(self) -> WakeWordTrigger | None:
        """The wake word running now (the fleet may switch its model), if any."""
        return None if self._wake_switch is None else self._wake_switch.trigger

    @property
    def control_socket(self) -> str:
        """Where `appliance press` and `appliance status` reach this daemon."""
        return str(self.settings.device.state_dir / CONTROL_SOCKET_NAME)

    async def aclose(self) -> None:
        """Release everything in reverse order of opening."""
        await self._stack.aclose()

    async def start(self) -> None:
        """Open the key, the enrollment, the backend client, the board and the supervisor."""
        state_dir = self.settings.device.state_dir
        # Entered first, so it is closed last: systemd hears from it until the very end.
        period_s = watchdog_period_s(os.environ, os.getpid())
        watchdog = Watchdog(default_notify(), period_s, clock=self._clock)
        await self._stack.enter_async_context(watchdog)
        key = DeviceKey.load_or_create(state_dir)
        enrollment = Enrollment.load(state_dir)
        client = ProvisioningClient(
            self.settings.backend.url,
            key,
            device_id=enrollment.device_id,
            timeout_s=self.settings.backend.timeout_s,
            transport=self._transport,
        )
        self._stack.push_async_callback(client.aclose)
        # Call records wait on disk until the backend has them; a call the daemon died in
        # is reported now, from its marker.
        self._outbox = Outbox(
            state_dir / OUTBOX_DIR_NAME,
            send=functools.partial(send_report, client),
            clock=self._clock,
            backoff=Backoff(initial_s=1.0, max_s=OUTBOX_MAX_BACKOFF_S),
        )
        marker = CallMarker(state_dir, clock=self._clock)
        marker.recover(self._outbox)
        await self._stack.enter_async_context(self._outbox)
        records = DurableCallRecords(self._outbox, marker, clock=self._clock)
        self._board = await open_board(
            self.settings,
            self._stack,
            clock=self._clock,
            on_button=self._on_button,
            on_long_press=self._on_long_press,
            on_mute=self._on_mute,
        )
        # A call's room runs in a worker process; one is started now, while idle.
        self._call_workers = await self._stack.enter_async_context(CallWorkers())
        # The fleet's speaker volume, in front of the board's speaker (audio/volume.py).
        self._speaker = ScaledSpeaker(self._board.speaker)
        self.tools = DeviceTools(
            speaker=self._speaker, status=self._tool_status, relay=self._board.relay
        )
        self._supervisor = Supervisor(
            backend=client,
            call_factory=self._make_call,
            settings=self.settings.call,
            clock=self._clock,
            records=records,
            heartbeat_s=self.settings.backend.heartbeat_s,
            hold_grant=self.settings.backend.hold_grant,
            firmware=package_version(),
            board=self.settings.board.name,
            on_settings=self._on_fleet_settings,
        )
        self._supervisor.set_muted(self._muted_at_start)
        self._supervisor.add_observer(SystemdNotifier(default_notify()))
        if self._board.led is not None:
            status_led = StatusLed(self._board.led, clock=self._clock)
            # Entered after the LED was opened, so it is turned off before the pin is released.
            self._supervisor.add_observer(await self._stack.enter_async_context(status_led))
            self.conversation.add_observer(status_led.show_agent_state)
        # The ring sound while the call rings people first, on the call's speaker path.
        ring_tone = RingTone(self._speaker, clock=self._clock)
        self._supervisor.add_observer(await self._stack.enter_async_context(ring_tone))
        self._wake_switch = WakeWordSwitch(
            self.settings,
            capture=self._board.capture,
            speaker=self._speaker,
            supervisor=self._supervisor,
            clock=self._clock,
        )
        self._stack.push_async_callback(self._wake_switch.aclose)
        wake_word = await self._wake_switch.open()
        if wake_word is not None:
            self._supervisor.add_observer(wake_word.on_state_change)
        self.fleet_settings = FleetSettings(
            self.settings.call,
            supervisor=self._supervisor,
            speaker=self._speaker,
            wake_word=self._wake_switch,
            models=self._wake_switch.models,
        )
        if self._board.audio is not None:
            audio = self._board.audio
            audio.add_listener(self._supervisor)
            # Call audio only while a call carries it; idle listening otherwise (see the pipeline).
            audio.set_call_audio(False)
            self._supervisor.add_observer(
                lambda change: audio.set_call_audio(change.state.carries_call_audio)
            )
        watch_device(
            watchdog,
            self.settings,
            supervisor=self._supervisor,
            audio=self._board.audio,
            clock=self._clock,
        )
        if self._on_timeline is not None:
            self._supervisor.add_timeline_observer(self._on_timeline)
        control = ControlServer(
            state_dir / CONTROL_SOCKET_NAME,
            transcripts=self.conversation,
            press=self.press,
            status=lambda: self.supervisor.state.value,
            long_press=lambda: self.press(long=True),
        )
        await control.start()
        self._stack.push_async_callback(control.aclose)

    def press(self, *, long: bool = False) -> None:
        """Press the call button: the simulated one, held long enough for a long press if
        `long`; on real boards, a command trigger (or, if `long`, a cancel)."""
        if self._board is not None and self._board.button is not None:
            self._board.button.press(long=long)
        elif long:
            self.supervisor.cancel("command")
        else:
            self.supervisor.trigger("command")

    def _tool_status(self) -> dict[str, Any]:
        """What the `device_status` tool tells the agent: nothing secret, nothing personal."""
        supervisor = self.supervisor
        return {
            "device": self.settings.device.name,
            "state": supervisor.state.value,
            "muted": supervisor.muted,
            "volume": round(self.speaker.volume, 2),
            "version": package_version(),
        }

    def _on_fleet_settings(self, sent: Mapping[str, Any]) -> None:
        if self.tools is not None:
            self.tools.apply_fleet(sent.get("tools"))
        # The first check-in may come before the wake word is open: applied at the next.
        if self.fleet_settings is not None:
            self.fleet_settings.apply(sent)

    def _on_button(self) -> None:
        self.supervisor.trigger("button")

    def _on_long_press(self) -> None:
        self.supervisor.cancel("button")

    def _on_mute(self, muted: bool) -> None:
        # A mute switch reports its position while the board opens, before the supervisor.
        if self._supervisor is None:
            self._muted_at_start = muted
        else:
            self._supervisor.set_muted(muted)

    def _make_call(self, grant: CallGrant, on_event: Callable[[CallEvent], None]) -> WorkerCall:
        assert self._board is not None and self._call_workers is not None
        return WorkerCall(
            grant,
            workers=self._call_workers,
            capture=self._board.capture,
            speaker=self._speaker or self._board.speaker,
            on_event=on_event,
            clock=self._clock,
            status_topic=self.settings.call.status_topic,
            connect_timeout_s=self.settings.call.connect_timeout_s,
            control_topic=self.settings.call.control_topic,
            muted=self.supervisor.muted,
            conversation=self.conversation,
            tools=self.tools,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then shut down in order."""
        runner = asyncio.create_task(self.supervisor.run(), name="supervisor")
        stopper = asyncio.create_task(stop.wait(), name="daemon-stop")
        try:
            await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.supervisor.stop()
            await cancel_and_wait(stopper)
            await runner
            # A polite stop gives the last call's end report a moment to reach the backend;
            # what does not stays on disk for the next start.
            if self._outbox is not None and self._outbox.pending():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(OUTBOX_FLUSH_ON_STOP_S):
                        await self._outbox.drained()
