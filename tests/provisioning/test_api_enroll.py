"""Enrollment over real HTTP and a real SQLite database (docs/api.md `POST /v1/enroll`)."""

from __future__ import annotations

import pytest

from provisioning.http import BackendServer
from provisioning.models import DeviceStatus

from .conftest import (
    Api,
    FakeClock,
    TestDevice,
    assert_refused,
)

pytestmark = pytest.mark.integration


async def test_enroll_returns_device_id_derived_from_key(server: BackendServer, api: Api) -> None:
    device = TestDevice()
    code = await server.core.create_enrollment_code(label="lobby")
    response = await api.enroll(device, code, name="Lobby kiosk")
    assert response.status_code == 201, response.text
    assert response.json() == {
        "device_id": device.device_id,
        "identity": f"device-{device.device_id}",
        "status": "approved",
    }
    [stored] = await server.core.list_devices()
    assert stored.device_id == device.device_id
    assert stored.public_key == device.public_raw
    assert stored.name == "Lobby kiosk"
    assert stored.status is DeviceStatus.APPROVED


async def test_enroll_code_is_case_and_dash_insensitive(server: BackendServer, api: Api) -> None:
    code = await server.core.create_enrollment_code()
    response = await api.enroll(TestDevice(), code.replace("-", "").lower())
    assert response.status_code == 201, response.text


async def test_used_enrollment_code_is_refused(server: BackendServer, api: Api) -> None:
    code = await server.core.create_enrollment_code()
    first = TestDevice()
    assert (await api.enroll(first, code)).status_code == 201
    assert_refused(await api.enroll(TestDevice(), code), 403, "invalid_enrollment_code")
    assert [d.device_id for d in await server.core.list_devices()] == [first.device_id]


async def test_expired_enrollment_code_is_refused(
    server: BackendServer, api: Api, clock: FakeClock
) -> None:
    code = await server.core.create_enrollment_code(ttl_s=120)
    clock.advance(121)
    assert_refused(await api.enroll(TestDevice(), code), 403, "invalid_enrollment_code")
    assert await server.core.list_devices() == []


async def test_enrollment_code_works_until_it_expires(
    server: BackendServer, api: Api, clock: FakeClock
) -> None:
    code = await server.core.create_enrollment_code(ttl_s=120)
    clock.advance(119)
    assert (await api.enroll(TestDevice(), code)).status_code == 201


async def test_unknown_enrollment_code_is_refused(server: BackendServer, api: Api) -> None:
    await server.core.create_enrollment_code()
    assert_refused(
        await api.enroll(TestDevice(), "AAAA-BBBB-CCCC-DDDD"), 403, "invalid_enrollment_code"
    )
    assert await server.core.list_devices() == []


async def test_enroll_signed_by_another_key_is_refused_and_keeps_code(
    server: BackendServer, api: Api
) -> None:
    device = TestDevice()
    code = await server.core.create_enrollment_code()
    payload = {"code": code, "public_key": device.public_key}
    response = await api.send(
        "POST", "/v1/enroll", device, payload, device_id=None, signer=TestDevice().key
    )
    assert_refused(response, 401, "bad_signature")
    assert await server.core.list_devices() == []
    assert (await api.enroll(device, code)).status_code == 201


async def test_enroll_same_key_twice_is_already_enrolled(
    server: BackendServer, api: Api, enrolled: TestDevice
) -> None:
    code = await server.core.create_enrollment_code()
    assert_refused(await api.enroll(enrolled, code), 409, "already_enrolled")
    # The code was not spent on the refused attempt.
    assert (await api.enroll(TestDevice(), code)).status_code == 201


@pytest.mark.parametrize(
    ("payload", "raw"),
    [
        (None, b"{not json"),
        (None, b"[1, 2]"),
        ({"public_key": "x"}, None),
        ({"code": "AAAA", "public_key": "not-a-key"}, None),
        ({"code": 1234, "public_key": "x"}, None),
    ],
)
async def test_malformed_enroll_is_bad_request(
    server: BackendServer, api: Api, payload: object, raw: bytes | None
) -> None:
    response = await api.send("POST", "/v1/enroll", TestDevice(), payload, raw=raw, device_id=None)
    assert_refused(response, 400, "bad_request")
    assert await server.core.list_devices() == []


async def test_enroll_name_with_control_characters_is_refused(
    server: BackendServer, api: Api
) -> None:
    code = await server.core.create_enrollment_code(label="lobby")
    response = await api.enroll(TestDevice(), code, name="lobby\x1b[2J")
    assert_refused(response, 400, "bad_request")
    assert await server.core.list_devices() == []
