"""LiveKit's room service as the core sees it: take a participant's rights away, remove it, end
the room, list the rooms that exist. `LiveKitRoomService` is the real one;
`RecordingRoomService` is the shipped fake."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import aiohttp
from livekit.api import LiveKitAPI, TwirpError, TwirpErrorCode
from livekit.protocol.agent_dispatch import CreateAgentDispatchRequest
from livekit.protocol.models import ParticipantInfo, ParticipantPermission
from livekit.protocol.room import (
    DeleteRoomRequest,
    ListParticipantsRequest,
    ListRoomsRequest,
    RoomParticipantIdentity,
    UpdateParticipantRequest,
)

from provisioning.errors import LiveKitUnavailableError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Each request to LiveKit's API is bounded by this: the webhook that asked for it waits.
REQUEST_TIMEOUT_S = 5.0


class RoomService(Protocol):
    """What the core may do to a LiveKit room. A participant or room that is already gone is
    not an error; anything else raises `LiveKitUnavailableError`."""

    async def revoke_participant(self, room: str, identity: str) -> None:
        """Take every right away (publish, subscribe, data): its tracks are unpublished at once
        and the token LiveKit refreshes for it has none of these rights."""
        ...

    async def remove_participant(self, room: str, identity: str) -> None:
        """Disconnect the participant from the room."""
        ...

    async def delete_room(self, room: str) -> None:
        """End the room for everyone in it."""
        ...

    async def ensure_agent(self, room: str, agent_name: str, metadata: str) -> bool:
        """Dispatch the agent into `room` unless an agent is in it (creating the room if it
        is gone); True if a dispatch was created."""
        ...

    async def list_rooms(self, rooms: Iterable[str]) -> set[str]:
        """Which of `rooms` exist on the server now."""
        ...


def api_url(url: str) -> str:
    """The HTTP(S) URL of the server API for a `ws://`/`wss://` signalling URL."""
    if url.startswith("ws://"):
        return "http://" + url.removeprefix("ws://")
    if url.startswith("wss://"):
        return "https://" + url.removeprefix("wss://")
    return url


class LiveKitRoomService:
    """`RoomService` over livekit-api's Twirp client; every request bounded by `timeout_s`.

    Needs a running event loop (it opens an aiohttp session); close it with `aclose()`.
    """

    def __init__(
        self, url: str, api_key: str, api_secret: str, *, timeout_s: float = REQUEST_TIMEOUT_S
    ) -> None:
        self._url = api_url(url)
        self._timeout_s = timeout_s
        # No failover: that is for LiveKit Cloud's regions, and it would multiply the wait.
        self._api = LiveKitAPI(
            self._url,
            api_key,
            api_secret,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            failover=False,
        )

    async def aclose(self) -> None:
        """Close the HTTP session."""
        await self._api.aclose()

    async def __aenter__(self) -> LiveKitRoomService:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def revoke_participant(self, room: str, identity: str) -> None:
        """Set every permission of the participant to false."""
        request = UpdateParticipantRequest(
            room=room,
            identity=identity,
            permission=ParticipantPermission(
                can_publish=False, can_subscribe=False, can_publish_data=False
            ),
        )
        await self._call("update_participant", self._api.room.update_participant(request))

    async def remove_participant(self, room: str, identity: str) -> None:
        """Disconnect the participant from the room."""
        request = RoomParticipantIdentity(room=room, identity=identity)
        await self._call("remove_participant", self._api.room.remove_participant(request))

    async def delete_room(self, room: str) -> None:
        """End the room for everyone in it."""
        await self._call("delete_room", self._api.room.delete_room(DeleteRoomRequest(room=room)))

    async def ensure_agent(self, room: str, agent_name: str, metadata: str) -> bool:
        """Create a dispatch for `agent_name` unless an agent participant is in the room.

        Participants, not dispatches, are what counts: a room that LiveKit made again while
        its agent workers were still reconnecting keeps a dispatch that no worker took.
        """
        participants: list[ParticipantInfo] = []
        async with _translated("list_participants", self._url):
            async with asyncio.timeout(self._timeout_s):
                listing = await self._api.room.list_participants(ListParticipantsRequest(room=room))
                participants = list(listing.participants)
        if any(p.kind == ParticipantInfo.Kind.AGENT for p in participants):
            return False
        request = CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata=metadata)
        await self._call("create_dispatch", self._api.agent_dispatch.create_dispatch(request))
        return True

    async def list_rooms(self, rooms: Iterable[str]) -> set[str]:
        """Which of `rooms` exist now: one `ListRooms` request per 100 names."""
        names = sorted(set(rooms))
        found: set[str] = set()
        for start in range(0, len(names), 100):
            request = ListRoomsRequest(names=names[start : start + 100])
            async with _translated("list_rooms", self._url):
                async with asyncio.timeout(self._timeout_s):
                    listing = await self._api.room.list_rooms(request)
                found.update(room.name for room in listing.rooms)
        return found

    async def _call(self, what: str, request: Awaitable[T]) -> None:
        async with _translated(what, self._url):
            async with asyncio.timeout(self._timeout_s):
                await request


@asynccontextmanager
async def _translated(what: str, url: str) -> AsyncIterator[None]:
    """livekit-api's errors as ours; "not found" means the work is already done."""
    try:
        yield
    except TwirpError as exc:
        if exc.code == TwirpErrorCode.NOT_FOUND:
            logger.debug("LiveKit: already gone", extra={"request": what})
            return
        raise LiveKitUnavailableError(
            f"LiveKit {what} at {url} failed: {exc.code} (HTTP {exc.status})"
        ) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise LiveKitUnavailableError(
            f"LiveKit {what} at {url} failed: {type(exc).__name__}"
        ) from exc


@dataclass
class RecordingRoomService:
    """A `RoomService` that records what it was asked, for tests and dry runs.

    `calls` holds `(method, room, identity)` tuples (identity "" for `delete_room`); set
    `failure` to make every call raise it. `list_rooms` is a read and is not recorded: it
    answers from `live`, or, while `live` is None, takes every room asked about to exist.
    """

    calls: list[tuple[str, str, str]] = field(default_factory=list)
    failure: Exception | None = None
    live: set[str] | None = None

    async def revoke_participant(self, room: str, identity: str) -> None:
        """Record the call."""
        self._record("revoke_participant", room, identity)

    async def remove_participant(self, room: str, identity: str) -> None:
        """Record the call."""
        self._record("remove_participant", room, identity)

    async def delete_room(self, room: str) -> None:
        """Record the call."""
        self._record("delete_room", room, "")

    async def ensure_agent(self, room: str, agent_name: str, metadata: str) -> bool:
        """Record the call; the agent is taken to be there after the first dispatch."""
        dispatched = any(c[:2] == ("ensure_agent", room) for c in self.calls)
        self._record("ensure_agent", room, agent_name)
        return not dispatched

    async def list_rooms(self, rooms: Iterable[str]) -> set[str]:
        """The rooms of `rooms` that are in `live` (all of them while it is None)."""
        if self.failure is not None:
            raise self.failure
        asked = set(rooms)
        return asked if self.live is None else asked & self.live

    def _record(self, method: str, room: str, identity: str) -> None:
        if self.failure is not None:
            raise self.failure
        self.calls.append((method, room, identity))
