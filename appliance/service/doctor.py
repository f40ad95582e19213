"""`appliance doctor`: one PASS, WARN or FAIL line per thing a technician can check, with codes.

The checks run in order and each reads only what it needs; a check whose prerequisite
failed is shown as SKIP, naming that prerequisite, so one fault gives one FAIL. Nothing here
changes the device: the key is never created, the enrollment never written.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from appliance.control import send_command
from appliance.errors import (
    ApplianceError,
    BackendError,
    BackendRefusedError,
    BackendUnreachableError,
    CallError,
    CredentialsRejectedError,
    NotEnrolledError,
    RateLimitedError,
    SettingsError,
)
from appliance.provisioning_client import DeviceKey, Enrollment
from appliance.provisioning_client.client import ProvisioningClient
from appliance.provisioning_client.keys import KEY_FILE_NAME
from appliance.service.codes import ErrorCode, code_for_state, entry
from appliance.settings import Settings, load_settings
from appliance.state import State
from appliance.status.redact import redact

CONTROL_SOCKET_NAME = "control.sock"  # appliance.daemon's; not imported to keep this light
CLOCK_WARN_S = 5.0
# Half the backend's default max_clock_skew_s (60): requests this far off are near refusal.
CLOCK_FAIL_S = 30.0
QUIET_DBFS = -70.0
LEAVE_TIMEOUT_S = 5.0


def package_version() -> str:
    """The installed firmware's version."""
    try:
        return version("kiosk-voice")
    except PackageNotFoundError:
        return "unknown"


class Verdict(StrEnum):
    """How one check came out."""

    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"  # not run: a check it needs did not pass


@dataclass(frozen=True)
class CheckResult:
    """One line of the report."""

    name: str
    verdict: Verdict
    detail: str
    code: ErrorCode | None = None

    @property
    def action(self) -> str:
        """What to do, from the catalogue (empty for a pass)."""
        if self.code is None or self.verdict in (Verdict.PASS, Verdict.SKIP):
            return ""
        return entry(self.code).action

    def as_dict(self) -> dict[str, str | None]:
        """The JSON form."""
        return {
            "name": self.name,
            "verdict": self.verdict.value,
            "code": self.code.value if self.code else None,
            "detail": self.detail,
            "action": self.action or None,
        }


@dataclass
class DoctorReport:
    """Every check's result, in order."""

    config: Path
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No check failed (warnings allowed)."""
        return not any(c.verdict is Verdict.FAIL for c in self.checks)

    def get(self, name: str) -> CheckResult:
        """The result of the check called `name`."""
        return next(c for c in self.checks if c.name == name)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (`appliance doctor --json`, and the support bundle)."""
        return {
            "ok": self.ok,
            "version": package_version(),
            "config": str(self.config),
            "checks": [c.as_dict() for c in self.checks],
        }

    def format(self) -> str:
        """Lines for people, in the manner of `systemctl status`."""
        failed = sum(c.verdict is Verdict.FAIL for c in self.checks)
        warned = sum(c.verdict is Verdict.WARN for c in self.checks)
        dot = "●" if failed else "○" if warned else "✓"
        summary = (
            "all checks passed"
            if not (failed or warned)
            else f"{failed} failed, {warned} warning{'' if warned == 1 else 's'}"
        )
        lines = [
            f"{dot} kiosk-appliance {package_version()} doctor: {summary}",
            f"  config: {self.config}",
        ]
        for c in self.checks:
            code = c.code.value if c.code and c.verdict not in (Verdict.PASS, Verdict.SKIP) else ""
            lines.append(f"  {c.verdict.value:<4}  {c.name:<14}{code:<5} {c.detail}")
            if c.action:
                lines.append(f"  {'':<4}  {'':<14}{'':<5} → {c.action}")
        return "\n".join(lines)


