"""The call worker's wire: framed audio and JSON messages over one stream socket.

A frame is a kind byte, a 4-byte big-endian length and the payload. `AUDIO` carries one
10 ms frame of 48 kHz mono int16 samples (the device's microphone towards the worker, the
agent's voice back); `MESSAGE` a JSON object with a "type" (commands, call events, log
records). Both ends are ours and are started together, so there is no version check.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import struct
from enum import StrEnum
from typing import Any

from appliance.call.events import (
    AgentActivity,
    AgentAudioStarted,
    AgentStateChanged,
    CallEvent,
    Disconnected,
    EndRequested,
    FarEndAnswered,
    PartyJoined,
    PartyLeft,
    PlatformEnded,
    Reconnected,
    Reconnecting,
    Speaker,
    SpeechActivity,
    ToolCall,
    Transcript,
)
from appliance.errors import CallError
from appliance.state import EndReason
from appliance.vocabulary import PartyKind

AUDIO = 1
MESSAGE = 2
_HEADER = struct.Struct("!BI")
# Far above any frame or message the two ends send (a status message is ~200 bytes).
MAX_PAYLOAD = 1 << 20

Message = dict[str, Any]

_EVENTS: dict[str, type[CallEvent]] = {
    cls.__name__: cls
    for cls in (
        PartyJoined,
        AgentAudioStarted,
        PartyLeft,
        Disconnected,
        EndRequested,
        SpeechActivity,
        Reconnecting,
        Reconnected,
        Transcript,
        AgentStateChanged,
        FarEndAnswered,
        PlatformEnded,
        ToolCall,
    )
}
# Fields that are enums on our side and their values on the wire.
_ENUM_FIELDS: dict[str, type[StrEnum]] = {
    "kind": PartyKind,
    "speaker": Speaker,
    "state": AgentActivity,
}


class WireError(CallError):
    """The other end sent something that is not a frame of this protocol."""


def event_message(event: CallEvent) -> Message:
    """A call event as a message: {"type": "event", "event": "PartyJoined", "identity": …}."""
    fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    if isinstance(event, EndRequested):
        fields["reason"] = event.reason.value
    for name, value in fields.items():
        if isinstance(value, StrEnum):
            fields[name] = value.value
    return {"type": "event", "event": type(event).__name__, **fields}


def parse_event(message: Message) -> CallEvent:
    """The call event an `event_message` carries; WireError if it is not one."""
    fields = {k: v for k, v in message.items() if k not in ("type", "event")}
    cls = _EVENTS.get(str(message.get("event")))
    try:
        if cls is None:
            raise ValueError("unknown event")
        if cls is EndRequested:
            return EndRequested(EndReason(fields.pop("reason")))
        for name, enum in _ENUM_FIELDS.items():
            if fields.get(name) is not None:
                fields[name] = enum(fields[name])
        if cls is ToolCall and not isinstance(fields.get("args", {}), dict):
            raise ValueError("tool arguments are not an object")
        return cls(**fields)
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"not a call event: {message.get('event')!r}") from exc


class Channel:
    """One end of the wire: frames out with `send`/`send_audio`, in with `receive`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def over(cls, sock: Any) -> Channel:
        """A channel over a connected stream socket (one end of a socketpair)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        return self._writer.is_closing()

    def send(self, message: Message) -> None:
        """Queue a message; silently dropped once the channel is closed."""
        self._write(MESSAGE, json.dumps(message, separators=(",", ":")).encode())

    def send_audio(self, frame: bytes) -> None:
        """Queue one audio frame; silently dropped once the channel is closed."""
        self._write(AUDIO, frame)

    def _write(self, kind: int, payload: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(_HEADER.pack(kind, len(payload)) + payload)

    async def drain(self) -> None:
        """Wait while the other end is behind (the socket's buffer is full). A lost
        connection is not raised here: `receive` reports it as the end of the stream."""
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    async def receive(self) -> bytes | Message | None:
        """The next audio frame (bytes) or message (dict); None at the end of the stream."""
        try:
            kind, length = _HEADER.unpack(await self._reader.readexactly(_HEADER.size))
            if length <= MAX_PAYLOAD:
                payload = await self._reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise WireError("the stream ended inside a frame") from exc
            return None
        except ConnectionError:  # reset, or a write found the other end gone
            return None
        if length > MAX_PAYLOAD:
            raise WireError(f"a frame of {length} bytes")
        if kind == AUDIO:
            return payload
        if kind != MESSAGE:
            raise WireError(f"a frame of unknown kind {kind}")
        try:
            message = json.loads(payload)
        except ValueError as exc:
            raise WireError("a message that is not JSON") from exc
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise WireError("a message without a type")
        return message

    async def aclose(self) -> None:
        """Close our end; the other end reads the end of the stream."""
        self._writer.close()
        with contextlib.suppress(ConnectionError):  # the other end went first: closed anyway
            await self._writer.wait_closed()
