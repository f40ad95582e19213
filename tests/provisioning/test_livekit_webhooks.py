"""LiveKit's webhooks over real HTTP, on SQLite and PostgreSQL, with a recording room service."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest
from google.protobuf.json_format import MessageToJson
from livekit.api import AccessToken, WebhookEvent
from livekit.protocol.models import ParticipantInfo, Room, TrackInfo, TrackSource, TrackType

from provisioning.errors import LiveKitUnavailableError
from provisioning.http import BackendServer
from provisioning.livekit_events import WEBHOOK_PATH, forbidden_track
from provisioning.models import FlagReason
from provisioning.rooms import LiveKitRoomService, RecordingRoomService, api_url

from .conftest import API_KEY, API_SECRET, TIMEOUT_S, Api, TestDevice, assert_refused

pytestmark = pytest.mark.integration

# As LiveKit 1.13.5 reports them in track_published.
VIDEO_AS_MICROPHONE = TrackInfo(
    sid="TR_video",
    type=TrackType.VIDEO,
    source=TrackSource.MICROPHONE,
    mime_type="video/VP8",
    width=640,
    height=480,
)
MICROPHONE = TrackInfo(
    sid="TR_audio", type=TrackType.AUDIO, source=TrackSource.MICROPHONE, mime_type="audio/red"
)


def make_event(
    kind: str,
    *,
    room: str,
    identity: str = "",
    track: TrackInfo | None = None,
    event_id: str | None = None,
) -> WebhookEvent:
    event = WebhookEvent(
        event=kind,
        id=event_id or "EV_" + secrets.token_hex(6),
        created_at=1_800_000_000,
        room=Room(name=room, sid="RM_test"),
    )
    if identity:
        event.participant.CopyFrom(ParticipantInfo(identity=identity, sid="PA_test"))
    if track is not None:
        event.track.CopyFrom(track)
    return event


def sign(
    body: bytes,
    *,
    api_key: str = API_KEY,
    api_secret: str = API_SECRET,
    ttl: timedelta = timedelta(minutes=5),
) -> str:
    """The Authorization header as LiveKit sends it: a bare JWT with the body's SHA-256."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return AccessToken(api_key, api_secret).with_ttl(ttl).with_sha256(digest).to_jwt()


async def post(
    api: Api, body: bytes, authorization: str | None, content_type: str = "application/webhook+json"
) -> httpx.Response:
    headers = {"Content-Type": content_type}
    if authorization is not None:
        headers["Authorization"] = authorization
    async with asyncio.timeout(TIMEOUT_S):
        return await api.client.post(WEBHOOK_PATH, content=body, headers=headers)


async def deliver(api: Api, event: WebhookEvent) -> httpx.Response:
    body = MessageToJson(event).encode()
    return await post(api, body, sign(body))


async def start_call(api: Api, device: TestDevice) -> str:
    response = await api.start_call(device)
    assert response.status_code == 201, response.text
    room: str = response.json()["room"]
    return room


def identity(device: TestDevice) -> str:
    return f"device-{device.device_id}"


# Signatures


async def test_unsigned_webhook_is_refused(server: BackendServer, api: Api) -> None:
    body = MessageToJson(make_event("room_started", room="call-c-1")).encode()
    assert_refused(await post(api, body, None), 401, "missing_signature")
    assert await server.core.list_livekit_events() == []


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda body: sign(body, api_secret="another-secret-" + "x" * 24), id="secret"),
        pytest.param(lambda body: sign(body, api_key="another-key"), id="key"),
        pytest.param(lambda body: sign(body + b" "), id="tampered-body"),
        pytest.param(lambda body: sign(body, ttl=timedelta(minutes=-5)), id="expired"),
        pytest.param(lambda body: "Bearer " + sign(body), id="bearer-prefix"),
        pytest.param(lambda body: "not-a-jwt", id="garbage"),
    ],
)
async def test_badly_signed_webhook_is_refused(
    server: BackendServer, api: Api, rooms: RecordingRoomService, forge: Callable[[bytes], str]
) -> None:
    device_event = make_event(
        "track_published", room="call-c-1", identity="device-d-1", track=VIDEO_AS_MICROPHONE
    )
    body = MessageToJson(device_event).encode()
    assert_refused(await post(api, body, forge(body)), 401, "bad_signature")
    assert await server.core.list_livekit_events() == []
    assert rooms.calls == []


