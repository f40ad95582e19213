"""The media kind is enforced on the real stack: a device's video track that declares itself a
microphone gets the device removed and flagged; its real microphone audio does not."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pytest
from livekit import api, rtc

from appliance.provisioning_client.client import CallGrant, ProvisioningClient
from appliance.provisioning_client.enrollment import Enrollment
from appliance.provisioning_client.keys import DeviceKey
from demo.stack import LocalStack
from provisioning.models import Device, FlagReason

pytestmark = pytest.mark.e2e

WIDTH, HEIGHT, FPS = 640, 480, 30
RATE = 48000
# Removal takes a webhook and three room-service requests; slack for a busy 2-core machine.
ENFORCE_TIMEOUT_S = 15.0
# Frames an observer may see before the track is gone: at 30 fps, about 2 s of video.
MAX_LEAKED_FRAMES = 60


async def device_grant(stack: LocalStack, name: str) -> tuple[str, CallGrant]:
    """Enroll a device through the stack and get a real call token for it from the backend."""
    settings = await asyncio.wait_for(stack.enroll(stack.write_device(name, None)), 10)
    state_dir = settings.device.state_dir
    device_id = Enrollment.load(state_dir).device_id
    key = DeviceKey.load_or_create(state_dir)
    async with ProvisioningClient(settings.backend.url, key, device_id=device_id) as client:
        grant = await asyncio.wait_for(client.create_call("button"), 10)
    return device_id, grant


@dataclass
class Joined:
    """A participant connected with the rtc SDK, and how it was disconnected."""

    room: rtc.Room
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    reasons: list[rtc.DisconnectReason.ValueType] = field(default_factory=list)

    def on_disconnected(self, reason: rtc.DisconnectReason.ValueType) -> None:
        self.reasons.append(reason)
        self.disconnected.set()


@asynccontextmanager
async def joined(url: str, token: str) -> AsyncIterator[Joined]:
    """Connect with `token`; leave on exit unless the server already removed us."""
    participant = Joined(rtc.Room())
    participant.room.on("disconnected", participant.on_disconnected)
    await asyncio.wait_for(participant.room.connect(url, token), 15)
    try:
        yield participant
    finally:
        await asyncio.wait_for(participant.room.disconnect(), 10)


@asynccontextmanager
async def feeding(
    name: str, feed: Callable[[], Awaitable[None]], period_s: float
) -> AsyncIterator[None]:
    """Await `feed` every `period_s` in a named task, stopped and awaited on exit."""
    stop = asyncio.Event()

    async def run() -> None:
        while not stop.is_set():
            await feed()
            await asyncio.sleep(period_s)

    task = asyncio.create_task(run(), name=name)
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await task


class FrameCounter:
    """Subscribes to every video track in the room and counts the frames that arrive."""

    def __init__(self, room: rtc.Room) -> None:
        self.frames = 0
        self._tasks: set[asyncio.Task[None]] = set()
        room.on("track_subscribed", self._on_track_subscribed)

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if track.kind == rtc.TrackKind.KIND_VIDEO:
            task = asyncio.create_task(self._count(rtc.VideoStream(track)), name="count-frames")
            self._tasks.add(task)

    async def _count(self, stream: rtc.VideoStream) -> None:
        try:
            async for _ in stream:
                self.frames += 1
        finally:
            await stream.aclose()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                async with asyncio.timeout(5):
                    await task


async def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


async def device_record(stack: LocalStack, device_id: str) -> Device:
    devices = await asyncio.wait_for(stack.backend.core.list_devices(), 5)
    return next(d for d in devices if d.device_id == device_id)


async def participant_identities(stack: LocalStack, room: str) -> list[str]:
    """Who LiveKit's room service says is in `room` (nobody once the room is deleted)."""
    async with api.LiveKitAPI(
        stack.livekit.http_url, stack.livekit.api_key, stack.livekit.api_secret
    ) as lkapi:
        try:
            listing = await asyncio.wait_for(
                lkapi.room.list_participants(api.ListParticipantsRequest(room=room)), 5
            )
        except api.TwirpError as exc:
            if exc.code == api.TwirpErrorCode.NOT_FOUND:
                return []
            raise
    return [p.identity for p in listing.participants]