class Doctor:
    """Runs the checks against one settings file; the clock is injectable for tests."""

    def __init__(
        self,
        config: Path,
        *,
        wall_clock: Callable[[], float] = time.time,
        audio_seconds: float = 1.0,
    ) -> None:
        self._config = Path(config)
        self._wall_clock = wall_clock
        self._audio_seconds = audio_seconds
        self.report = DoctorReport(self._config)
        self._settings: Settings | None = None
        self._key: DeviceKey | None = None
        self._enrollment: Enrollment | None = None
        self._daemon_state: State | None = None
        self._backend_ok = False

    def _add(
        self, name: str, verdict: Verdict, detail: str, code: ErrorCode | None = None
    ) -> CheckResult:
        result = CheckResult(name, verdict, detail, code)
        self.report.checks.append(result)
        return result

    def _skip(self, name: str, needs: str) -> None:
        self._add(name, Verdict.SKIP, f"not checked: needs {needs}")

    async def run(self) -> DoctorReport:
        """Every check, in order."""
        self._check_settings()
        settings = self._settings
        if settings is None:
            for name in ("device key", "enrollment", "daemon", "backend DNS", "backend TLS"):
                self._skip(name, "valid settings")
            for name in ("backend HTTP", "clock offset", "credentials", "LiveKit"):
                self._skip(name, "valid settings")
            for name in ("microphone", "speaker", "wake word", "button pins", "status LED"):
                self._skip(name, "valid settings")
            return self.report
        self._check_key(settings)
        self._check_enrollment(settings)
        await self._check_daemon(settings)
        await self._check_backend(settings)
        await self._check_audio(settings)
        await self._check_wake_word(settings)
        self._check_pins(settings)
        return self.report

    # -- local ---------------------------------------------------------------------------------

    def _check_settings(self) -> None:
        try:
            settings = load_settings(self._config)
        except SettingsError as exc:
            self._add("settings", Verdict.FAIL, str(exc), ErrorCode.SETTINGS_INVALID)
            return
        self._settings = settings
        self._add("settings", Verdict.PASS, f"valid, board {settings.board.name}")

    def _check_key(self, settings: Settings) -> None:
        state_dir = settings.device.state_dir
        path = state_dir / KEY_FILE_NAME
        if not path.exists():
            self._add(
                "device key",
                Verdict.FAIL,
                f"no key at {path} (the daemon or `appliance enroll` makes it)",
                ErrorCode.KEY_PROBLEM,
            )
            return
        try:
            self._key = DeviceKey.load_or_create(state_dir)  # only loads: the file exists
        except ApplianceError as exc:
            self._add("device key", Verdict.FAIL, str(exc), ErrorCode.KEY_PROBLEM)
            return
        dir_mode = stat.S_IMODE(state_dir.stat().st_mode)
        if dir_mode & 0o077:
            self._add(
                "device key",
                Verdict.WARN,
                f"{state_dir} has mode {dir_mode:o}; it should be 0700",
                ErrorCode.KEY_PROBLEM,
            )
            return
        self._add("device key", Verdict.PASS, f"{self._key.fingerprint}, private (0600)")

    def _check_enrollment(self, settings: Settings) -> None:
        try:
            enrollment = Enrollment.load(settings.device.state_dir)
        except (NotEnrolledError, SettingsError) as exc:
            self._add("enrollment", Verdict.FAIL, str(exc), ErrorCode.NOT_ENROLLED)
            return
        self._enrollment = enrollment
        if self._key is not None and self._key.fingerprint != enrollment.device_id:
            self._add(
                "enrollment",
                Verdict.FAIL,
                f"enrolled as {enrollment.device_id}, but the key is {self._key.fingerprint}",
                ErrorCode.NOT_ENROLLED,
            )
            self._enrollment = None
        elif enrollment.backend_url.rstrip("/") != settings.backend.url.rstrip("/"):
            self._add(
                "enrollment",
                Verdict.WARN,
                f"enrolled with {enrollment.backend_url}, settings name {settings.backend.url}",
                ErrorCode.NOT_ENROLLED,
            )
        else:
            self._add("enrollment", Verdict.PASS, f"enrolled as {enrollment.device_id}")

    async def _check_daemon(self, settings: Settings) -> None:
        path = settings.device.state_dir / CONTROL_SOCKET_NAME
        try:
            answer = await send_command(path, "status", timeout_s=3.0)
        except (OSError, TimeoutError):
            self._add("daemon", Verdict.WARN, "not running (systemctl status kiosk-appliance)")
            return
        try:
            state = State(answer.strip())
        except ValueError:
            self._add("daemon", Verdict.WARN, f"running, answered {answer.strip()!r}")
            return
        self._daemon_state = state
        code = code_for_state(state)
        if code is not None:
            self._add("daemon", Verdict.FAIL, f"running, state {state.value}", code)
        else:
            self._add("daemon", Verdict.PASS, f"running, state {state.value}")

    # -- the backend and LiveKit ---------------------------------------------------------------

    async def _check_backend(self, settings: Settings) -> None:
        url = urlsplit(settings.backend.url)
        host = url.hostname or ""
        port = url.port or (443 if url.scheme == "https" else 80)
        timeout_s = settings.backend.timeout_s
        if not await self._check_dns(host, port, timeout_s):
            for name in ("backend TLS", "backend HTTP", "clock offset", "credentials", "LiveKit"):
                self._skip(name, "the backend's name to resolve")
            return
        if not await self._check_tls(url.scheme, host, port, timeout_s):
            for name in ("backend HTTP", "clock offset", "credentials", "LiveKit"):
                self._skip(name, "TLS to the backend")
            return
        if not await self._check_http(settings):
            for name in ("clock offset", "credentials", "LiveKit"):
                self._skip(name, "the backend to answer")
            return
        if self._key is None or self._enrollment is None:
            self._skip("credentials", "a device key and an enrollment")
            self._skip("LiveKit", "a device key and an enrollment")
            return
        async with ProvisioningClient(
            settings.backend.url,
            self._key,
            device_id=self._enrollment.device_id,
            timeout_s=timeout_s,
            wall_clock=self._wall_clock,
        ) as client:
            if await self._check_credentials(client):
                await self._check_livekit(client, settings.call.connect_timeout_s)
            else:
                self._skip("LiveKit", "accepted credentials")

    async def _check_dns(self, host: str, port: int, timeout_s: float) -> bool:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            self._add("backend DNS", Verdict.PASS, f"{host} is an address")
            return True
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            detail = f"{host}: {exc}" if str(exc) else f"{host}: no answer in {timeout_s:.0f} s"
            self._add("backend DNS", Verdict.FAIL, detail, ErrorCode.DNS_FAILED)
            return False
        address = infos[0][4][0]
        self._add("backend DNS", Verdict.PASS, f"{host} → {address}")
        return True

    async def _check_tls(self, scheme: str, host: str, port: int, timeout_s: float) -> bool:
        if scheme != "https":
            loopback = host == "localhost" or _is_loopback(host)
            self._add(
                "backend TLS",
                Verdict.PASS if loopback else Verdict.WARN,
                "plain http on loopback" if loopback else "plain http: signed, but not private",
                None if loopback else ErrorCode.TLS_FAILED,
            )
            return True
        context = ssl.create_default_context()
        try:
            async with asyncio.timeout(timeout_s):
                _, writer = await asyncio.open_connection(
                    host, port, ssl=context, server_hostname=host
                )
        except ssl.SSLError as exc:
            self._add("backend TLS", Verdict.FAIL, f"{host}:{port}: {exc}", ErrorCode.TLS_FAILED)
            return False
        except (OSError, TimeoutError) as exc:
            detail = f"cannot connect to {host}:{port}: {exc or 'timed out'}"
            self._add("backend TLS", Verdict.FAIL, detail, ErrorCode.HTTP_FAILED)
            return False
        tls = writer.get_extra_info("ssl_object")
        writer.close()
        protocol = tls.version() if tls is not None else "TLS"
        self._add("backend TLS", Verdict.PASS, f"{protocol}, certificate valid for {host}")
        return True

    async def _check_http(self, settings: Settings) -> bool:
        """An unsigned check-in: the backend's 401 JSON proves it is ours and gives its clock."""
        url = settings.backend.url.rstrip("/") + "/v1/device"
        sent = self._wall_clock()
        started = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=settings.backend.timeout_s) as http:
                response = await http.get(url)
        except httpx.HTTPError as exc:
            self._add("backend HTTP", Verdict.FAIL, f"{url}: {exc!r}", ErrorCode.HTTP_FAILED)
            return False
        elapsed_ms = 1000 * (time.monotonic() - started)
        received = self._wall_clock()
        if response.status_code >= 500:
            detail = f"{url} answered {response.status_code}"
            self._add("backend HTTP", Verdict.FAIL, detail, ErrorCode.BACKEND_UNREACHABLE)
            return False
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "error" not in body:
            detail = f"{url} answered {response.status_code}, not the kiosk API"
            self._add("backend HTTP", Verdict.FAIL, detail, ErrorCode.HTTP_FAILED)
            return False
        self._add("backend HTTP", Verdict.PASS, f"the kiosk API answers ({elapsed_ms:.0f} ms)")
        self._check_clock(response.headers.get("Date"), sent, received)
        return True

    def _check_clock(self, date: str | None, sent: float, received: float) -> None:
        try:
            backend_time = parsedate_to_datetime(date).timestamp() if date else None
        except (TypeError, ValueError):
            backend_time = None
        if backend_time is None:
            self._add("clock offset", Verdict.WARN, "the backend sent no usable Date header")
            return
        offset = backend_time + 0.5 - (sent + received) / 2  # Date has whole seconds
        detail = f"{offset:+.1f} s (backend minus device, ±1 s)"
        if abs(offset) >= CLOCK_FAIL_S:
            self._add("clock offset", Verdict.FAIL, detail, ErrorCode.CLOCK_OFFSET)
        elif abs(offset) >= CLOCK_WARN_S:
            self._add("clock offset", Verdict.WARN, detail, ErrorCode.CLOCK_OFFSET)
        else:
            self._add("clock offset", Verdict.PASS, detail)

    async def _check_credentials(self, client: ProvisioningClient) -> bool:
        try:
            info = await client.check_in()
        except CredentialsRejectedError as exc:
            self._add("credentials", Verdict.FAIL, str(exc), ErrorCode.CREDENTIALS_REJECTED)
            return False
        except RateLimitedError as exc:
            self._add("credentials", Verdict.WARN, str(exc), ErrorCode.RATE_LIMITED)
            return False
        except BackendUnreachableError as exc:
            self._add("credentials", Verdict.FAIL, str(exc), ErrorCode.BACKEND_UNREACHABLE)
            return False
        except BackendError as exc:
            self._add("credentials", Verdict.FAIL, str(exc), ErrorCode.HTTP_FAILED)
            return False
        if info.status != "approved":
            detail = f"the backend lists {info.device_id} as {info.status!r}"
            self._add("credentials", Verdict.FAIL, detail, ErrorCode.NOT_APPROVED)
            return False
        detail = f"accepted: {info.name}, approved, agent {info.agent_name}"
        self._add("credentials", Verdict.PASS, detail)
        return True

    async def _check_livekit(self, client: ProvisioningClient, connect_timeout_s: float) -> None:
        """Join and leave a throwaway room with the backend's diagnostic grant.

        The room is this device's own (`diag-…`): no agent is dispatched and no call is
        recorded. A join proves the LiveKit server, the backend's keys and the media path (ICE)
        from this network, which a bare HTTP check of the server would not.
        """
        try:
            grant = await client.diagnostic_grant()
        except RateLimitedError as exc:
            self._add("LiveKit", Verdict.WARN, f"no grant: {exc}", ErrorCode.RATE_LIMITED)
            return
        except BackendRefusedError as exc:
            if exc.code == "grants_not_held":  # a hosted platform's calls: not our LiveKit
                self._add("LiveKit", Verdict.SKIP, "calls go to a hosted platform, not LiveKit")
                return
            self._add("LiveKit", Verdict.FAIL, f"no grant: {exc}", ErrorCode.LIVEKIT_UNREACHABLE)
            return
        except BackendError as exc:
            self._add("LiveKit", Verdict.FAIL, f"no grant: {exc}", ErrorCode.LIVEKIT_UNREACHABLE)
            return
        started = time.monotonic()
        try:
            await join_and_leave(grant.server_url, grant.token, connect_timeout_s)
        except CallError as exc:
            detail = f"{grant.server_url}: {exc}"
            self._add("LiveKit", Verdict.FAIL, detail, ErrorCode.LIVEKIT_UNREACHABLE)
            return
        elapsed_ms = 1000 * (time.monotonic() - started)
        detail = f"{grant.server_url}: joined and left a throwaway room ({elapsed_ms:.0f} ms)"
        self._add("LiveKit", Verdict.PASS, detail)

    # -- hardware ------------------------------------------------------------------------------

    def _daemon_holds_hardware(self) -> bool:
        return self._daemon_state is not None and self._daemon_state is not State.STOPPING

    async def _check_audio(self, settings: Settings) -> None:
        audio = settings.board.audio
        if audio.backend != "alsa":
            sim = settings.simulated
            mic = sim.microphone_wav
            if mic is not None and not mic.is_file():
                self._add("microphone", Verdict.FAIL, f"no file {mic}", ErrorCode.MICROPHONE)
            else:
                self._add("microphone", Verdict.PASS, f"simulated ({mic or 'silence'})")
            out = sim.speaker_wav
            parent = out.parent if out is not None else None
            if parent is not None and not parent.is_dir():
                self._add("speaker", Verdict.FAIL, f"no directory {parent}", ErrorCode.SPEAKER)
            else:
                self._add("speaker", Verdict.PASS, f"simulated ({out})")
            return
        if self._daemon_holds_hardware():
            state = self._daemon_state
            assert state is not None
            for name in ("microphone", "speaker"):
                if state is State.AUDIO_FAULT:
                    detail = "the running daemon cannot open it (journalctl -u kiosk-appliance)"
                    self._add(name, Verdict.FAIL, detail, ErrorCode.AUDIO_FAULT)
                else:
                    self._add(name, Verdict.PASS, f"open in the running daemon ({state.value})")
            return
        await self._open_alsa(settings)

    async def _open_alsa(self, settings: Settings) -> None:
        import numpy as np

        from appliance.audio.alsa import alsa_pipeline
        from appliance.audio.measure import dbfs
        from appliance.clock import SystemClock

        audio = settings.board.audio
        pipeline = alsa_pipeline(audio, clock=SystemClock())
        try:
            await pipeline.start()
            if pipeline.session is None:
                fault = str(pipeline.fault)
                both = audio.capture_device == audio.playback_device
                mic_bad = both or repr(audio.capture_device) in fault
                spk_bad = both or repr(audio.playback_device) in fault
                for name, bad, code in (
                    ("microphone", mic_bad, ErrorCode.MICROPHONE),
                    ("speaker", spk_bad, ErrorCode.SPEAKER),
                ):
                    if bad:
                        self._add(name, Verdict.FAIL, fault, code)
                    else:
                        self._add(name, Verdict.SKIP, "not checked: the other device failed")
                return
            frames: list[Any] = []
            async with asyncio.timeout(self._audio_seconds + 2.0):
                while len(frames) * 0.01 < self._audio_seconds:
                    frames.append(await pipeline.microphone.read())
        finally:
            await pipeline.aclose()
        level = dbfs(np.concatenate(frames))
        detail = f"{audio.capture_device}, input level {level:.1f} dBFS"
        if level < QUIET_DBFS:
            self._add("microphone", Verdict.WARN, detail + ": hears nothing", ErrorCode.MICROPHONE)
        else:
            self._add("microphone", Verdict.PASS, detail)
        self._add("speaker", Verdict.PASS, f"{audio.playback_device} opens")

    async def _check_wake_word(self, settings: Settings) -> None:
        from appliance.triggers.wake.engines import open_engine, resolve_engine

        name = resolve_engine(settings)
        if name is None:
            self._add("wake word", Verdict.PASS, "off")
            return
        try:
            engine = await asyncio.to_thread(open_engine, settings)
        except ApplianceError as exc:
            self._add("wake word", Verdict.FAIL, str(exc), ErrorCode.WAKE_WORD)
            return
        close = getattr(engine, "close", None)
        if callable(close):
            close()
        self._add("wake word", Verdict.PASS, f"{name} loads")

    def _check_pins(self, settings: Settings) -> None:
        profile = settings.board
        buttons, leds = profile.buttons, profile.leds
        held = self._daemon_holds_hardware()
        if buttons.backend != "gpio":
            self._add("button pins", Verdict.PASS, buttons.backend)
        elif held:
            self._add("button pins", Verdict.PASS, f"{buttons.call_pin}: held by the daemon")
        else:
            pins = [p for p in (buttons.call_pin, buttons.mute_pin) if p is not None]
            problem = _claim_buttons(pins, pull_up=buttons.pull_up)
            if problem:
                self._add("button pins", Verdict.FAIL, problem, ErrorCode.BUTTON_PIN)
            else:
                self._add("button pins", Verdict.PASS, f"{', '.join(pins)} claimable")
        if leds.backend != "gpio":
            self._add("status LED", Verdict.PASS, leds.backend)
        elif held:
            self._add("status LED", Verdict.PASS, f"{leds.status_pin}: held by the daemon")
        else:
            from appliance.status.gpio_led import GpioLed

            try:
                GpioLed(leds, source=profile.source or profile.name).close()
            except ApplianceError as exc:
                self._add("status LED", Verdict.FAIL, str(exc), ErrorCode.LED_PIN)
            else:
                self._add("status LED", Verdict.PASS, f"{leds.status_pin} claimable")


