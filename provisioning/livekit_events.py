"""LiveKit's webhooks: verified, recorded once per event id, and handled by event type.

LiveKit signs each webhook (an `Authorization` JWT whose `sha256` claim hashes the raw
body) and may send one twice, late, out of order or not at all. An event is recorded
before it is handled, and forgotten again if handling fails, so that LiveKit's retry
of it (it retries a 5xx) is handled rather than skipped as a duplicate.

Participants joining and leaving a call's room, and the room's end, go into the call
ledger, from which the sweeper (`sweeper.py`) closes calls whose devices never reported.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from enum import StrEnum

import jwt
from google.protobuf.json_format import ParseError
from livekit.api import TokenVerifier, WebhookEvent, WebhookReceiver
from livekit.protocol.models import (
    DisconnectReason,
    ParticipantInfo,
    TrackInfo,
    TrackSource,
    TrackType,
)

from provisioning.errors import BadRequestError, BadSignatureError, MissingSignatureError
from provisioning.models import (
    CallRecord,
    DeviceStatus,
    FlagReason,
    LiveKitEventRecord,
    call_id_of_room,
    device_id_of_identity,
)
from provisioning.rooms import RoomService
from provisioning.storage.base import Storage
from provisioning.storage.call_ledger import CallLedger, ParticipantKind, Presence, ledger_of

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/v1/livekit/webhook"
# Long past LiveKit's retries (and its 5-minute signature) and long enough to look back.
EVENT_RETENTION_S = 7 * 24 * 3600
PURGE_INTERVAL_S = 600.0


class LiveKitEvent(StrEnum):
    """The webhook event types of a LiveKit server that the backend knows by name."""

    ROOM_STARTED = "room_started"
    ROOM_FINISHED = "room_finished"
    PARTICIPANT_JOINED = "participant_joined"
    PARTICIPANT_LEFT = "participant_left"
    PARTICIPANT_CONNECTION_ABORTED = "participant_connection_aborted"
    TRACK_PUBLISHED = "track_published"
    TRACK_UNPUBLISHED = "track_unpublished"


class WebhookOutcome(StrEnum):
    """What the backend did with an accepted webhook (the answer's `outcome`)."""

    ENFORCED = "enforced"  # a device broke a rule: removed from its room and flagged
    RECORDED = "recorded"  # recorded; nothing to do
    IGNORED = "ignored"  # recorded; about a room or participant that is not one of ours
    DUPLICATE = "duplicate"  # this event id was already recorded


class WebhookVerifier:
    """Checks a webhook's signature with the LiveKit API key pair; never logs the header."""

    def __init__(self, api_key: str, api_secret: str) -> None:
        self._receiver = WebhookReceiver(TokenVerifier(api_key, api_secret))

    def verify(self, body: bytes, authorization: str | None) -> WebhookEvent:
        """The event in `body`; `MissingSignatureError`/`BadSignatureError` if not LiveKit's."""
        if not authorization:
            _refused("missing_authorization")
            raise MissingSignatureError("webhook has no Authorization header")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            _refused("body_not_utf8")
            raise BadSignatureError("webhook signature does not verify") from exc
        try:
            return self._receiver.receive(text, authorization)
        except ParseError as exc:
            # Only reached once the signature and the body hash have verified.
            raise BadRequestError("webhook body is not a LiveKit event") from exc
        except jwt.ExpiredSignatureError as exc:
            _refused("expired")
            raise BadSignatureError("webhook signature has expired") from exc
        except jwt.PyJWTError as exc:
            _refused("bad_token")
            raise BadSignatureError("webhook signature does not verify") from exc
        except Exception as exc:
            # livekit-api raises a bare Exception for a missing or mismatching body hash.
            _refused("body_mismatch")
            raise BadSignatureError("webhook signature does not verify") from exc


def _refused(reason: str) -> None:
    logger.warning("webhook refused", extra={"reason": reason})


def forbidden_track(track: TrackInfo) -> FlagReason | None:
    """Why a device may not publish `track`, or None for its microphone's audio."""
    # The type is what the client declared; the MIME type is the codec LiveKit received.
    mime_type = track.mime_type.lower()
    if track.type != TrackType.AUDIO or (mime_type and not mime_type.startswith("audio/")):
        return FlagReason.NON_AUDIO_TRACK
    if track.source != TrackSource.MICROPHONE:
        return FlagReason.NON_MICROPHONE_SOURCE
    return None


def _name(enum: type[TrackType] | type[TrackSource] | type[DisconnectReason], value: int) -> str:
    """The enum member's name, or the number for a value newer than our livekit-protocol."""
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


Handler = Callable[[WebhookEvent], Awaitable[WebhookOutcome]]
# Told of each participant let into a call's room: (room, identity). The core's rings use it.
JoinListener = Callable[[str, str], Awaitable[None]]


class LiveKitEvents:
    """Receives LiveKit's webhooks for the core: verify, record once, dispatch by type."""

    def __init__(
        self,
        storage: Storage,
        rooms: RoomService,
        *,
        api_key: str,
        api_secret: str,
        clock: Callable[[], float],
        ledger: CallLedger | None = None,
        on_join: JoinListener | None = None,
    ) -> None:
        self._storage = storage
        self._on_join = on_join
        self._ledger = ledger_of(storage) if ledger is None else ledger
        self._rooms = rooms
        self._clock = clock
        self._verifier = WebhookVerifier(api_key, api_secret)
        self._last_purge = float("-inf")
        # One handler per event type; the others are recorded only.
        self._handlers: dict[str, Handler] = {
            LiveKitEvent.TRACK_PUBLISHED: self._track_published,
            LiveKitEvent.PARTICIPANT_JOINED: self._participant_joined,
            LiveKitEvent.PARTICIPANT_LEFT: self._participant_left,
            LiveKitEvent.ROOM_FINISHED: self._room_finished,
        }

    async def receive(self, body: bytes, authorization: str | None) -> WebhookOutcome:
        """Verify, record and handle one webhook; a duplicate event id is not handled again."""
        event = self._verifier.verify(body, authorization)
        if not event.id:
            raise BadRequestError("webhook event has no id")
        now = self._clock()
        record = LiveKitEventRecord(
            event_id=event.id,
            event=event.event,
            room=event.room.name,
            created_at=float(event.created_at),
            received_at=now,
        )
        context = {"event": event.event, "event_id": event.id, "room": event.room.name}
        if not await self._storage.add_livekit_event(record):
            logger.info("LiveKit event already handled", extra=context)
            return WebhookOutcome.DUPLICATE
        try:
            outcome = await self.handle(event)
        except BaseException:
            await self._storage.forget_livekit_event(event.id)
            raise
        logger.debug("LiveKit event handled", extra={**context, "outcome": outcome.value})
        if now - self._last_purge >= PURGE_INTERVAL_S:
            self._last_purge = now
            await self._storage.purge_livekit_events(now - EVENT_RETENTION_S)
        return outcome

    async def handle(self, event: WebhookEvent) -> WebhookOutcome:
        """Act on one verified event, by its type."""
        handler = self._handlers.get(event.event)
        if handler is None:
            return WebhookOutcome.RECORDED
        return await handler(event)

    async def _track_published(self, event: WebhookEvent) -> WebhookOutcome:
        """A device publishing anything but microphone audio leaves its call and is flagged.

        The token allows the microphone source only, but LiveKit checks the declared source,
        not the media: a video track that declares itself a microphone gets through.
        """
        track = event.track
        track_fields = {
            "track_type": _name(TrackType, track.type),
            "track_source": _name(TrackSource, track.source),
            "mime_type": track.mime_type,
        }
        logger.debug(
            "track published",
            extra={"identity": event.participant.identity, "room": event.room.name, **track_fields},
        )
        device_id = device_id_of_identity(event.participant.identity)
        if device_id is None:
            return WebhookOutcome.IGNORED  # the agent, or someone who is not a device
        reason = forbidden_track(track)
        if reason is None:
            return WebhookOutcome.RECORDED
        room = event.room.name
        call = await self._call_of(room, device_id)
        if call is None:
            logger.warning(
                "forbidden track outside the device's calls: ignored",
                extra={"device_id": device_id, "room": room, "flag_reason": reason.value},
            )
            return WebhookOutcome.IGNORED
        identity = event.participant.identity
        # Rights first: the tracks stop at once and the token LiveKit refreshes for the client
        # has no publish, subscribe or data rights, so coming back with it gains nothing.
        # Then out, and the room ends.
        await self._rooms.revoke_participant(room, identity)
        await self._rooms.remove_participant(room, identity)
        await self._rooms.delete_room(room)
        newly = await self._storage.flag_device(device_id, reason, self._clock())
        logger.warning(
            "forbidden track: device removed from its call and flagged",
            extra={
                "device_id": device_id,
                "call_id": call.call_id,
                "room": room,
                "flag_reason": reason.value,
                "first_flag": newly,
                **track_fields,
            },
        )
        return WebhookOutcome.ENFORCED

    async def _participant_joined(self, event: WebhookEvent) -> WebhookOutcome:
        """A revoked (or deleted) device that joins with a token minted before its revocation
        is put out at once, and its room ended: a stolen token buys a webhook's delay."""
        identity = event.participant.identity
        presence = self._presence(event)
        if presence is not None:
            await self._ledger.record_join(presence)
        device_id = device_id_of_identity(identity)
        if device_id is None:
            await self._joined(event.room.name, identity)  # an operator answering a ring
            return WebhookOutcome.IGNORED
        device = await self._storage.get_device(device_id)
        if device is not None and device.status is DeviceStatus.APPROVED:
            await self._joined(event.room.name, identity)  # the device: its ring starts
            return WebhookOutcome.RECORDED
        room = event.room.name
        await self._rooms.revoke_participant(room, identity)
        await self._rooms.remove_participant(room, identity)
        await self._rooms.delete_room(room)
        logger.warning(
            "revoked device joined a room: removed, room ended",
            extra={"device_id": device_id, "room": room},
        )
        return WebhookOutcome.ENFORCED

    async def _joined(self, room: str, identity: str) -> None:
        if self._on_join is not None and call_id_of_room(room) is not None:
            await self._on_join(room, identity)

    async def _participant_left(self, event: WebhookEvent) -> WebhookOutcome:
        """Into the ledger: who left a call's room, when, and why (LiveKit's reason)."""
        presence = self._presence(event)
        if presence is None:
            return WebhookOutcome.IGNORED
        await self._ledger.record_leave(presence)
        return WebhookOutcome.RECORDED

    async def _room_finished(self, event: WebhookEvent) -> WebhookOutcome:
        """Into the ledger: a call's room ended."""
        if call_id_of_room(event.room.name) is None:
            return WebhookOutcome.IGNORED
        await self._ledger.record_room_finished(event.room.name, self._event_time(event))
        return WebhookOutcome.RECORDED

    def _event_time(self, event: WebhookEvent) -> float:
        """LiveKit's time of the event (whole seconds), or ours if it sent none."""
        return float(event.created_at) if event.created_at > 0 else self._clock()

    def _presence(self, event: WebhookEvent) -> Presence | None:
        """The participant of a join or leave in a call's room, None for any other room."""
        room = event.room.name
        participant = event.participant
        if call_id_of_room(room) is None or not participant.identity:
            return None
        if participant.joined_at_ms > 0:
            joined_at: float | None = participant.joined_at_ms / 1000
        elif participant.joined_at > 0:
            joined_at = float(participant.joined_at)
        else:
            joined_at = None
        if device_id_of_identity(participant.identity) is not None:
            kind = ParticipantKind.DEVICE
        elif participant.kind == ParticipantInfo.Kind.AGENT:
            kind = ParticipantKind.AGENT
        else:
            kind = ParticipantKind.OTHER
        presence = Presence(
            room, participant.sid or participant.identity, participant.identity, kind
        )
        at = self._event_time(event)
        if event.event == LiveKitEvent.PARTICIPANT_JOINED:
            return dataclasses.replace(presence, joined_at=joined_at or at)
        return dataclasses.replace(
            presence,
            joined_at=joined_at,
            left_at=at,
            disconnect_reason=_name(DisconnectReason, participant.disconnect_reason),
        )

    async def _call_of(self, room: str, device_id: str) -> CallRecord | None:
        """The call held in `room`, if it is one of `device_id`'s."""
        call_id = call_id_of_room(room)
        if call_id is None:
            return None
        call = await self._storage.get_call(call_id)
        if call is None:
            # A held grant's room before the device's start report has arrived.
            grant = await self._storage.get_grant(call_id)
            if grant is not None and grant.device_id == device_id and grant.room == room:
                return CallRecord(
                    grant.call_id, device_id, room, "held", grant.created_at, grant.expires_at
                )
            return None
        if call.device_id != device_id or call.room != room:
            return None
        return call
