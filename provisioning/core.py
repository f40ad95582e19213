"""The backend's use cases: enrollment, request authentication, calls and administration."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from appliance.vocabulary import EndReason, Trigger
from provisioning.config import Config, LiveKitConfig
from provisioning.errors import (
    AlreadyEnrolledError,
    BadRequestError,
    CallEndedError,
    DevicePendingError,
    DeviceRejectedError,
    DeviceRevokedError,
    ForbiddenError,
    GrantsNotHeldError,
    InvalidEnrollmentCodeError,
    InvalidStateError,
    LiveKitUnavailableError,
    MissingSignatureError,
    RateLimitedError,
    RejoinUnsupportedError,
    ReplayedRequestError,
    StorageConflictError,
    UnknownCallError,
    UnknownDeviceError,
    UnknownDeviceIdError,
)
from provisioning.events import EventKind, FleetEvent, FleetEvents, NoEvents
from provisioning.fleet_settings import merged, validate_group_name, validate_settings
from provisioning.livekit_events import LiveKitEvents, WebhookOutcome
from provisioning.logs import AUDIT_LOGGER
from provisioning.models import (
    IDENTITY_PREFIX,
    AdminAction,
    Admission,
    CallGrant,
    CallRecord,
    Device,
    DeviceReport,
    DeviceStatus,
    EnrollmentCode,
    HeldGrant,
    LiveKitEventRecord,
    Nonce,
    call_id_of_room,
    room_of_call,
)
from provisioning.providers import (
    CallProvider,
    CallRequest,
    OwnLiveKit,
    ProviderChoice,
    ProviderKind,
    ProviderMisconfiguredError,
    resolve,
)
from provisioning.providers.base import CallOutcome, call_outcome
from provisioning.providers.errors import UpstreamBadRequestError, UpstreamError
from provisioning.providers.platforms import (
    CallStep,
    Click2Call,
)
from provisioning.ringing import Ringing, RingPlan, ring_plan_of, ring_store_of
from provisioning.rooms import RoomService
from provisioning.signing import SignatureVerifier, SignedRequest, device_id_for, parse_public_key
from provisioning.storage.base import Storage
from provisioning.tokens import MintedToken, OperatorGrant, TokenMinter

logger = logging.getLogger(__name__)
# What happened to the fleet (enrollments, calls, grants, revocations): one line each,
# never capped by the flood filter, which is for refusals (logs.py).
audit = logging.getLogger(AUDIT_LOGGER)

Clock = Callable[[], float]

# No 0/O, 1/I/L: codes are read off a screen and typed by hand.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_GROUPS = 4
CODE_GROUP_LEN = 4
MAX_CODE_TTL_S = 30 * 24 * 3600
MAX_NAME_LEN = 100
MAX_LABEL_LEN = 100
MAX_DURATION_MS = 7 * 24 * 3600 * 1000
# A platform's own reason for ending a call, as the device reports it (`platform_ended`).
MAX_END_DETAIL_CHARS = 200
# What a device may report of a call in progress (`POST /v1/calls/{id}/progress`).
CALL_PROGRESS = ("joined", "answered")
# Click2Call's dial asked again after a 409 (`_dial`): 1.4 s in all, inside the device's
# own wait for the backend.
DIAL_RETRY_S = (0.2, 0.4, 0.8)


async def _dial(bridge: Click2Call, upstream_call_id: str, context: Mapping[str, str]) -> None:
    """Have the bridge dial, the device being in the room with its microphone published.
    LiveKit lists a track only once its first media has arrived, a little after the
    device's publish has returned (25 ms here when quiet, more under load), so a bridge
    that looks for it may answer 409 at first: asked again, a few times, shortly."""
    for delay in (*DIAL_RETRY_S, None):
        try:
            await bridge.control(upstream_call_id, "connect", context)
            return
        except UpstreamBadRequestError as exc:
            if exc.upstream_status != HTTPStatus.CONFLICT or delay is None:
                raise
            await asyncio.sleep(delay)


def _call_context(call: CallRecord) -> dict[str, str]:
    return {"device_id": call.device_id, "call_id": call.call_id}


RATE_WINDOW_S = 60.0
# A device renews its held grant every few minutes; this only stops a runaway one.
MAX_GRANTS_PER_MINUTE = 6
# Unused grants are kept this long past their expiry (a late start report still finds it).
GRANT_RETENTION_S = 3600.0
# Devices (their keys) kept in memory; each is about half a kilobyte.
DEVICES_CACHED = 100_000
# How long a cached device (key, group, settings) is used before it is read again, so that
# settings an admin changed through another backend process reach this one too.
DEVICE_CACHE_TTL_S = 30.0
# A platform's room is not on our LiveKit server: no webhook or room list tells the sweeper
# about it. Its call is recorded as joinable this long (the longest call a device may be set
# to, 2 h, and a token's life), so the sweeper closes it only if its device never reports.
PLATFORM_CALL_HORIZON_S = 7200.0 + 600.0


def normalize_code(code: str) -> str:
    """Upper-case the code and drop separators, so `abcd-efgh` and `ABCDEFGH` match."""
    return "".join(ch for ch in code.upper() if ch not in "- \t")


def hash_code(code: str) -> str:
    """Lowercase hex SHA-256 of the normalized code: the only form that is stored."""
    return hashlib.sha256(normalize_code(code).encode("utf-8")).hexdigest()


class ProvisioningCore:
    """Enrolls devices, authenticates their requests and hands out call tokens.

    Its collaborators come in: the storage, the token minter and LiveKit's room service
    are chosen by `provisioning.backend.open_backend`, never here.
    """

    def __init__(
        self,
        storage: Storage,
        config: Config,
        *,
        minter: TokenMinter,
        rooms: RoomService,
        events: FleetEvents | None = None,
        platforms: Mapping[ProviderKind, CallProvider] | None = None,
        clock: Clock = time.time,
    ) -> None:
        self._storage = storage
        self._config = config
        self._clock = clock
        self._verifier = SignatureVerifier(
            storage, clock=clock, max_clock_skew_s=config.auth.max_clock_skew_s
        )
        self._minter = minter
        self._own = OwnLiveKit(minter, config.livekit.url)
        self._platforms: Mapping[ProviderKind, CallProvider] = dict(platforms or {})
        self._rooms = rooms
        self._devices: dict[str, tuple[Device, float]] = {}
        self._events: FleetEvents = NoEvents() if events is None else events
        self._livekit_events = LiveKitEvents(
            storage,
            rooms,
            api_key=config.livekit.api_key,
            api_secret=config.livekit.api_secret,
            clock=clock,
            on_join=self._participant_joined,
        )
        self._ringing = Ringing(
            ring_store_of(storage),
            rooms,
            self._events,
            livekit_url=config.livekit.url,
            api_key=config.livekit.api_key,
            api_secret=config.livekit.api_secret,
            public_url=config.server.page_url,
            public_url_guessed=config.server.public_url is None,
            close_call=self._close_unanswered,
            clock=clock,
        )

    @property
    def ringing(self) -> Ringing:
        """Calls that ring people first: their rings, timers and join links (`ringing.py`)."""
        return self._ringing

    async def aclose(self) -> None:
        """Stop the ring timers (the rings stay recorded for the sweeper)."""
        await self._ringing.aclose()

    @property
    def livekit(self) -> LiveKitConfig:
        """The fleet's own LiveKit server (operators join its calls' rooms)."""
        return self._config.livekit

    @property
    def agent_name(self) -> str:
        """The agent dispatched into every call."""
        return self._config.calls.agent_name

    # Administration

    async def create_enrollment_code(
        self,
        ttl_s: int = 3600,
        label: str = "",
        *,
        requires_approval: bool = False,
        group: str | None = None,
        actor: str = "cli",
    ) -> str:
        """A fresh one-time code valid for `ttl_s` seconds, shown once and stored hashed.

        A device enrolled with it is approved at once, or, with `requires_approval`, waits
        as `pending` for an admin; it joins `group` if one is given.
        """
        if isinstance(ttl_s, bool) or not 1 <= ttl_s <= MAX_CODE_TTL_S:
            raise BadRequestError(f"ttl must be between 1 and {MAX_CODE_TTL_S} seconds")
        if len(label) > MAX_LABEL_LEN:
            raise BadRequestError(f"label must be at most {MAX_LABEL_LEN} characters")
        if not label.isprintable():
            raise BadRequestError("label must contain printable characters only")
        if group is not None:
            group = validate_group_name(group)
        groups = (
            "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_GROUP_LEN))
            for _ in range(CODE_GROUPS)
        )
        code = "-".join(groups)
        now = self._clock()
        code_hash = hash_code(code)
        await self._storage.add_enrollment_code(
            EnrollmentCode(
                code_hash=code_hash,
                label=label,
                created_at=now,
                expires_at=now + ttl_s,
                used_at=None,
                device_id=None,
                requires_approval=requires_approval,
                group=group,
            )
        )
        detail = {"label": label, "ttl_s": ttl_s, "requires_approval": requires_approval}
        if group is not None:
            detail["group"] = group
        # The code itself is never recorded: only the first characters of its hash.
        await self._record(actor, "enrollment_code.create", f"code:{code_hash[:12]}", detail)
        audit.info("enrollment code created", extra={"label": label, "ttl_s": ttl_s})
        return code

    async def list_enrollment_codes(self) -> list[EnrollmentCode]:
        """Every enrollment code (by hash), newest first."""
        return await self._storage.list_enrollment_codes()

    async def list_devices(self) -> list[Device]:
        """All enrolled devices, oldest first."""
        return await self._storage.list_devices()

    async def get_device(self, device_id: str) -> Device:
        """One device; `UnknownDeviceIdError` if there is none."""
        device = await self._storage.get_device(device_id)
        if device is None:
            raise UnknownDeviceIdError(f"no device {device_id}")
        return device

    def offline(self, device: Device) -> bool:
        """Whether the device has missed its check-ins (none for `fleet.offline_after_s`)."""
        if device.status is not DeviceStatus.APPROVED and device.status is not DeviceStatus.PENDING:
            return False
        if device.last_seen is None:
            return True
        return self._clock() - device.last_seen > self._config.fleet.offline_after_s

    async def list_calls(
        self,
        device_id: str | None = None,
        *,
        end_reason: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[CallRecord]:
        """Calls, oldest first; optionally of one device, with one end reason, or started
        in [since, until)."""
        return await self._storage.list_calls(
            device_id, end_reason=end_reason, since=since, until=until
        )

    async def get_call(self, call_id: str) -> CallRecord | None:
        """One call's record, or None if there is no such call."""
        return await self._storage.get_call(call_id)

    async def list_admin_actions(self, limit: int = 100) -> list[AdminAction]:
        """The latest admin actions, newest first: who did what, and when."""
        return await self._storage.list_admin_actions(limit)

    async def list_groups(self) -> dict[str, Mapping[str, Any]]:
        """Every device group and its settings."""
        return await self._storage.list_groups()

    async def approve_device(self, device_id: str, *, actor: str) -> Device:
        """Let a pending device in: it gets tokens from its next request on."""
        device = await self._transition(
            device_id, DeviceStatus.APPROVED, (DeviceStatus.PENDING,), actor, "device.approve"
        )
        await self._announce(EventKind.DEVICE_APPROVED, device)
        return device

    async def reject_device(self, device_id: str, *, actor: str) -> Device:
        """Refuse a pending device for good: it needs a new key and code."""
        device = await self._transition(
            device_id, DeviceStatus.REJECTED, (DeviceStatus.PENDING,), actor, "device.reject"
        )
        await self._announce(EventKind.DEVICE_REJECTED, device)
        return device

    async def set_device_settings(self, device_id: str, settings: object, *, actor: str) -> Device:
        """Replace a device's own settings (checked); it applies them at its next check-in."""
        checked = validate_settings(settings)
        device = await self._storage.change_device(
            device_id, self._action(actor, "device.settings", device_id, checked), settings=checked
        )
        if device is None:
            raise UnknownDeviceIdError(f"no device {device_id}")
        self._devices.pop(device_id, None)
        audit.info("device settings changed", extra={"device_id": device_id, "actor": actor})
        return device

    async def set_device_group(self, device_id: str, group: str | None, *, actor: str) -> Device:
        """Put a device in a group (or none); it gets the group's settings at check-in."""
        if group is not None:
            group = validate_group_name(group)
        device = await self._storage.change_device(
            device_id,
            self._action(actor, "device.group", device_id, {"group": group}),
            group=group,
            clear_group=group is None,
        )
        if device is None:
            raise UnknownDeviceIdError(f"no device {device_id}")
        self._devices.pop(device_id, None)
        return device

    async def set_group_settings(self, group: str, settings: object, *, actor: str) -> None:
        """Create or replace a group's settings (checked)."""
        group = validate_group_name(group)
        checked = validate_settings(settings)
        await self._storage.set_group_settings(
            group, checked, self._action(actor, "group.settings", f"group:{group}", checked)
        )
        self._devices.clear()  # any cached device may be in the group
        audit.info("group settings changed", extra={"group": group, "actor": actor})

    def agent_of(self, device: Device) -> str:
        """The agent dispatched into the device's calls (its settings, or the backend's)."""
        agent = self.settings_of(device).get("agent_name")
        return agent if isinstance(agent, str) else self.agent_name

    def settings_of(self, device: Device) -> dict[str, Any]:
        """The settings a device gets: its group's, overridden by its own."""
        return merged(device.group_settings, device.settings)

    def device_settings_of(self, device: Device) -> dict[str, Any]:
        """The settings sent to the device: all but the provider's options (case and customer
        fields, assistant prompts), which are the backend's to use."""
        settings = self.settings_of(device)
        settings.pop("provider", None)
        settings.pop("ring_operators", None)  # the device learns it from each grant
        return settings

    def provider_of(self, device: Device) -> ProviderChoice:
        """Where the device's calls go; `ProviderMisconfiguredError` if they cannot go anywhere."""
        choice = resolve(device.group_settings, device.settings)
        if choice.kind is not ProviderKind.LIVEKIT and choice.kind not in self._platforms:
            raise ProviderMisconfiguredError(
                f"platform {choice.kind.value} is not configured on the backend ([platforms])"
            )
        return choice

    def on_own_livekit(self, device: Device) -> bool:
        """Whether the device's calls are in rooms of the fleet's own LiveKit server, where
        people can be let in; a hosted platform's room is not. Its provider now decides: a call
        whose device was moved to another platform mid-call counts as the new one's."""
        try:
            return self.provider_of(device).kind is ProviderKind.LIVEKIT
        except ProviderMisconfiguredError:
            return False  # its provider cannot be told, so neither can its room

    def call_provider_of(self, device: Device) -> dict[str, Any]:
        """What the device is told at check-in: the provider's kind, and whether it may hold
        a grant (only the fleet's own LiveKit: a platform's mint opens a session upstream)."""
        try:
            kind = self.provider_of(device).kind
        except ProviderMisconfiguredError:
            return {"kind": None, "hold_grants": False}
        return {"kind": kind.value, "hold_grants": kind is ProviderKind.LIVEKIT}

    async def _transition(
        self,
        device_id: str,
        status: DeviceStatus,
        allowed: tuple[DeviceStatus, ...],
        actor: str,
        action: str,
    ) -> Device:
        device = await self._storage.change_device(
            device_id,
            self._action(actor, action, device_id, {"status": status.value}),
            status=status,
            from_statuses=allowed,
        )
        if device is None:
            current = await self.get_device(device_id)  # UnknownDeviceIdError if none
            raise InvalidStateError(
                f"device {device_id} is {current.status.value}, not "
                + " or ".join(s.value for s in allowed)
            )
        self._devices.pop(device_id, None)
        audit.info(action.replace(".", " ") + "d", extra={"device_id": device_id, "actor": actor})
        return device

    def _action(
        self, actor: str, action: str, target: str, detail: Mapping[str, Any]
    ) -> AdminAction:
        return AdminAction(self._clock(), actor, action, target, dict(detail))

    async def _record(
        self, actor: str, action: str, target: str, detail: Mapping[str, Any]
    ) -> None:
        await self._storage.add_admin_action(self._action(actor, action, target, detail))

    async def _announce(self, kind: EventKind, device: Device) -> None:
        await self._events.emit(
            FleetEvent(
                kind,
                self._clock(),
                {"device_id": device.device_id, "name": device.name, "status": device.status.value},
            )
        )

    async def list_livekit_events(self, room: str | None = None) -> list[LiveKitEventRecord]:
        """LiveKit webhook events recorded, in the order received, optionally of one room."""
        return await self._storage.list_livekit_events(room)

    async def revoke_device(self, device_id: str, *, actor: str = "cli") -> Device:
        """Refuse the device from now on and end its live call; `UnknownDeviceIdError` if none.

        Its held grants are forgotten (they can no longer become calls) and the rooms of
        its open calls and grants are deleted through LiveKit, which disconnects the device
        at once. A room that cannot be deleted now is logged; LiveKit's webhook for the
        device joining any room is refused the same way (`LiveKitEvents`). Revoking a
        revoked device changes nothing.
        """
        current = await self.get_device(device_id)
        if current.status is DeviceStatus.REVOKED:
            return current
        device = await self._transition(
            device_id,
            DeviceStatus.REVOKED,
            (DeviceStatus.PENDING, DeviceStatus.APPROVED, DeviceStatus.REJECTED),
            actor,
            "device.revoke",
        )
        await self._announce(EventKind.DEVICE_REVOKED, device)
        grants = await self._storage.delete_grants(device_id)
        calls = await self._storage.list_open_calls(device_id)
        for room in sorted({c.room for c in calls} | {g.room for g in grants}):
            try:
                await self._rooms.delete_room(room)
            except LiveKitUnavailableError as exc:
                logger.warning(
                    "revoked device's room not deleted: %s",
                    exc.message,
                    extra={"device_id": device_id, "room": room},
                )
        return device

    # Device requests

    async def enroll(self, code: str, public_key: str, name: str, request: SignedRequest) -> Device:
        """Enroll the key that signed `request`, spending `code`; returns the new device."""
        raw_key = parse_public_key(public_key)
        if len(name) > MAX_NAME_LEN:
            raise BadRequestError(f"name must be at most {MAX_NAME_LEN} characters")
        if not name.isprintable():
            # It is shown on admins' terminals and put in tokens: no control sequences.
            raise BadRequestError("name must contain printable characters only")
        device_id = device_id_for(raw_key)
        # Proof of possession first: nothing below is revealed to someone without the key.
        await self._verifier.verify(request, public_key=raw_key, device_id=device_id)
        now = self._clock()
        if await self._storage.get_device_by_public_key(raw_key) is not None:
            raise AlreadyEnrolledError("this public key already has a device")
        device = Device(
            device_id=device_id,
            public_key=raw_key,
            name=name,
            status=DeviceStatus.APPROVED,
            created_at=now,
        )
        try:
            enrolled = await self._storage.enroll_device(device, hash_code(code), now)
        except StorageConflictError as exc:
            # The same key enrolling through two backends at once: one of them wins.
            raise AlreadyEnrolledError("this device is already enrolled") from exc
        if enrolled is None:
            raise InvalidEnrollmentCodeError()
        device = enrolled
        audit.info("device enrolled", extra={"device_id": device_id, "status": device.status.value})
        await self._events.emit(
            FleetEvent(
                EventKind.DEVICE_ENROLLED,
                now,
                {"device_id": device_id, "name": name, "status": device.status.value},
            )
        )
        return device

    async def authenticate(self, request: SignedRequest, *, allow_revoked: bool = False) -> Device:
        """The approved device that signed `request`, or an `AuthError`/`DeviceRevokedError`.

        `allow_revoked` accepts a revoked device too (it may still report its calls' ends).
        """
        device, nonce = await self._signed_by(request)
        return self._admitted(device, await self._storage.admit(nonce), allow_revoked)

    async def _signed_by(self, request: SignedRequest) -> tuple[Device, Nonce]:
        """The device whose key signed `request`, and the nonce still to spend.

        Devices are cached by id: a device's id is its key's hash, so the key never
        changes; its status is read again when the nonce is spent (`_admitted`).
        """
        if not request.device_id:
            raise MissingSignatureError("X-Device-Id is missing")
        now = self._clock()
        cached = self._devices.get(request.device_id)
        if cached is not None and 0 <= now - cached[1] < DEVICE_CACHE_TTL_S:
            device = cached[0]
        else:
            found = await self._storage.get_device(request.device_id)
            if found is None:
                raise UnknownDeviceError()
            device = found
            self._remember(device, now)
        nonce = self._verifier.check(
            request, public_key=device.public_key, device_id=device.device_id
        )
        await self._verifier.purge_if_due()
        return device, nonce

    def _remember(self, device: Device, now: float) -> None:
        if device.device_id not in self._devices and len(self._devices) >= DEVICES_CACHED:
            del self._devices[next(iter(self._devices))]
        self._devices[device.device_id] = (device, now)

    async def check_in(self, request: SignedRequest, report: DeviceReport) -> Device:
        """Authenticate a device's check-in (its heartbeat), record what it reports and
        when, and return it as it is now, its settings included.

        A pending device is recorded too (admins see it is alive), then refused with
        `DevicePendingError`, as is every request of a device that is not approved.
        """
        device, nonce = await self._signed_by(request)
        now = self._clock()
        assert request.timestamp is not None  # checked by the verifier
        offset = float(int(request.timestamp)) - now
        admission, current = await self._storage.check_in(nonce, report, now, offset)
        self._admitted(device, admission)
        assert current is not None
        self._remember(current, now)
        return current

    @staticmethod
    def _admitted(device: Device, admission: Admission, allow_revoked: bool = False) -> Device:
        """`device` as it is now, if the spent nonce was fresh and its status allows."""
        if not admission.fresh:
            raise ReplayedRequestError()
        if admission.status is None:
            raise UnknownDeviceError()
        if admission.status is not DeviceStatus.APPROVED and not allow_revoked:
            raise _refusal(admission.status)
        if admission.status is device.status:
            return device
        return dataclasses.replace(device, status=admission.status)

    async def start_call(self, request: SignedRequest, trigger: str) -> CallGrant:
        """Authenticate `request` and record a new call for its device, with its token, in
        one database unit; `trigger` is informational."""
        device, nonce = await self._signed_by(request)
        _check_trigger(trigger)
        choice = self.provider_of(device)
        now = self._clock()
        call_id = new_call_id()
        token = None
        ring = None
        if choice.kind is ProviderKind.LIVEKIT:
            ring = ring_plan_of(self.settings_of(device))
            token = self._mint(device, call_id, dispatch=ring is None)
        call = CallRecord(
            call_id=call_id,
            device_id=device.device_id,
            room=room_of_call(call_id),
            trigger=trigger,
            created_at=now,
            token_expires_at=now + PLATFORM_CALL_HORIZON_S if token is None else token.expires_at,
        )
        limit = self._config.calls.max_per_minute
        admission, added = await self._storage.admit_call(
            nonce, call, since=now - RATE_WINDOW_S, limit=limit
        )
        device = self._admitted(device, admission)
        if not added:
            # Rare: only now is it worth reading when the oldest of those calls was.
            _, oldest = await self._storage.count_calls_since(device.device_id, now - RATE_WINDOW_S)
            retry_after = max(1, math.ceil((oldest or now) + RATE_WINDOW_S - now))
            logger.warning("call rate limited", extra={"device_id": device.device_id})
            raise RateLimitedError("too many calls, try again later", retry_after_s=retry_after)
        if ring is not None:
            await self._hold_ring(device, call_id, ring)
        await self._call_started(call, device, rings=ring is not None)
        if token is None:
            # The platform is asked only now, outside the unit: a replayed, refused or
            # rate-limited request never costs an upstream session.
            return await self._open_upstream(device, call, choice)
        return self._grant(device, call_id, token, ring)

    async def _open_upstream(
        self, device: Device, call: CallRecord, choice: ProviderChoice
    ) -> CallGrant:
        """The platform's room for a call just recorded; if it fails, the call ends
        `connect_failed` at once and the platform's refusal goes to the device."""
        try:
            return await self._ask_upstream(device, call, choice)
        except Exception:
            if await self._storage.end_call(
                call.call_id, self._clock(), EndReason.CONNECT_FAILED, 0
            ):
                ended = await self._storage.get_call(call.call_id)
                if ended is not None:
                    await self.call_ended(ended)
            raise

    async def _ask_upstream(
        self, device: Device, call: CallRecord, choice: ProviderChoice, *, reissue: bool = False
    ) -> CallGrant:
        """A session on the platform for `call`: its room and token in our grant's shape."""
        request = CallRequest(
            device_id=device.device_id,
            identity=device.identity,
            name=device.name or device.device_id,
            call_id=call.call_id,
            room=call.room,
            agent_name=self.agent_of(device),
            options=choice.options,
        )
        grant = await self._platforms[choice.kind].open_call(request)
        if grant.upstream_call_id:
            await self._storage.set_call_upstream(call.call_id, grant.upstream_call_id)
        audit.info(
            "call reissued upstream" if reissue else "call opened upstream",
            extra={
                "device_id": device.device_id,
                "call_id": call.call_id,
                "provider": choice.kind.value,
                "room": grant.room,
                "upstream_call_id": grant.upstream_call_id or "-",
            },
        )
        return CallGrant(
            server_url=grant.server_url,
            token=grant.token,
            room=grant.room,
            identity=grant.identity,
            call_id=call.call_id,
            expires_at=grant.expires_at,
            provider=choice.kind.value,
        )

    async def hold_grant(self, request: SignedRequest) -> CallGrant:
        """Authenticate `request` and give its device a call token to hold, so a press
        goes straight to LiveKit.

        It is recorded as a grant, not a call: it becomes a call only when the device
        reports it used (`start_held_call`, or `rejoin_call`). Unused grants are forgotten
        an hour after they expire, when the device is given its next one.
        """
        device, nonce = await self._signed_by(request)
        if self.provider_of(device).kind is not ProviderKind.LIVEKIT:
            raise GrantsNotHeldError("this device's platform opens a session per call: no grants")
        now = self._clock()
        call_id = new_call_id()
        ring = ring_plan_of(self.settings_of(device))
        token = self._mint(device, call_id, dispatch=ring is None)
        admission, added = await self._storage.admit_grant(
            nonce,
            HeldGrant(call_id, device.device_id, room_of_call(call_id), now, token.expires_at),
            keep_since=now - GRANT_RETENTION_S,
            since=now - RATE_WINDOW_S,
            limit=MAX_GRANTS_PER_MINUTE,
        )
        device = self._admitted(device, admission)
        if not added:
            _, oldest = await self._storage.count_grants_since(
                device.device_id, now - RATE_WINDOW_S
            )
            retry_after = max(1, math.ceil((oldest or now) + RATE_WINDOW_S - now))
            logger.warning("grant rate limited", extra={"device_id": device.device_id})
            raise RateLimitedError("too many grants, try again later", retry_after_s=retry_after)
        if ring is not None:
            await self._hold_ring(device, call_id, ring)
        audit.info("grant held", extra={"device_id": device.device_id, "call_id": call_id})
        return self._grant(device, call_id, token, ring)

    async def _hold_ring(self, device: Device, call_id: str, ring: RingPlan) -> None:
        await self._ringing.held(
            call_id=call_id,
            device_id=device.device_id,
            room=room_of_call(call_id),
            agent_name=self.agent_of(device),
            plan=ring,
        )

    async def start_held_call(self, device: Device, call_id: str, trigger: str) -> CallRecord:
        """Record the call a device began with its held grant; again, the same call."""
        _check_trigger(trigger)
        began = await self._storage.use_grant(device.device_id, call_id, trigger, self._clock())
        call = await self._storage.get_call(call_id)
        if call is None or call.device_id != device.device_id:
            raise UnknownCallError("no such call or grant for this device")
        if began:
            await self._call_started(call, device)
        return call

    async def rejoin_call(self, device: Device, call_id: str, trigger: str) -> CallGrant:
        """A fresh token for the room of one of the device's calls that has not ended.

        A call begun with a held grant whose start report has not arrived yet is recorded
        now. Joining creates the room again if LiveKit lost it, and that dispatches the agent.
        """
        call = await self.start_held_call(device, call_id, trigger)
        if call.ended_at is not None:
            raise CallEndedError("the call has ended")
        choice = self.provider_of(device)
        if choice.kind is ProviderKind.CALL2ME:
            # Call2Me: "a disconnected event with reason token-expired; your code reissues
            # and reconnects" (000 l. 66). A fresh token is a fresh upstream session, in a
            # new room with its agent: the same call continues on our record.
            return await self._ask_upstream(device, call, choice, reissue=True)
        if choice.kind is not ProviderKind.LIVEKIT:
            # A platform's room is its own: a fresh session would be another call.
            raise RejoinUnsupportedError("this device's platform calls cannot be rejoined")
        # A call still ringing people (or answered by one) brings no agent back with it.
        agent = self._ringing.dispatches_agent(await self._ringing.get(call_id))
        token = self._mint(device, call_id, dispatch=agent)
        room = room_of_call(call_id)
        # A room LiveKit lost and a client's own reconnect made again has no agent in it:
        # dispatch one. (A room that is gone is made by the dispatch, or by the join.)
        if agent:
            await self._ensure_agent(device, call_id, room)
        audit.info("call rejoined", extra={"device_id": device.device_id, "call_id": call_id})
        return self._grant(device, call_id, token)

    async def _ensure_agent(self, device: Device, call_id: str, room: str) -> None:
        try:
            metadata = json.dumps({"device_id": device.device_id, "call_id": call_id})
            if await self._rooms.ensure_agent(room, self.agent_of(device), metadata):
                logger.info("agent dispatched again", extra={"call_id": call_id, "room": room})
        except LiveKitUnavailableError as exc:
            logger.warning("agent not dispatched: %s", exc.message, extra={"call_id": call_id})

    def _mint(self, device: Device, call_id: str, *, dispatch: bool = True) -> MintedToken:
        # The own-LiveKit provider's path, kept synchronous and inline: no upstream request.
        return self._minter.mint(
            dispatch=dispatch,
            agent_name=self.agent_of(device),
            identity=device.identity,
            name=device.name or device.device_id,
            room=room_of_call(call_id),
            device_id=device.device_id,
            call_id=call_id,
        )

    def _grant(
        self, device: Device, call_id: str, token: MintedToken, ring: RingPlan | None = None
    ) -> CallGrant:
        return CallGrant(
            server_url=self._config.livekit.url,
            token=token.jwt,
            room=room_of_call(call_id),
            identity=device.identity,
            call_id=call_id,
            expires_at=token.expires_at,
            ring=None if ring is None else ring.as_grant(),
        )

    async def end_call(
        self,
        device: Device,
        call_id: str,
        reason: str,
        duration_ms: int,
        detail: str | None = None,
    ) -> CallRecord:
        """Record the end of one of `device`'s calls (with a platform's own reason as
        `detail`); a repeated end returns the first one."""
        call = await self._storage.get_call(call_id)
        if call is None or call.device_id != device.device_id:
            raise UnknownCallError("no such call for this device")
        if call.ended_at is not None:
            return call
        if reason not in EndReason.__members__.values():
            raise BadRequestError(f"reason must be one of {_choices(EndReason)}")
        if isinstance(duration_ms, bool) or not 0 <= duration_ms <= MAX_DURATION_MS:
            raise BadRequestError("duration_ms must be a non-negative integer")
        if detail is not None and (
            not isinstance(detail, str)
            or len(detail) > MAX_END_DETAIL_CHARS
            or not detail.isprintable()
        ):
            raise BadRequestError(
                f"detail must be printable text of at most {MAX_END_DETAIL_CHARS} characters"
            )
        now = self._clock()
        changed = await self._storage.end_call(call_id, now, reason, duration_ms, detail or None)
        ended = await self._storage.get_call(call_id)
        assert ended is not None
        if changed:
            await self.call_ended(ended)
            ended = await self._storage.get_call(call_id) or ended  # its outcome, if any
        return ended

    async def call_progress(self, device: Device, call_id: str, event: str) -> CallRecord:
        """The device's news of a call in progress, for a platform with call control:
        `joined` (in the room, microphone published) makes Click2Call dial the phone,
        `answered` (its SIP leg is `active`) is reported to it as ANSWERED (003 l. 55-67).
        Other platforms need neither: accepted, nothing to do."""
        if event not in CALL_PROGRESS:
            raise BadRequestError(f"event must be one of {', '.join(CALL_PROGRESS)}")
        call = await self._storage.get_call(call_id)
        if call is None or call.device_id != device.device_id:
            raise UnknownCallError("no such call for this device")
        if call.ended_at is not None:
            raise CallEndedError("the call has ended")
        bridge = self._bridge(device)
        if bridge is None or call.upstream_call_id is None:
            return call
        step: CallStep = "connect" if event == "joined" else "answered"
        if step == "connect":
            await _dial(bridge, call.upstream_call_id, _call_context(call))
        else:
            await bridge.control(call.upstream_call_id, step, _call_context(call))
        if event == "answered":
            await self._set_outcome(call_id, CallOutcome.ANSWERED)
        audit.info(
            "call progress upstream",
            extra={
                **_call_context(call),
                "event": event,
                "upstream_call_id": call.upstream_call_id,
            },
        )
        return await self._storage.get_call(call_id) or call

    def _bridge(self, device: Device) -> Click2Call | None:
        try:
            platform = self._platforms.get(self.provider_of(device).kind)
        except ProviderMisconfiguredError:
            return None
        return platform if isinstance(platform, Click2Call) else None

    async def _set_outcome(self, call_id: str, outcome: CallOutcome) -> None:
        """Keep a call's outcome: only a value of the closed vocabulary is ever stored."""
        await self._storage.set_call_outcome(call_id, call_outcome(outcome).value)

    async def _hang_up_bridge(self, call: CallRecord) -> None:
        """A Click2Call call that ended, however its end was recorded, is hung up on the
        bridge (idempotent, 003 l. 86) and its outcome kept; a failure is logged, never
        the device's nor the closer's."""
        if call.upstream_call_id is None:
            return
        device = await self._storage.get_device(call.device_id)
        bridge = None if device is None else self._bridge(device)
        if bridge is None:
            return
        if call.outcome is None:
            failed = call.end_reason in (EndReason.CONNECT_FAILED, EndReason.TOKEN_REFUSED)
            outcome = CallOutcome.FAILED if failed else CallOutcome.NOT_ANSWERED
            await self._set_outcome(call.call_id, outcome)
        try:
            await bridge.control(call.upstream_call_id, "hangup", _call_context(call))
        except UpstreamError as exc:
            logger.warning("could not hang up upstream: %s", exc.message, extra=_call_context(call))

    async def _call_started(self, call: CallRecord, device: Device, *, rings: bool = True) -> None:
        """Announce a call that began; start its ring, if its grant rang (`rings` False: known
        not to, which spares the press a query; a start report asks, as the grant is older
        than the settings)."""
        audit.info(
            "call started",
            extra={"device_id": call.device_id, "call_id": call.call_id, "trigger": call.trigger},
        )
        await self._events.emit(
            FleetEvent(
                EventKind.CALL_STARTED,
                call.created_at,
                {
                    "call_id": call.call_id,
                    "device_id": call.device_id,
                    "room": call.room,
                    "trigger": call.trigger,
                },
            )
        )
        if rings:
            await self._ringing.start(call.call_id, name=device.name, group=device.group)

    async def call_ended(self, call: CallRecord) -> None:
        """Log and announce a call's end, once, whoever recorded it (the device's report,
        LiveKit's webhooks or the sweeper), and hang up its Click2Call bridge."""
        audit.info(
            "call ended",
            extra={
                "device_id": call.device_id,
                "call_id": call.call_id,
                "end_reason": call.end_reason,
            },
        )
        await self._events.emit(
            FleetEvent(
                EventKind.CALL_ENDED,
                call.ended_at if call.ended_at is not None else self._clock(),
                {
                    "call_id": call.call_id,
                    "device_id": call.device_id,
                    "room": call.room,
                    "trigger": call.trigger,
                    "end_reason": call.end_reason,
                    "duration_ms": call.duration_ms,
                    "started_at": call.created_at,
                },
            )
        )
        await self._ringing.ended(call.call_id)
        await self._hang_up_bridge(call)

    async def _close_unanswered(
        self, call_id: str, reason: EndReason, at: float
    ) -> CallRecord | None:
        """End a ringing call's record that its device never closed; None if it had been."""
        call = await self._storage.get_call(call_id)
        if call is None or call.ended_at is not None:
            return None
        duration_ms = min(max(0, round((at - call.created_at) * 1000)), MAX_DURATION_MS)
        if not await self._storage.end_call(call_id, at, reason.value, duration_ms):
            return None
        ended = await self._storage.get_call(call_id)
        if ended is not None:
            await self.call_ended(ended)
        return ended

    async def join_ringing_call(self, ticket: object) -> OperatorGrant:
        """An operator token for the call a ring's join link names (`ringing.py`)."""
        return await self._ringing.join(ticket, self._storage.get_call)

    async def _participant_joined(self, room: str, identity: str) -> None:
        """LiveKit says someone joined a call's room: the device starts its ring (if its
        start has not been heard yet), an operator answers it."""
        call_id = call_id_of_room(room)
        if call_id is None:
            return
        if identity.startswith(IDENTITY_PREFIX):
            device = await self._storage.get_device(identity.removeprefix(IDENTITY_PREFIX))
            if device is not None:
                await self._ringing.start(call_id, name=device.name, group=device.group)
        else:
            await self._ringing.answered(call_id, identity)

    # LiveKit

    async def receive_livekit_webhook(
        self, body: bytes, authorization: str | None
    ) -> WebhookOutcome:
        """Verify, record (once per event id) and act on one of LiveKit's webhooks."""
        return await self._livekit_events.receive(body, authorization)


def _refusal(status: DeviceStatus) -> ForbiddenError:
    """The distinct refusal of a device that is not approved."""
    if status is DeviceStatus.PENDING:
        return DevicePendingError()
    if status is DeviceStatus.REJECTED:
        return DeviceRejectedError()
    return DeviceRevokedError()


def new_call_id() -> str:
    """`c-` + 16 random hex digits."""
    return "c-" + secrets.token_hex(8)


def _check_trigger(trigger: str) -> None:
    if trigger not in Trigger.__members__.values():
        raise BadRequestError(f"trigger must be one of {_choices(Trigger)}")


def _choices(vocabulary: type[Trigger] | type[EndReason]) -> str:
    return ", ".join(sorted(member.value for member in vocabulary))
