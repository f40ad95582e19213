"""Errors of the provisioning backend; each refusal carries its HTTP status and API code."""

from __future__ import annotations


class ProvisioningError(Exception):
    """Base class of every error the provisioning backend raises on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequestError(ProvisioningError, ValueError):
    """The request body or a parameter is malformed or missing a field."""

    status = 400
    code = "bad_request"


class AuthError(ProvisioningError):
    """The request's signature, device or freshness was refused (HTTP 401)."""

    status = 401

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class MissingSignatureError(AuthError):
    """A signing header is absent."""

    def __init__(self, message: str = "request is not signed") -> None:
        super().__init__("missing_signature", message)


class BadSignatureError(AuthError):
    """The signature does not verify, or a signing header is malformed."""

    def __init__(self, message: str = "signature does not verify") -> None:
        super().__init__("bad_signature", message)


class UnknownDeviceError(AuthError):
    """The X-Device-Id names no enrolled device."""

    def __init__(self, message: str = "unknown device") -> None:
        super().__init__("unknown_device", message)


class StaleTimestampError(AuthError):
    """The request timestamp is outside the allowed clock skew."""

    def __init__(self, message: str = "timestamp outside the allowed clock skew") -> None:
        super().__init__("stale_timestamp", message)


class ReplayedRequestError(AuthError):
    """The nonce was already seen from this device within the window."""

    def __init__(self, message: str = "nonce already used") -> None:
        super().__init__("replayed_request", message)


class ForbiddenError(ProvisioningError, PermissionError):
    """Authenticated but not allowed (HTTP 403)."""

    status = 403

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class InvalidEnrollmentCodeError(ForbiddenError):
    """The enrollment code is unknown, used or expired."""

    def __init__(self, message: str = "enrollment code is unknown, used or expired") -> None:
        super().__init__("invalid_enrollment_code", message)


class DeviceRevokedError(ForbiddenError):
    """The device was revoked by an administrator."""

    def __init__(self, message: str = "device is revoked") -> None:
        super().__init__("device_revoked", message)


class DevicePendingError(ForbiddenError):
    """The device is enrolled but waits for an admin's approval."""

    def __init__(self, message: str = "device is awaiting approval") -> None:
        super().__init__("device_pending", message)


class DeviceRejectedError(ForbiddenError):
    """An admin rejected the device's enrollment: it needs a new key and code."""

    def __init__(self, message: str = "device was rejected") -> None:
        super().__init__("device_rejected", message)


class InvalidStateError(ProvisioningError, ValueError):
    """An admin action that does not apply to the device as it is (HTTP 409)."""

    status = 409
    code = "invalid_state"


class RequestTimeoutError(ProvisioningError, TimeoutError):
    """The client did not send its request in time (HTTP 408); the connection is closed."""

    status = 408
    code = "request_timeout"


class UnknownCallError(ProvisioningError, LookupError):
    """The call does not exist or belongs to another device (HTTP 404)."""

    status = 404
    code = "unknown_call"


class CallEndedError(ProvisioningError):
    """The call has ended: no token to rejoin it (HTTP 409)."""

    status = 409
    code = "call_ended"


class RingLinkError(ProvisioningError):
    """A ringing call's join link that is malformed, forged or expired (HTTP 403)."""

    status = 403
    code = "ring_link_invalid"


class HostedCallError(ProvisioningError):
    """The call is in a hosted platform's room, not on the fleet's LiveKit server (HTTP 409)."""

    status = 409
    code = "hosted_call"


class GrantsNotHeldError(ProvisioningError):
    """The device's calls go to a platform that opens a session per call: fetch on the press
    (HTTP 409)."""

    status = 409
    code = "grants_not_held"


class RejoinUnsupportedError(ProvisioningError):
    """The call is on a platform's server, which gives no second token for its room (409)."""

    status = 409
    code = "rejoin_unsupported"


class AlreadyEnrolledError(ProvisioningError):
    """This public key already has a device (HTTP 409)."""

    status = 409
    code = "already_enrolled"


class RateLimitedError(ProvisioningError):
    """Too many requests; retry after `retry_after_s` seconds (HTTP 429)."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnknownDeviceIdError(ProvisioningError, LookupError):
    """An administrative command named a device id that does not exist."""

    status = 404
    code = "unknown_device"


class ConfigError(ProvisioningError, ValueError):
    """The configuration file is missing, malformed, or has an unknown key or bad value."""

    code = "config_error"


class StorageError(ProvisioningError, OSError):
    """The database could not be opened or used."""

    code = "storage_error"


class StorageUnavailableError(StorageError):
    """The database is down, locked or too slow right now; the request may be retried (503)."""

    status = 503
    code = "storage_unavailable"


class StorageConflictError(StorageError):
    """A row with the same unique key already exists."""

    status = 409
    code = "conflict"


class LiveKitUnavailableError(ProvisioningError, ConnectionError):
    """LiveKit's server API could not be reached or failed (503); the caller may retry."""

    status = 503
    code = "livekit_unavailable"


class SchemaTooNewError(StorageError):
    """The database was migrated by a newer version of the backend."""

    code = "schema_too_new"