async def test_refusal_logs_the_reason_never_the_header(
    server: BackendServer, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    body = MessageToJson(make_event("room_started", room="call-c-1")).encode()
    token = sign(body, api_secret="another-secret-" + "x" * 24)
    with caplog.at_level(logging.DEBUG):
        assert_refused(await post(api, body, token), 401, "bad_signature")
    refused = [r for r in caplog.records if r.getMessage() == "webhook refused"]
    assert [getattr(r, "reason", None) for r in refused] == ["bad_token"]
    for record in caplog.records:
        assert token not in repr(vars(record))
        assert token.split(".")[2] not in repr(vars(record))


async def test_body_that_is_not_utf8_is_refused(server: BackendServer, api: Api) -> None:
    body = b'{"event": "room_started", "id": "EV_\xff"}'
    assert_refused(await post(api, body, sign(body)), 401, "bad_signature")


async def test_signed_body_that_is_not_an_event_is_a_bad_request(
    server: BackendServer, api: Api
) -> None:
    for body in (b"[1, 2]", b'{"event": 5}'):
        assert_refused(await post(api, body, sign(body)), 400, "bad_request")
    body = MessageToJson(make_event("room_started", room="call-c-1", event_id="x")).encode()
    no_id = body.replace(b'"id": "x"', b'"id": ""')
    assert_refused(await post(api, no_id, sign(no_id)), 400, "bad_request")
    assert await server.core.list_livekit_events() == []


# Enforcement


async def test_video_as_microphone_from_a_device_removes_it_and_flags_it(
    server: BackendServer, api: Api, enrolled: TestDevice, rooms: RecordingRoomService
) -> None:
    room = await start_call(api, enrolled)
    event = make_event(
        "track_published", room=room, identity=identity(enrolled), track=VIDEO_AS_MICROPHONE
    )
    response = await deliver(api, event)
    assert response.status_code == 200, response.text
    assert response.json() == {"outcome": "enforced"}
    # Rights first, so that the refreshed token is worthless; then out; then the room ends.
    assert rooms.calls == [
        ("revoke_participant", room, identity(enrolled)),
        ("remove_participant", room, identity(enrolled)),
        ("delete_room", room, ""),
    ]
    [device] = await server.core.list_devices()
    assert device.flag_reason is FlagReason.NON_AUDIO_TRACK
    assert device.flagged_at == api.clock.now
    [recorded] = await server.core.list_livekit_events(room)
    assert (recorded.event_id, recorded.event) == (event.id, "track_published")


async def test_the_same_event_twice_has_one_effect(
    server: BackendServer, api: Api, enrolled: TestDevice, rooms: RecordingRoomService
) -> None:
    room = await start_call(api, enrolled)
    event = make_event(
        "track_published", room=room, identity=identity(enrolled), track=VIDEO_AS_MICROPHONE
    )
    first = await deliver(api, event)
    api.clock.advance(30)
    second = await deliver(api, event)  # a fresh signature, the same event id
    assert (first.json(), second.json()) == ({"outcome": "enforced"}, {"outcome": "duplicate"})
    assert len(rooms.calls) == 3
    assert len(await server.core.list_livekit_events()) == 1
    [device] = await server.core.list_devices()
    assert device.flagged_at == api.clock.now - 30


async def test_concurrent_duplicates_have_one_effect(
    server: BackendServer, api: Api, enrolled: TestDevice, rooms: RecordingRoomService
) -> None:
    room = await start_call(api, enrolled)
    event = make_event(
        "track_published", room=room, identity=identity(enrolled), track=VIDEO_AS_MICROPHONE
    )
    responses = await asyncio.gather(*(deliver(api, event) for _ in range(4)))
    outcomes = sorted(r.json()["outcome"] for r in responses)
    assert outcomes == ["duplicate", "duplicate", "duplicate", "enforced"]
    assert len(rooms.calls) == 3


async def test_a_failed_removal_is_handled_again_when_livekit_retries(
    server: BackendServer, api: Api, enrolled: TestDevice, rooms: RecordingRoomService
) -> None:
    room = await start_call(api, enrolled)
    event = make_event(
        "track_published", room=room, identity=identity(enrolled), track=VIDEO_AS_MICROPHONE
    )
    rooms.failure = LiveKitUnavailableError("LiveKit is down")
    assert_refused(await deliver(api, event), 503, "livekit_unavailable")
    [device] = await server.core.list_devices()
    assert device.flagged_at is None
    assert await server.core.list_livekit_events() == []

    rooms.failure = None
    retried = await deliver(api, event)
    assert retried.json() == {"outcome": "enforced"}
    [device] = await server.core.list_devices()
    assert device.flag_reason is FlagReason.NON_AUDIO_TRACK


async def test_the_devices_microphone_audio_is_left_alone(
    server: BackendServer, api: Api, enrolled: TestDevice, rooms: RecordingRoomService
) -> None:
    room = await start_call(api, enrolled)
    event = make_event("track_published", room=room, identity=identity(enrolled), track=MICROPHONE)
    response = await deliver(api, event)
    assert response.json() == {"outcome": "recorded"}
    assert rooms.calls == []
    [device] = await server.core.list_devices()
    assert device.flagged_at is None


async def test_audio_from_another_source_is_enforced_too(
    server: BackendServer, api: Api, enrolled: TestDevice, rooms: RecordingRoomService
) -> None:
    room = await start_call(api, enrolled)
    screen_audio = TrackInfo(
        sid="TR_screen", type=TrackType.AUDIO, source=TrackSource.SCREEN_SHARE_AUDIO
    )
    event = make_event(
        "track_published", room=room, identity=identity(enrolled), track=screen_audio
    )
    assert (await deliver(api, event)).json() == {"outcome": "enforced"}
    [device] = await server.core.list_devices()
    assert device.flag_reason is FlagReason.NON_MICROPHONE_SOURCE


async def test_other_participants_and_rooms_are_ignored_safely(
    server: BackendServer, api: Api, enrolled: TestDevice, rooms: RecordingRoomService
) -> None:
    room = await start_call(api, enrolled)
    other = TestDevice()
    cases = [
        # The agent (or anyone who is not a device) may publish what its token allows.
        ("agent-AJ_1", room),
        # A device identity in a room the backend never made, or in another device's call.
        (identity(enrolled), "call-c-0000000000000000"),
        (identity(enrolled), "lobby"),
        (identity(enrolled), ""),
        (identity(other), room),
        ("device-", room),
    ]
    for who, where in cases:
        event = make_event("track_published", room=where, identity=who, track=VIDEO_AS_MICROPHONE)
        response = await deliver(api, event)
        assert response.json() == {"outcome": "ignored"}, (who, where)
    assert rooms.calls == []
    [device] = await server.core.list_devices()
    assert device.flagged_at is None
    assert len(await server.core.list_livekit_events()) == len(cases)


async def test_call_lifecycle_events_are_recorded(
    server: BackendServer, api: Api, enrolled: TestDevice, rooms: RecordingRoomService
) -> None:
    room = await start_call(api, enrolled)
    kinds = [
        "room_started",
        "participant_joined",
        "participant_left",
        "room_finished",
        "egress_ended",
    ]
    for kind in kinds:
        api.clock.advance(1)
        response = await deliver(api, make_event(kind, room=room, identity=identity(enrolled)))
        assert response.json() == {"outcome": "recorded"}, kind
    assert [e.event for e in await server.core.list_livekit_events(room)] == kinds
    assert rooms.calls == []


# The real room service client, without a server


@pytest.mark.unit
def test_api_url_is_http_for_a_signalling_url() -> None:
    assert api_url("ws://127.0.0.1:7880") == "http://127.0.0.1:7880"
    assert api_url("wss://lk.example.org/base") == "https://lk.example.org/base"
    assert api_url("https://lk.example.org") == "https://lk.example.org"


@pytest.mark.unit
def test_only_microphone_audio_is_allowed() -> None:
    assert forbidden_track(MICROPHONE) is None
    assert forbidden_track(VIDEO_AS_MICROPHONE) is FlagReason.NON_AUDIO_TRACK
    camera = TrackInfo(type=TrackType.VIDEO, source=TrackSource.CAMERA)
    assert forbidden_track(camera) is FlagReason.NON_AUDIO_TRACK
    unknown = TrackInfo(type=TrackType.AUDIO, source=TrackSource.UNKNOWN)
    assert forbidden_track(unknown) is FlagReason.NON_MICROPHONE_SOURCE
    # The MIME type is the codec LiveKit received, whatever type the client declared.
    for mime_type, verdict in [
        ("audio/red", None),
        ("audio/opus", None),
        ("Audio/Opus", None),
        ("video/VP8", FlagReason.NON_AUDIO_TRACK),
        ("application/octet-stream", FlagReason.NON_AUDIO_TRACK),
    ]:
        declared_audio = TrackInfo(
            type=TrackType.AUDIO, source=TrackSource.MICROPHONE, mime_type=mime_type
        )
        assert forbidden_track(declared_audio) is verdict, mime_type


async def test_unreachable_livekit_is_unavailable_not_a_crash() -> None:
    from demo.livekit_server import free_port

    port = free_port()  # nothing listens there
    async with LiveKitRoomService(
        f"ws://127.0.0.1:{port}", API_KEY, API_SECRET, timeout_s=2.0
    ) as service:
        for attempt in (
            service.revoke_participant("call-c-1", "device-d-1"),
            service.remove_participant("call-c-1", "device-d-1"),
            service.delete_room("call-c-1"),
        ):
            with pytest.raises(LiveKitUnavailableError, match="ClientConnectorError"):
                async with asyncio.timeout(TIMEOUT_S):
                    await attempt
