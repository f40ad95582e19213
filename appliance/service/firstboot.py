"""First boot from the card's kiosk.txt: take the secrets off the card, enroll, start the daemon.

The technician writes kiosk.txt on the card's FAT partition (which has no permissions: anyone
holding the card can read it). This takes the enrollment code and the Wi-Fi password off the
card before anything else, into root-only files, then writes the settings, makes the device
key, enrolls and starts the daemon. The LED shows each step; a failure shows its blink code
(docs/errors.md) and a journal line with ERROR_CODE until the next boot. Fixing kiosk.txt and
rebooting retries: a code that was taken but not used yet waits in the state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import re
import subprocess
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

from appliance.clock import SystemClock
from appliance.errors import (
    BackendError,
    BackendRefusedError,
    BackendUnreachableError,
    CredentialsRejectedError,
    SettingsError,
)
from appliance.files import write_private
from appliance.provisioning_client import DeviceKey, Enrollment
from appliance.provisioning_client.enrollment import enroll_device
from appliance.service.codes import ErrorCode
from appliance.settings import Settings, load_settings
from appliance.state import State
from appliance.status.leds import PATTERNS, Led, Pattern, SimulatedLed, blink_code

logger = logging.getLogger(__name__)

PENDING_CODE_FILE = "firstboot-code"
WPA_CONF = Path("/etc/wpa_supplicant/wpa_supplicant-wlan0.conf")
DAEMON_UNIT = "kiosk-appliance.service"
DEVICE_USER = "kiosk"
# A clock further off than this from the backend's is stepped before enrolling (no RTC, no NTP
# yet): the backend refuses signed requests more than max_clock_skew_s (60 s) off.
CLOCK_STEP_S = 30.0
RETRY_DELAYS_S = (2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0)

WORKING = PATTERNS[State.STARTING]
ENROLLING = PATTERNS[State.CONNECTING]
DONE = PATTERNS[State.READY]


@dataclass(frozen=True)
class CardFile:
    """What the technician wrote in kiosk.txt."""

    backend_url: str = ""
    enrollment_code: str = ""
    board: str = ""
    name: str = ""
    wake_word: str = ""
    wifi_ssid: str = ""
    wifi_psk: str = ""
    wifi_country: str = ""


SECRET_KEYS = ("enrollment_code", "wifi_psk")
_KEYS = {f.name for f in fields(CardFile)}
_SECRET_LINE = re.compile(r"(?m)^(?P<key>\s*(?:enrollment_code|wifi_psk)\s*=).*$")
_STATUS_LINE = re.compile(r"(?m)^# first boot: .*\n?")


def read_card(path: Path) -> CardFile:
    """Parse kiosk.txt; SettingsError names the key and the file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(path, None, f"cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(path, None, f"not valid: {exc}") from exc
    for key, value in raw.items():
        if key not in _KEYS:
            raise SettingsError(path, key, f"unknown key (known: {', '.join(sorted(_KEYS))})")
        if not isinstance(value, str):
            raise SettingsError(path, key, "must be a quoted string")
    card = CardFile(**{k: v.strip() for k, v in raw.items()})
    if card.backend_url and not card.backend_url.startswith(("http://", "https://")):
        raise SettingsError(path, "backend_url", "must start with https:// (or http://)")
    if card.wifi_psk and not card.wifi_ssid:
        raise SettingsError(path, "wifi_ssid", "a Wi-Fi password needs wifi_ssid too")
    return card


def scrub_card(path: Path, status: str) -> None:
    """Rewrite kiosk.txt with its secrets emptied and `status` at the end.

    The old bytes are overwritten in place first and synced, so the code does not stay in the
    FAT clusters the file had (a new file could be given other clusters).
    """
    try:
        old = path.read_bytes()
    except OSError:
        return
    text = old.decode("utf-8-sig", errors="replace")
    text = _SECRET_LINE.sub(lambda m: f'{m.group("key")} ""', text)
    text = _STATUS_LINE.sub("", text).rstrip("\n") + f"\n# first boot: {status}\n"
    with open(path, "r+b") as f:
        f.write(b" " * len(old))
        f.flush()
        os.fsync(f.fileno())
        f.seek(0)
        f.write(text.encode())
        f.truncate()
        f.flush()
        os.fsync(f.fileno())


def set_toml_value(text: str, table: str, key: str, value: str) -> str:
    """`text` with `key = "value"` set in `[table]` (added if missing), comments kept."""
    literal = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    header = re.search(rf"(?m)^\[{re.escape(table)}\]\s*$", text)
    if header is None:
        return text.rstrip("\n") + f"\n\n[{table}]\n{key} = {literal}\n"
    start = header.end()
    following = re.search(r"(?m)^\[", text[start:])
    end = start + following.start() if following else len(text)
    body = text[start:end]
    line = re.compile(rf"(?m)^{re.escape(key)}\s*=.*$")
    if line.search(body):
        body = line.sub(lambda _: f"{key} = {literal}", body, count=1)
    else:
        body = f"\n{key} = {literal}" + body
    return text[:start] + body + text[end:]


class LedPlayer:
    """Plays one pattern at a time on the LED (or only logs it when the board has none)."""

    def __init__(self, led: Led | None) -> None:
        self._led = led
        self._task: asyncio.Task[None] | None = None
        self.shown: list[str] = []

    async def show(self, pattern: Pattern) -> None:
        """Replace the pattern being played."""
        await self.aclose()
        self.shown.append(pattern.name)
        if self._led is not None:
            self._task = asyncio.create_task(self._play(pattern), name="firstboot-led")

    async def _play(self, pattern: Pattern) -> None:
        assert self._led is not None
        while True:
            for level, seconds in pattern.steps:
                self._led.value = level
                if pattern.steady:
                    return
                await asyncio.sleep(seconds)

    async def aclose(self) -> None:
        """Stop playing (the LED keeps its last level)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _open_led(settings: Settings) -> Led | None:
    leds = settings.board.leds
    if leds.backend == "gpio":
        from appliance.status.gpio_led import GpioLed

        try:
            return GpioLed(leds, source=settings.board.source or settings.board.name)
        except SettingsError:
            logger.exception("first boot: the status LED cannot be opened")
            return None
    if leds.backend == "simulated":
        return SimulatedLed(clock=SystemClock())
    return None


def _systemctl(*args: str) -> None:
    subprocess.run(["systemctl", *args], check=False, timeout=60)


def _ntp_synchronized() -> bool:
    try:
        out = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.strip() == "yes"


def _step_clock(to: float) -> None:
    time.clock_settime(time.CLOCK_REALTIME, to)


class FirstBootFailed(Exception):
    """A step failed: its code, and what the card's status line says."""

    def __init__(self, code: ErrorCode, status: str) -> None:
        self.code = code
        self.status = status
        super().__init__(status)


class FirstBoot:
    """One first-boot attempt; collaborators are injectable for tests."""

    def __init__(
        self,
        card: Path,
        settings_path: Path,
        *,
        systemctl: Callable[..., None] = _systemctl,
        ntp_synchronized: Callable[[], bool] = _ntp_synchronized,
        step_clock: Callable[[float], None] = _step_clock,
        wpa_conf: Path = WPA_CONF,
        retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._card = Path(card)
        self._settings_path = Path(settings_path)
        self._systemctl = systemctl
        self._ntp_synchronized = ntp_synchronized
        self._step_clock = step_clock
        self._wpa_conf = wpa_conf
        self._retry_delays_s = retry_delays_s
        self._wall_clock = wall_clock
        self.led = LedPlayer(None)

    async def run(self, stop: asyncio.Event) -> int:
        """Do first boot; on failure show its code until `stop` is set. 0 on success."""
        try:
            settings = load_settings(self._settings_path)
        except SettingsError as exc:
            return await self._fail(FirstBootFailed(ErrorCode.SETTINGS_INVALID, str(exc)), stop)
        self.led = LedPlayer(_open_led(settings))
        try:
            try:
                await self._attempt(settings)
            except FirstBootFailed as failure:
                return await self._fail(failure, stop)
            return 0
        finally:
            await self.led.aclose()

    async def _fail(self, failure: FirstBootFailed, stop: asyncio.Event) -> int:
        logger.error(
            "first boot failed: %s",
            failure.status,
            extra={"ERROR_CODE": failure.code.value, "STATE": "firstboot"},
        )
        scrub_card(self._card, f"{failure.code.value} {failure.status} (fix this file, reboot)")
        await self.led.show(blink_code(int(failure.code.value[1:])))
        await stop.wait()
        return 1

    async def _attempt(self, settings: Settings) -> None:
        await self.led.show(WORKING)
        try:
            card = read_card(self._card)
        except SettingsError as exc:
            scrub_card(self._card, "unreadable")  # a code in a broken file leaves the card too
            raise FirstBootFailed(ErrorCode.SETTINGS_INVALID, str(exc)) from exc
        state_dir = settings.device.state_dir
        pending = state_dir / PENDING_CODE_FILE
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The secrets leave the card before anything else can fail.
        if card.enrollment_code:
            write_private(pending, card.enrollment_code.encode())
        if card.wifi_ssid and card.wifi_psk:  # an ssid alone: configured at an earlier boot
            self._write_wifi(card)
        if card.enrollment_code or card.wifi_psk:
            scrub_card(self._card, "code taken, enrolling")
        settings = self._apply_settings(card)
        code = pending.read_text().strip() if pending.exists() else ""
        enrolled = (state_dir / "enrollment.json").exists()
        if not code:
            if enrolled:
                logger.info("first boot: already enrolled, nothing to do")
                return
            raise FirstBootFailed(
                ErrorCode.SETTINGS_INVALID, "no enrollment_code in kiosk.txt and not enrolled"
            )
        key = DeviceKey.load_or_create(state_dir)
        logger.info("first boot: device key %s; enrolling", key.fingerprint)
        await self.led.show(ENROLLING)
        enrollment = await self._enroll(settings, code)
        pending.unlink(missing_ok=True)
        _give_to_device_user(state_dir)
        scrub_card(self._card, f"enrolled as {enrollment.device_id} at {time.strftime('%F %T')}")
        logger.info(
            "first boot: enrolled as %s; starting the daemon",
            enrollment.device_id,
            extra={"STATE": "firstboot"},
        )
        await self.led.show(DONE)
        self._systemctl("start", "--no-block", DAEMON_UNIT)

    def _apply_settings(self, card: CardFile) -> Settings:
        old = self._settings_path.read_text()
        text = old
        for table, key, value in (
            ("backend", "url", card.backend_url),
            ("board", "profile", card.board),
            ("device", "name", card.name),
            ("wake", "engine", card.wake_word),
        ):
            if value:
                text = set_toml_value(text, table, key, value)
        if text != old:
            self._settings_path.write_text(text)
        try:
            return load_settings(self._settings_path)
        except SettingsError as exc:
            self._settings_path.write_text(old)
            raise FirstBootFailed(ErrorCode.SETTINGS_INVALID, str(exc)) from exc

    def _write_wifi(self, card: CardFile) -> None:
        def quoted(value: str) -> str:
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

        country = f"country={card.wifi_country}\n" if card.wifi_country else ""
        conf = (
            "ctrl_interface=DIR=/run/wpa_supplicant GROUP=netdev\nupdate_config=1\n"
            f"{country}\nnetwork={{\n    ssid={quoted(card.wifi_ssid)}\n"
            f"    psk={quoted(card.wifi_psk)}\n}}\n"
        )
        self._wpa_conf.parent.mkdir(parents=True, exist_ok=True)
        write_private(self._wpa_conf, conf.encode())
        self._systemctl("enable", "--now", "wpa_supplicant@wlan0.service")
        logger.info("first boot: Wi-Fi %s configured", card.wifi_ssid)

    async def _enroll(self, settings: Settings, code: str) -> Enrollment:
        url, timeout_s = settings.backend.url, settings.backend.timeout_s
        delays = list(self._retry_delays_s)
        while True:
            try:
                await self._set_clock_from_backend(url, timeout_s)
                return await enroll_device(
                    settings.device.state_dir, url, settings.device.name, code, timeout_s=timeout_s
                )
            except BackendUnreachableError as exc:
                if not delays:
                    raise FirstBootFailed(
                        ErrorCode.BACKEND_UNREACHABLE, f"backend unreachable: {exc}"
                    ) from exc
                delay = delays.pop(0)
                logger.warning(
                    "first boot: backend unreachable (%s); again in %.0f s",
                    exc,
                    delay,
                    extra={"ERROR_CODE": ErrorCode.BACKEND_UNREACHABLE.value},
                )
                await self.led.show(blink_code(3))
                await asyncio.sleep(delay)
                await self.led.show(ENROLLING)
            except (CredentialsRejectedError, BackendRefusedError) as exc:
                # The code is spent or wrong: a new one must come through the card.
                (settings.device.state_dir / PENDING_CODE_FILE).unlink(missing_ok=True)
                raise FirstBootFailed(
                    ErrorCode.ENROLLMENT_CODE_REFUSED, f"enrollment code refused: {exc}"
                ) from exc
            except BackendError as exc:
                raise FirstBootFailed(ErrorCode.HTTP_FAILED, str(exc)) from exc

    async def _set_clock_from_backend(self, url: str, timeout_s: float) -> None:
        """Step a clock that is far off and not synchronised to the backend's `Date`."""
        if self._ntp_synchronized():
            return
        try:
            async with httpx.AsyncClient(timeout=timeout_s) as http:
                response = await http.get(url.rstrip("/") + "/v1/device")
        except httpx.HTTPError as exc:
            raise BackendUnreachableError(f"{url}: {exc!r}") from exc
        date = response.headers.get("Date")
        if not date:
            return
        backend_time = parsedate_to_datetime(date).timestamp() + 0.5
        offset = backend_time - self._wall_clock()
        if abs(offset) >= CLOCK_STEP_S:
            logger.warning(
                "first boot: clock %.0f s off the backend's and not synchronised: stepped",
                offset,
                extra={"CLOCK_OFFSET_S": f"{offset:.1f}"},
            )
            self._step_clock(backend_time)


def _give_to_device_user(state_dir: Path) -> None:
    """Enrollment ran as root: the key and enrollment become the daemon's user's."""
    try:
        user = pwd.getpwnam(DEVICE_USER)
    except KeyError:
        return  # not an installed device (tests, a developer's machine)
    if os.geteuid() != 0:
        return
    for path in [state_dir, *state_dir.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)


def run_firstboot(card: Path, settings_path: Path, **kwargs: Any) -> int:
    """`appliance firstboot`: one attempt; a failure shows its code until SIGTERM."""
    import signal

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await FirstBoot(card, settings_path, **kwargs).run(stop)

    return asyncio.run(main())
