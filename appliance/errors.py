"""The device's errors: one base class; subclasses also inherit the matching builtin."""

from __future__ import annotations


class ApplianceError(Exception):
    """Base class of every error the device raises on purpose."""


class SettingsError(ApplianceError, ValueError):
    """A settings or board-profile file is missing, malformed, or has a bad or unknown key."""

    def __init__(self, path: object, key: str | None, problem: str) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {problem}")


class DeviceKeyError(ApplianceError, PermissionError):
    """The device key file cannot be created, read, or is not private to the device."""


class NotEnrolledError(ApplianceError, LookupError):
    """The device has no enrollment yet: run `appliance enroll --code ...` first."""


class BackendError(ApplianceError):
    """The provisioning backend could not give us what we asked for."""


class BackendUnreachableError(BackendError, ConnectionError):
    """The backend is down, slow, or answered with a server error."""


class CredentialsRejectedError(BackendError, PermissionError):
    """The backend refused this device's credentials (HTTP 401/403)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        super().__init__(f"{status} {code}: {message}")


class AwaitingApprovalError(BackendError, PermissionError):
    """The backend knows this device but an admin has not approved it yet (403
    `device_pending`): not a fault, a wait."""


class RateLimitedError(BackendError):
    """The backend asked us to slow down (HTTP 429)."""

    def __init__(self, retry_after_s: float | None, message: str) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class ServiceError(BackendError):
    """The backend is fine, but the hosted platform behind it refused or failed the call
    (a 5xx or 429 whose code is one of the `upstream_*`, docs/api.md)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        super().__init__(f"{status} {code}: {message}")


class ServiceMisconfiguredError(ServiceError, PermissionError):
    """The platform refused the fleet's API key or its request (401/403/400 upstream), or
    the backend's provider settings cannot make a call: not this device's credentials."""


class ServiceOutOfCreditError(ServiceError):
    """The platform's account has no credit left (402 upstream)."""


class ServiceUnavailableError(ServiceError, ConnectionError):
    """The platform is down or slow (5xx or a timeout upstream)."""


class BackendProtocolError(BackendError, ValueError):
    """The backend answered with something this device does not understand."""


class BackendRefusedError(BackendProtocolError):
    """The backend refused the request for good (another 4xx, e.g. 409 `call_ended`)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        super().__init__(f"{status} {code}: {message}")


class CallError(ApplianceError, ConnectionError):
    """A LiveKit call could not be joined or broke."""


class TokenRefusedError(CallError):
    """LiveKit refused the call token (expired, not yet valid, bad signature): a fresh one
    may do; a second refusal points at the device's clock or the backend's keys."""


class AudioDeviceError(ApplianceError, OSError):
    """An audio device is missing, busy, unplugged, or cannot do the requested format."""


class AudioDeviceMissingError(AudioDeviceError, FileNotFoundError):
    """The named ALSA device does not exist (not plugged in, or a wrong name in the profile)."""


class AudioDeviceBusyError(AudioDeviceError):
    """Another process holds the ALSA device ("Device or resource busy")."""


class AudioFormatError(AudioDeviceError, ValueError):
    """The device cannot do the rate, channel count or format the board profile asks for."""


class AudioDeviceLostError(AudioDeviceError):
    """A device that was open failed mid-stream (unplugged, or an I/O error)."""
