"""The one error catalogue: each code's LED blink count, journal ERROR_CODE and doctor lines.

docs/errors.md lists it; tests hold that page, the LED's `PATTERNS` and the journal's
`ERROR_CODE` field to this table. Codes never change meaning; retired ones are not reused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from appliance.state import State


class ErrorCode(StrEnum):
    """A failure a technician can be told about; `E` + two digits, the blinks for LED codes."""

    SETTINGS_INVALID = "E01"
    CALL_FAILED = "E02"
    BACKEND_UNREACHABLE = "E03"
    CREDENTIALS_REJECTED = "E04"
    RATE_LIMITED = "E05"
    AUDIO_FAULT = "E06"
    TOKEN_REJECTED = "E07"
    ENROLLMENT_CODE_REFUSED = "E08"
    SERVICE_UNAVAILABLE = "E93"
    SERVICE_MISCONFIGURED = "E94"
    SERVICE_OUT_OF_CREDIT = "E95"
    KEY_PROBLEM = "E11"
    NOT_ENROLLED = "E12"
    NOT_APPROVED = "E13"
    CLOCK_OFFSET = "E14"
    DNS_FAILED = "E15"
    TLS_FAILED = "E16"
    HTTP_FAILED = "E17"
    LIVEKIT_UNREACHABLE = "E18"
    MICROPHONE = "E19"
    SPEAKER = "E20"
    WAKE_WORD = "E21"
    BUTTON_PIN = "E22"
    LED_PIN = "E23"


@dataclass(frozen=True)
class CatalogueEntry:
    """What one code means, where it shows, and what to do about it."""

    code: ErrorCode
    summary: str
    action: str
    blinks: int | None = None  # the LED's blink code, where the LED shows it
    lead: bool = False  # E9N: one long blink before the N short ones (the platform's faults)
    state: State | None = None  # the daemon's state that carries it in the journal


_ENTRIES = (
    CatalogueEntry(
        ErrorCode.SETTINGS_INVALID,
        "the settings file or the card's kiosk.txt is missing, malformed or has a bad key",
        "read the message: it names the file and the key; fix it and restart (or reboot)",
        blinks=1,
    ),
    CatalogueEntry(
        ErrorCode.CALL_FAILED,
        "LiveKit join failed or no agent joined (shown 2 s)",
        "check the LiveKit server and that the agent worker runs and is registered",
        blinks=2,
        state=State.CALL_FAILED,
    ),
    CatalogueEntry(
        ErrorCode.BACKEND_UNREACHABLE,
        "the backend is down, slow or answers 5xx",
        "check the network, DNS, backend.url and the backend itself",
        blinks=3,
        state=State.BACKEND_UNREACHABLE,
    ),
    CatalogueEntry(
        ErrorCode.CREDENTIALS_REJECTED,
        "401/403: unknown or revoked device, bad signature, clock off",
        "compare `appliance key` with `provisioning devices list`; check the clock (NTP)",
        blinks=4,
        state=State.CREDENTIALS_REJECTED,
    ),
    CatalogueEntry(
        ErrorCode.RATE_LIMITED,
        "429 from the backend",
        "wait: the device retries after Retry-After",
        blinks=5,
        state=State.RATE_LIMITED,
    ),
    CatalogueEntry(
        ErrorCode.AUDIO_FAULT,
        "microphone or speaker missing, busy, unplugged or in the wrong format",
        "check the sound card and the board profile; run `appliance audio-test`",
        blinks=6,
        state=State.AUDIO_FAULT,
    ),
    CatalogueEntry(
        ErrorCode.TOKEN_REJECTED,
        "LiveKit refused the call token twice, a fresh one too",
        "check the device clock (CLOCK_OFFSET_S in the journal), NTP, the backend's LiveKit keys",
        blinks=7,
        state=State.TOKEN_REJECTED,
    ),
    CatalogueEntry(
        ErrorCode.ENROLLMENT_CODE_REFUSED,
        "first boot: the backend refused the enrollment code (unknown, used or expired)",
        "create a new code (`provisioning enroll-code create`), write it to kiosk.txt, reboot",
        blinks=8,
    ),
    CatalogueEntry(
        ErrorCode.SERVICE_UNAVAILABLE,
        "the hosted platform behind the backend is down or slow (5xx or no answer in time)",
        "check the platform's status page; the device retries on the next press",
        blinks=3,
        lead=True,
        state=State.SERVICE_UNAVAILABLE,
    ),
    CatalogueEntry(
        ErrorCode.SERVICE_MISCONFIGURED,
        "the platform refused the fleet's API key or request (401/403/400), or the "
        "device's provider settings are incomplete: not this device's credentials",
        "check the backend's [platforms] api_key_file and the provider settings (agent id)",
        blinks=4,
        lead=True,
        state=State.SERVICE_MISCONFIGURED,
    ),
    CatalogueEntry(
        ErrorCode.SERVICE_OUT_OF_CREDIT,
        "the platform's account has no credit left (402)",
        "top up the fleet's account on the platform; the next press tries again",
        blinks=5,
        lead=True,
        state=State.SERVICE_OUT_OF_CREDIT,
    ),
    CatalogueEntry(
        ErrorCode.KEY_PROBLEM,
        "the device key is missing, unreadable, not Ed25519, or readable by others",
        "the daemon makes the key on first start; a key others can read is refused: chmod 600",
    ),
    CatalogueEntry(
        ErrorCode.NOT_ENROLLED,
        "the device has no enrollment",
        "run `appliance enroll --code CODE`, or write the code to the card's kiosk.txt",
    ),
    CatalogueEntry(
        ErrorCode.NOT_APPROVED,
        "the backend knows the device but does not list it as approved",
        "approve the device on the backend (`provisioning devices list`)",
    ),
    CatalogueEntry(
        ErrorCode.CLOCK_OFFSET,
        "the device clock is off from the backend's",
        "check NTP (`timedatectl`); requests more than max_clock_skew_s off are refused",
    ),
    CatalogueEntry(
        ErrorCode.DNS_FAILED,
        "the backend's host name does not resolve",
        "check DNS (`resolvectl status`) and the host in backend.url",
    ),
    CatalogueEntry(
        ErrorCode.TLS_FAILED,
        "no TLS connection to the backend (certificate, clock, or not TLS at all)",
        "check the backend's certificate and the device clock; http:// vs https:// in backend.url",
    ),
    CatalogueEntry(
        ErrorCode.HTTP_FAILED,
        "the backend cannot be connected to, or its answer is not the kiosk API",
        "check the port in backend.url, firewalls and proxies, and that the backend runs",
    ),
    CatalogueEntry(
        ErrorCode.LIVEKIT_UNREACHABLE,
        "the LiveKit server cannot be reached, or refuses the backend's tokens",
        "check the LiveKit URL the backend hands out and the backend's LiveKit keys",
    ),
    CatalogueEntry(
        ErrorCode.MICROPHONE,
        "the microphone cannot be opened, or hears nothing",
        "check capture_device in the board profile (`arecord -L`) and the capture gain",
    ),
    CatalogueEntry(
        ErrorCode.SPEAKER,
        "the speaker cannot be opened",
        "check playback_device in the board profile (`aplay -L`) and the wiring",
    ),
    CatalogueEntry(
        ErrorCode.WAKE_WORD,
        "the wake-word engine does not load",
        "check [wake] in the settings (engine, model, AccessKey) and that the engine is installed",
    ),
    CatalogueEntry(
        ErrorCode.BUTTON_PIN,
        "a button pin cannot be claimed",
        "check call_pin / mute_pin in the board profile and the gpio group (udev rule)",
    ),
    CatalogueEntry(
        ErrorCode.LED_PIN,
        "the status LED pin cannot be claimed",
        "check status_pin in the board profile; without PWM on that pin set leds.pwm = false",
    ),
)

CATALOGUE: Mapping[ErrorCode, CatalogueEntry] = MappingProxyType({e.code: e for e in _ENTRIES})
_BY_STATE = {e.state: e.code for e in _ENTRIES if e.state is not None}


def code_for_state(state: State) -> ErrorCode | None:
    """The code a fault state carries in the journal (`ERROR_CODE`), None for other states."""
    return _BY_STATE.get(state)


def entry(code: ErrorCode) -> CatalogueEntry:
    """The catalogue's entry for `code`."""
    return CATALOGUE[code]