def _claim_buttons(pins: list[str], *, pull_up: bool) -> str:
    """Claim and release each pin as gpiozero would; a description of the first failure."""
    try:
        from gpiozero import Button
    except ImportError:
        return "gpiozero is not installed (pip install 'kiosk-voice[gpio]')"
    for pin in pins:
        try:
            Button(pin, pull_up=pull_up).close()
        except Exception as exc:  # gpiozero raises many kinds (GPIOZeroError, OSError, ...)
            return f"{pin}: {type(exc).__name__}: {exc}"
    return ""


async def join_and_leave(url: str, token: str, connect_timeout_s: float) -> None:
    """Join a LiveKit room with `token`, then leave it; `CallError` says why not."""
    from livekit import rtc  # the SDK's native library loads only for this check

    room = rtc.Room()
    # The SDK logs its own failure at error level; the check's line says it once, for people.
    sdk_logger = logging.getLogger("livekit")
    level = sdk_logger.level
    sdk_logger.setLevel(logging.CRITICAL)
    try:
        # The SDK's own timeout, not a cancel: a connect cancelled mid-handshake makes its
        # native side panic later (call/livekit_call.py).
        await room.connect(
            url, token, rtc.RoomOptions(auto_subscribe=False, connect_timeout=connect_timeout_s)
        )
    except rtc.ConnectError as exc:
        # LiveKit's refusal may quote the token it refused.
        raise CallError(redact(str(exc)) or "could not join") from exc
    finally:
        try:
            async with asyncio.timeout(LEAVE_TIMEOUT_S):
                await room.disconnect()
        finally:
            sdk_logger.setLevel(level)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def run_doctor(config: Path, **kwargs: Any) -> DoctorReport:
    """Run every check against the settings file `config`."""
    return await Doctor(config, **kwargs).run()
