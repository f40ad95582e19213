"""First boot from kiosk.txt against a real backend: enrolls, takes the code off the card,
shows each failure's code, and retries after the file is fixed."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from appliance.provisioning_client import Enrollment
from appliance.service.firstboot import (
    PENDING_CODE_FILE,
    FirstBoot,
    read_card,
    set_toml_value,
)
from appliance.settings import load_settings
from demo.livekit_server import LOOPBACK, free_port
from tests.appliance.service.conftest import BackendFactory

pytestmark = pytest.mark.integration

SETTINGS = """[device]
name = "kiosk"
state_dir = "state"   # the device's own

[backend]
url = "https://provisioning.example.org"
timeout_s = 2

[board]
profile = "simulated"

[simulated]
speaker_wav = "speaker.wav"
"""


class Device:
    """A device's settings, state and card in tmp_path, with systemd calls recorded."""

    def __init__(self, tmp_path: Path) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.settings = tmp_path / "appliance.toml"
        self.settings.write_text(SETTINGS)
        self.card = tmp_path / "kiosk.txt"
        self.state = tmp_path / "state"
        self.wpa = tmp_path / "wpa_supplicant-wlan0.conf"
        self.systemctl: list[tuple[str, ...]] = []
        self.clock_steps: list[float] = []

    def write_card(self, **values: str) -> None:
        lines = ["# kiosk.txt"] + [f'{k} = "{v}"' for k, v in values.items()]
        self.card.write_text("\n".join(lines) + "\n")

    async def boot(
        self, *, stop_after_s: float = 1.0, synced: bool = True, clock_off_s: float = 0.0
    ) -> tuple[int, FirstBoot]:
        first = FirstBoot(
            self.card,
            self.settings,
            systemctl=lambda *a: self.systemctl.append(a),
            ntp_synchronized=lambda: synced,
            step_clock=self.clock_steps.append,
            wpa_conf=self.wpa,
            retry_delays_s=(0.05,),
            wall_clock=lambda: time.time() + clock_off_s,
        )
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(stop_after_s, stop.set)
        async with asyncio.timeout(30):
            return await first.run(stop), first


async def test_enrolls_takes_the_code_off_the_card_and_starts_the_daemon(
    tmp_path: Path, make_backend: BackendFactory
) -> None:
    backend = await make_backend()
    code = await backend.core.create_enrollment_code(ttl_s=600)
    device = Device(tmp_path)
    device.write_card(
        backend_url=backend.url,
        enrollment_code=code,
        board="simulated",
        name="lobby",
        wake_word="off",
        wifi_ssid="kiosk-net",
        wifi_psk="correct horse battery",
    )
    rc, first = await device.boot(synced=False)
    assert rc == 0
    card = device.card.read_bytes()
    assert code.encode() not in card and b"correct horse" not in card
    assert b"# first boot: enrolled as d-" in card
    assert not (device.state / PENDING_CODE_FILE).exists()
    enrollment = Enrollment.load(device.state)
    (listed,) = await backend.core.list_devices()
    assert listed.device_id == enrollment.device_id
    settings = load_settings(device.settings)
    assert settings.backend.url == backend.url
    assert settings.device.name == "lobby" and settings.wake.engine == "off"
    assert "# the device's own" in device.settings.read_text()  # comments kept
    assert ("start", "--no-block", "kiosk-appliance.service") in device.systemctl
    assert 'psk="correct horse battery"' in device.wpa.read_text()
    assert device.wpa.stat().st_mode & 0o077 == 0
    assert device.clock_steps == []  # the clock was right
    assert first.led.shown[-1] == "steady dim"
    # Booting again with the scrubbed card: nothing to do, the daemon starts by itself.
    rc, _ = await device.boot()
    assert rc == 0 and len(await backend.core.list_devices()) == 1


async def test_a_wrong_code_blinks_8_and_leaves_no_code_anywhere(
    tmp_path: Path, make_backend: BackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await make_backend()
    device = Device(tmp_path)
    device.write_card(backend_url=backend.url, enrollment_code="ABCD-EFGH-JKMN-PQRS")
    with caplog.at_level(logging.ERROR):
        rc, first = await device.boot(stop_after_s=0.5)
    assert rc == 1
    assert first.led.shown[-1] == "8 blinks, pause"
    assert [r.ERROR_CODE for r in caplog.records if hasattr(r, "ERROR_CODE")] == ["E08"]
    text = device.card.read_text()
    assert "ABCD-EFGH-JKMN-PQRS" not in text and "# first boot: E08" in text
    assert not (device.state / PENDING_CODE_FILE).exists()
    assert device.systemctl == []


async def test_an_unreachable_backend_blinks_3_then_fixing_the_file_retries(
    tmp_path: Path, make_backend: BackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await make_backend()
    code = await backend.core.create_enrollment_code(ttl_s=600)
    device = Device(tmp_path)
    device.write_card(backend_url=f"http://{LOOPBACK}:{free_port()}", enrollment_code=code)
    with caplog.at_level(logging.ERROR):
        rc, first = await device.boot(stop_after_s=0.5)
    assert rc == 1 and first.led.shown[-1] == "3 blinks, pause"
    assert [r.ERROR_CODE for r in caplog.records if hasattr(r, "ERROR_CODE")] == ["E03"]
    assert code not in device.card.read_text()  # off the card, waiting in the state directory
    assert (device.state / PENDING_CODE_FILE).stat().st_mode & 0o077 == 0
    # The technician fixes the URL (no code on the card any more) and reboots.
    text = device.card.read_text().replace(read_card(device.card).backend_url, backend.url)
    device.card.write_text(text)
    rc, _ = await device.boot()
    assert rc == 0 and Enrollment.load(device.state).backend_url == backend.url


async def test_a_clock_far_off_is_stepped_to_the_backends(
    tmp_path: Path, make_backend: BackendFactory
) -> None:
    backend = await make_backend()
    code = await backend.core.create_enrollment_code(ttl_s=600)
    device = Device(tmp_path)
    device.write_card(backend_url=backend.url, enrollment_code=code)
    rc, _ = await device.boot(synced=False, clock_off_s=-3600)  # an hour behind, no NTP
    assert rc == 0
    (stepped,) = device.clock_steps
    assert abs(stepped - time.time()) < 3
    # Synchronised clocks are left alone, however far off they look.
    other = Device(tmp_path / "other")
    other.write_card(backend_url=backend.url, enrollment_code="ABCD-EFGH-JKMN-PQRS")
    await other.boot(stop_after_s=0.2, synced=True, clock_off_s=-3600)
    assert other.clock_steps == []


async def test_a_broken_card_file_blinks_once_and_loses_its_secrets(tmp_path: Path) -> None:
    device = Device(tmp_path)
    device.card.write_text('enrollment_code = "ABCD-EFGH-JKMN-PQRS"\nbackend_url = nope\n')
    rc, first = await device.boot(stop_after_s=0.2)
    assert rc == 1 and first.led.shown[-1] == "1 blinks, pause"
    assert "ABCD-EFGH-JKMN-PQRS" not in device.card.read_text()


def test_set_toml_value_replaces_or_adds() -> None:
    text = '[backend]\nurl = "a"  # x\n\n[board]\nprofile = "simulated"\n'
    out = set_toml_value(set_toml_value(text, "backend", "url", "b"), "wake", "engine", "off")
    assert 'url = "b"' in out and '[wake]\nengine = "off"' in out
    assert set_toml_value(out, "board", "profile", "respeaker-2mic").count("profile") == 1