def observer_token(stack: LocalStack, room: str) -> str:
    grants = api.VideoGrants(room_join=True, room=room, can_subscribe=True, can_publish=False)
    return (
        api.AccessToken(stack.livekit.api_key, stack.livekit.api_secret)
        .with_identity("observer")
        .with_ttl(timedelta(minutes=5))
        .with_grants(grants)
        .to_jwt()
    )


async def track_events(stack: LocalStack, room: str) -> list[str]:
    events = await asyncio.wait_for(stack.backend.core.list_livekit_events(room), 5)
    return [e.event for e in events]


async def test_video_declared_as_microphone_gets_the_device_removed_and_flagged(
    stack: LocalStack,
) -> None:
    device_id, grant = await device_grant(stack, "kiosk-video")
    assert grant.server_url == stack.livekit.url
    async with joined(grant.server_url, grant.token) as device:
        # In a call, as the device would be: the agent has joined.
        agent = await stack.agent.next_session(timeout=20)
        async with joined(grant.server_url, observer_token(stack, grant.room)) as observer:
            counter = FrameCounter(observer.room)
            source = rtc.VideoSource(WIDTH, HEIGHT)
            frame = rtc.VideoFrame(
                WIDTH, HEIGHT, rtc.VideoBufferType.RGBA, bytes(WIDTH * HEIGHT * 4)
            )
            track = rtc.LocalVideoTrack.create_video_track("not-a-microphone", source)
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)

            async def feed() -> None:
                source.capture_frame(frame)

            async with feeding("video-frames", feed, 1 / FPS):
                published_at = time.monotonic()
                # The server accepts it: the token's source list is all it checks.
                await asyncio.wait_for(
                    device.room.local_participant.publish_track(track, options), 10
                )
                await wait_for(
                    device.disconnected.is_set, ENFORCE_TIMEOUT_S, "the device is removed"
                )
                removed_after_s = time.monotonic() - published_at
                await asyncio.sleep(1.0)  # anything still in flight reaches the observer
            await counter.aclose()
        # The room is deleted: the call is over for the agent too.
        await asyncio.wait_for(agent.ended.wait(), 10)

    assert device.reasons[0] in (
        rtc.DisconnectReason.PARTICIPANT_REMOVED,
        rtc.DisconnectReason.ROOM_DELETED,
    ), rtc.DisconnectReason.Name(device.reasons[0])
    record = await device_record(stack, device_id)
    assert record.flag_reason is FlagReason.NON_AUDIO_TRACK
    assert record.flagged_at is not None
    assert f"device-{device_id}" not in await participant_identities(stack, grant.room)
    assert "track_published" in await track_events(stack, grant.room)
    assert counter.frames <= MAX_LEAKED_FRAMES, (counter.frames, removed_after_s)
    print(f"removed after {removed_after_s:.2f} s; observer saw {counter.frames} frames")


async def test_the_devices_microphone_audio_is_not_removed(stack: LocalStack) -> None:
    device_id, grant = await device_grant(stack, "kiosk-audio")
    async with joined(grant.server_url, grant.token) as device:
        await stack.agent.next_session(timeout=20)
        source = rtc.AudioSource(RATE, 1)
        tone = (np.sin(2 * np.pi * 440 * np.arange(RATE // 100) / RATE) * 3000).astype(np.int16)
        frame = rtc.AudioFrame(tone.tobytes(), RATE, 1, RATE // 100)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)

        async def feed() -> None:
            async with asyncio.timeout(5):
                await source.capture_frame(frame)

        async with feeding("audio-frames", feed, 0.005):
            await asyncio.wait_for(device.room.local_participant.publish_track(track, options), 10)
            # The backend has seen the track_published webhook, and acted (or not) on it.
            seen: list[str] = []

            async def poll() -> bool:
                seen[:] = await track_events(stack, grant.room)
                return "track_published" in seen

            async with asyncio.timeout(ENFORCE_TIMEOUT_S):
                while not await poll():
                    await asyncio.sleep(0.1)
            await asyncio.sleep(2.0)
            assert not device.disconnected.is_set(), device.reasons
            assert f"device-{device_id}" in await participant_identities(stack, grant.room)
    record = await device_record(stack, device_id)
    assert record.flagged_at is None and record.flag_reason is None
