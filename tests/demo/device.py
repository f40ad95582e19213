"""A plain rtc participant playing the kiosk's role in e2e tests (no appliance code)."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from livekit import api, rtc

from demo.agent_session import AGENT_STATE_ATTRIBUTE, TRANSCRIPTION_TOPIC
from demo.tts import SAMPLE_RATE

FRAME = SAMPLE_RATE // 100


def mint_device_token(
    server_key: str,
    server_secret: str,
    *,
    room: str,
    identity: str = "device-test",
    agent_name: str = "demo-agent",
) -> str:
    """A join token for a device, dispatching `agent_name` when the join creates the room."""
    return (
        api.AccessToken(server_key, server_secret)
        .with_identity(identity)
        .with_ttl(datetime.timedelta(minutes=5))
        .with_grants(api.VideoGrants(room_join=True, room=room, can_publish_sources=["microphone"]))
        .with_room_config(
            api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=agent_name)])
        )
        .to_jwt()
    )


@dataclass
class Transcript:
    text: str
    sender: str
    attributes: dict[str, str]


class DeviceParticipant:
    """Joins a room, records what the agent says and does, and can speak into its mic."""

    def __init__(self) -> None:
        self.room = rtc.Room()
        self.agent_audio: list[npt.NDArray[np.int16]] = []
        self.transcripts: list[Transcript] = []
        self.agent_states: list[str] = []
        self.agent_identity: str | None = None
        self.agent_joined_at: float | None = None
        self.agent_left = asyncio.Event()
        self.changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._mic: rtc.AudioSource | None = None
        self._mic_subscribed = asyncio.Event()
        self.room.on("participant_connected", self._on_participant_connected)
        self.room.on("participant_disconnected", self._on_participant_disconnected)
        self.room.on("participant_attributes_changed", self._on_attributes_changed)
        self.room.on("track_subscribed", self._on_track_subscribed)
        self.room.on("local_track_subscribed", lambda _track: self._mic_subscribed.set())
        self.room.register_text_stream_handler(TRANSCRIPTION_TOPIC, self._on_text_stream)

    async def connect(self, url: str, token: str) -> None:
        await self.room.connect(url, token)
        for participant in self.room.remote_participants.values():
            self._on_participant_connected(participant)

    def agent_pcm(self) -> npt.NDArray[np.int16]:
        if not self.agent_audio:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self.agent_audio)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait (bounded by the caller's timeout) until `condition()` is true."""
        while not condition():
            self.changed.clear()
            await self.changed.wait()

    async def publish_mic(self) -> None:
        self._mic = rtc.AudioSource(SAMPLE_RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("mic", self._mic)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, options)
        await self._mic_subscribed.wait()

    async def speak(self, pcm: npt.NDArray[np.int16]) -> None:
        """Play `pcm` into the mic in real time (10 ms frames paced by capture_frame)."""
        assert self._mic is not None
        padded = np.concatenate([pcm, np.zeros((-pcm.size) % FRAME, np.int16)])
        for start in range(0, padded.size, FRAME):
            chunk = padded[start : start + FRAME]
            await self._mic.capture_frame(rtc.AudioFrame(chunk.tobytes(), SAMPLE_RATE, 1, FRAME))
        await self._mic.wait_for_playout()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.room.disconnect()
        if self._mic is not None:
            await self._mic.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            self.agent_identity = participant.identity
            self.agent_joined_at = time.monotonic()
            state = participant.attributes.get(AGENT_STATE_ATTRIBUTE)
            if state:
                self.agent_states.append(state)
            self.changed.set()

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity == self.agent_identity:
            self.agent_left.set()
            self.changed.set()

    def _on_attributes_changed(self, changed: dict[str, str], participant: rtc.Participant) -> None:
        if participant.identity == self.agent_identity and AGENT_STATE_ATTRIBUTE in changed:
            self.agent_states.append(changed[AGENT_STATE_ATTRIBUTE])
            self.changed.set()

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            # Create the stream now, inside the callback, so no early frame is lost.
            stream = rtc.AudioStream.from_track(track=track, sample_rate=SAMPLE_RATE)
            self._spawn(self._record(stream), f"device-listen-{publication.sid}")

    async def _record(self, stream: rtc.AudioStream) -> None:
        try:
            async for event in stream:
                self.agent_audio.append(np.frombuffer(event.frame.data, np.int16).copy())
        finally:
            await stream.aclose()

    def _on_text_stream(self, reader: rtc.TextStreamReader, sender: str) -> None:
        self._spawn(self._read_text(reader, sender), f"device-text-{reader.info.stream_id}")

    async def _read_text(self, reader: rtc.TextStreamReader, sender: str) -> None:
        text = await reader.read_all()
        self.transcripts.append(Transcript(text, sender, dict(reader.info.attributes or {})))
        self.changed.set()
