"""The call worker process: `python -m appliance.call.worker --fd N` serves one call.

The daemon starts it while idle (`workers.py`), so the LiveKit SDK's native runtime is up
before a press; on the press it sends `connect` and the room joins at once. Everything the
SDK allocates for the call dies with this process when the call is over. The wire is
`wire.py`: the daemon sends `connect`, `status`, `mute`, `warn`, `tool_result`, `close` and
microphone frames;
this process answers `ready`, `connected` / `connect_failed`, `closed`, call events,
the agent's audio frames and its own log records (redacted here, and again by the
daemon's handlers). The daemon closing its end of the socket ends the call and the process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

from appliance.call.conventions import for_provider
from appliance.call.events import CallEvent
from appliance.call.livekit_call import LiveKitRoom
from appliance.call.wire import Channel, Message, WireError, event_message
from appliance.errors import CallError, TokenRefusedError
from appliance.status.journal import FIELDS
from appliance.status.redact import RedactingStream, install

logger = logging.getLogger(__name__)

# systemd stops the service by sending SIGTERM to every process of its cgroup at once: the
# daemon then ends the call politely through this process and closes the socket. Past this
# grace (also the end of a native panic, which the SDK answers with SIGTERM) it exits anyway.
TERM_GRACE_S = 15.0


class _Forward(logging.Handler):
    """Sends each record to the daemon, which logs it through its own handlers."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self._channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc_text = record.exc_text
            if record.exc_info and not exc_text:
                exc_text = logging.Formatter().formatException(record.exc_info)
            fields = {k: str(getattr(record, k)) for k in FIELDS if hasattr(record, k)}
            self._channel.send(
                {
                    "type": "log",
                    "name": record.name,
                    "level": record.levelno,
                    "msg": record.getMessage(),
                    "exc": exc_text,
                    "fields": fields,
                }
            )
        except Exception:
            self.handleError(record)


class _Session:
    """One call's commands, in order, against one `LiveKitRoom`."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._room: LiveKitRoom | None = None

    async def run(self) -> None:
        try:
            while (item := await self._channel.receive()) is not None:
                if isinstance(item, bytes):
                    if self._room is not None:
                        self._room.push_microphone(item)
                else:
                    await self._command(item)
        finally:
            # The daemon closed its end (or we broke): leave the room before the process ends.
            if self._room is not None:
                await self._room.aclose()

    async def _command(self, message: Message) -> None:
        kind = message["type"]
        room = self._room
        if kind == "connect":
            await self._connect(message)
        elif room is None:
            raise WireError(f"{kind!r} before connect")
        elif kind == "status":
            room.send_status(str(message["payload"]).encode())
        elif kind == "mute":
            room.set_muted(bool(message["muted"]))
        elif kind == "warn":
            room.play_warning()
        elif kind == "tool_result":
            room.answer_tool(str(message["call_id"]), bool(message["ok"]), str(message["output"]))
        elif kind == "close":
            await room.aclose()
            self._channel.send({"type": "closed"})
        else:
            raise WireError(f"unknown command {kind!r}")

    async def _connect(self, message: Message) -> None:
        if self._room is not None:
            raise WireError("one call per worker")
        room = self._room = LiveKitRoom(
            call_id=str(message["call_id"]),
            room_name=str(message["room"]),
            on_event=self._event,
            on_agent_audio=self._agent_audio,
            status_topic=str(message["status_topic"]),
            control_topic=str(message["control_topic"]),
            connect_timeout_s=float(message["connect_timeout_s"]),
            muted=bool(message["muted"]),
            conventions=for_provider(str(message.get("provider", "livekit"))),
        )
        try:
            await room.connect(str(message["url"]), str(message["token"]))
        except TokenRefusedError as exc:
            self._channel.send({"type": "connect_failed", "refused": True, "detail": str(exc)})
        except CallError as exc:
            self._channel.send({"type": "connect_failed", "refused": False, "detail": str(exc)})
        else:
            self._channel.send({"type": "connected"})

    def _event(self, event: CallEvent) -> None:
        self._channel.send(event_message(event))

    async def _agent_audio(self, frame: bytes) -> None:
        self._channel.send_audio(frame)
        await self._channel.drain()


async def serve(sock: socket.socket, log_level: int) -> None:
    """Serve the daemon at the other end of `sock` until it closes its end."""
    channel = await Channel.over(sock)
    root = logging.getLogger()
    handler = install(_Forward(channel))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(log_level)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, _terminated, loop)
    try:
        # Imported and started now, while the device is idle, not on the press.
        from livekit.rtc._ffi_client import FfiClient

        FfiClient.instance  # noqa: B018
        channel.send({"type": "ready", "pid": os.getpid()})
        await _Session(channel).run()
    except Exception:
        logger.exception("the call worker failed")
        raise
    finally:
        root.removeHandler(handler)
        await channel.aclose()


def _terminated(loop: asyncio.AbstractEventLoop) -> None:
    logger.info("SIGTERM: leaving once the daemon has ended the call, within %.0f s", TERM_GRACE_S)
    loop.call_later(TERM_GRACE_S, os._exit, 143)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m appliance.call.worker")
    parser.add_argument("--fd", type=int, required=True, help="our end of the socketpair")
    parser.add_argument("--log-level", type=int, default=logging.INFO)
    args = parser.parse_args(argv)
    # Whatever reaches this process's own stderr (logging's last resort before and after
    # the daemon's channel, a traceback) is masked too: a refused token is in the SDK's lines.
    sys.stderr = RedactingStream(sys.stderr)
    if logging.lastResort is not None:
        install(logging.lastResort)
    # Ctrl-C in a terminal reaches the whole process group: the daemon decides what ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    status = 0
    try:
        asyncio.run(serve(socket.socket(fileno=args.fd), args.log_level))
    except Exception:
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # Not the interpreter's exit: the SDK's atexit hook disposes its native runtime, which
    # has panicked doing so ("panic in a function that cannot unwind"). The kernel frees
    # everything the call used.
    os._exit(status)


if __name__ == "__main__":
    main()
