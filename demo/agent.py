"""The demo voice agent: a LiveKit agent worker dispatched by name, without livekit-agents.

It speaks the agent worker protocol (protobuf over the server's `/agent` websocket) itself:
register, accept availability requests, join rooms on assignment, report job and worker status.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Self

import aiohttp
from livekit import api
from livekit.protocol import agent as agent_pb
from livekit.protocol import models as models_pb

from appliance.aio import AsyncResource, cancel_and_wait
from demo.agent_session import AGENT_STATE_ATTRIBUTE, AgentSession, AgentState, SessionOptions
from demo.errors import DemoError
from demo.tts import SpeechSynthesizer

logger = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"


class WorkerProtocolError(DemoError, ConnectionError):
    """The server broke the agent worker protocol, or refused the worker."""


def agent_ws_url(url: str) -> str:
    """Turn a LiveKit server URL (ws, wss, http, https) into its agent worker endpoint."""
    base = url.rstrip("/")
    for plain, ws in (("http://", "ws://"), ("https://", "wss://")):
        if base.startswith(plain):
            base = ws + base[len(plain) :]
    return base + "/agent"


class DemoAgent(AsyncResource):
    """An agent worker registered under `agent_name`; each dispatch becomes an AgentSession."""

    def __init__(
        self,
        *,
        url: str,
        api_key: str,
        api_secret: str,
        agent_name: str,
        greeting: str = SessionOptions.greeting,
        goodbye: str = SessionOptions.goodbye,
        end_after_turns: int | None = None,
        max_session_s: float = 300.0,
        status_interval_s: float = 2.5,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        register_timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.agent_name = agent_name
        self.sessions: list[AgentSession] = []
        self.worker_id: str | None = None
        self.registrations = 0
        self._api_key = api_key
        self._api_secret = api_secret
        self._options = SessionOptions(
            greeting=greeting,
            goodbye=goodbye,
            end_after_turns=end_after_turns,
            max_session_s=max_session_s,
        )
        self._status_interval_s = status_interval_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._register_timeout_s = register_timeout_s
        self._synth = SpeechSynthesizer()
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._registration_changed = asyncio.Condition()
        self._new_sessions: asyncio.Queue[AgentSession] = asyncio.Queue()
        self._worker_task: asyncio.Task[None] | None = None
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker loop (it connects and reconnects in the background)."""
        if self._worker_task is not None:
            return
        self._http = aiohttp.ClientSession()
        self._worker_task = asyncio.create_task(self._worker_loop(), name="demo-agent-worker")

    async def wait_registered(self, timeout: float, *, after: int = 0) -> None:  # noqa: ASYNC109
        """Wait until the server has accepted more than `after` registrations of this worker."""
        async with asyncio.timeout(timeout), self._registration_changed:
            await self._registration_changed.wait_for(lambda: self.registrations > after)

    async def next_session(self, timeout: float) -> AgentSession:  # noqa: ASYNC109 (test API)
        """Return the next dispatched session (in dispatch order) once it has joined its room."""
        async with asyncio.timeout(timeout):
            return await self._new_sessions.get()

    async def aclose(self) -> None:
        """End every session politely, then stop the worker and await all tasks."""
        self._closing = True
        for session in self.sessions:
            session.request_stop()
        if self._job_tasks:
            _done, pending = await asyncio.wait(self._job_tasks, timeout=10.0)
            await cancel_and_wait(*pending)
        await cancel_and_wait(self._worker_task)
        self._worker_task = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> Self:
        """Start the worker and wait until the server has accepted its registration."""
        await super().__aenter__()
        try:
            await self.wait_registered(self._register_timeout_s)
        except BaseException:
            await self.aclose()
            raise
        return self

    # -- worker connection -----------------------------------------------------------------------

    async def _worker_loop(self) -> None:
        delay = self._backoff_initial_s
        while True:
            registrations = self.registrations
            try:
                await self._run_connection()
                logger.warning("agent worker connection closed by the server")
            except (aiohttp.ClientError, OSError, TimeoutError, WorkerProtocolError) as exc:
                logger.warning(
                    "agent worker connection failed",
                    extra={"error": repr(exc), "retry_in_s": delay},
                )
            except Exception:
                # Task boundary: a bug in one connection must not end the worker for good.
                logger.exception("agent worker connection crashed", extra={"retry_in_s": delay})
            if self.registrations > registrations:
                delay = self._backoff_initial_s
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_max_s)

    async def _run_connection(self) -> None:
        assert self._http is not None
        token = (
            api.AccessToken(self._api_key, self._api_secret)
            .with_grants(api.VideoGrants(agent=True))
            .with_ttl(datetime.timedelta(minutes=10))
            .to_jwt()
        )
        async with self._http.ws_connect(
            agent_ws_url(self.url),
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            heartbeat=15.0,
        ) as ws:
            await ws.send_bytes(self._register_message().SerializeToString())
            async with asyncio.timeout(self._register_timeout_s):
                first = await ws.receive()
            reply = _parse_server_message(first)
            if reply is None or reply.WhichOneof("message") != "register":
                raise WorkerProtocolError("expected a register response from the server")
            self.worker_id = reply.register.worker_id
            self.registrations += 1
            self._ws = ws
            async with self._registration_changed:
                self._registration_changed.notify_all()
            logger.info(
                "agent worker registered",
                extra={"worker_id": self.worker_id, "agent_name": self.agent_name},
            )
            status = asyncio.create_task(self._status_loop(), name="demo-agent-worker-status")
            try:
                async for raw in ws:
                    message = _parse_server_message(raw)
                    if message is None:
                        break
                    await self._handle(message)
            finally:
                self._ws = None
                await cancel_and_wait(status)

    def _register_message(self) -> agent_pb.WorkerMessage:
        return agent_pb.WorkerMessage(
            register=agent_pb.RegisterWorkerRequest(
                type=agent_pb.JobType.JT_ROOM,
                agent_name=self.agent_name,
                version=AGENT_VERSION,
                allowed_permissions=models_pb.ParticipantPermission(
                    can_publish=True,
                    can_subscribe=True,
                    can_publish_data=True,
                    can_update_metadata=True,
                    agent=True,
                ),
            )
        )

    async def _status_loop(self) -> None:
        while True:
            active = sum(1 for s in self.sessions if not s.ended.is_set())
            status = agent_pb.WorkerStatus.WS_FULL if self._closing else agent_pb.WS_AVAILABLE
            await self._send(
                agent_pb.WorkerMessage(
                    update_worker=agent_pb.UpdateWorkerStatus(
                        status=status, load=0.0, job_count=active
                    )
                )
            )
            await asyncio.sleep(self._status_interval_s)

    async def _send(self, message: agent_pb.WorkerMessage) -> bool:
        ws = self._ws
        if ws is None or ws.closed:
            return False
        async with self._send_lock:
            try:
                await ws.send_bytes(message.SerializeToString())
            except (aiohttp.ClientError, ConnectionError) as exc:
                logger.warning("could not send to the server", extra={"error": repr(exc)})
                return False
        return True

    async def _handle(self, message: agent_pb.ServerMessage) -> None:
        kind = message.WhichOneof("message")
        if kind == "availability":
            job = message.availability.job
            await self._send(
                agent_pb.WorkerMessage(
                    availability=agent_pb.AvailabilityResponse(
                        job_id=job.id,
                        available=not self._closing,
                        participant_identity=f"agent-{job.id}",
                        participant_name="Demo agent",
                        participant_attributes={
                            AGENT_STATE_ATTRIBUTE: AgentState.INITIALIZING.value
                        },
                    )
                )
            )
        elif kind == "assignment":
            assignment = message.assignment
            session = AgentSession(
                job_id=assignment.job.id,
                room_name=assignment.job.room.name,
                url=assignment.url or self.url,
                token=assignment.token,
                options=self._options,
                synthesizer=self._synth,
            )
            self.sessions.append(session)
            task = asyncio.create_task(
                self._run_job(session), name=f"demo-agent-job-{session.job_id}"
            )
            self._job_tasks.add(task)
            task.add_done_callback(self._job_tasks.discard)
        elif kind == "termination":
            for session in self.sessions:
                if session.job_id == message.termination.job_id:
                    session.request_stop()
        elif kind == "register":
            raise WorkerProtocolError("unexpected second register response")
        # pong and go_away need no answer here; go_away is followed by a close.

    async def _run_job(self, session: AgentSession) -> None:
        extra = {"job_id": session.job_id, "room": session.room_name}
        try:
            await session.start()
        except Exception as exc:
            logger.exception("agent could not join its room", extra=extra)
            await self._update_job(session.job_id, agent_pb.JS_FAILED, error=str(exc))
            return
        await self._update_job(session.job_id, agent_pb.JS_RUNNING)
        self._new_sessions.put_nowait(session)
        try:
            await session.ended.wait()
        finally:
            if not session.ended.is_set():
                await asyncio.shield(session.aclose())
        status = agent_pb.JS_FAILED if session.error else agent_pb.JS_SUCCESS
        error = repr(session.error) if session.error else ""
        await self._update_job(session.job_id, status, error=error)

    async def _update_job(self, job_id: str, status: agent_pb.JobStatus, error: str = "") -> None:
        await self._send(
            agent_pb.WorkerMessage(
                update_job=agent_pb.UpdateJobStatus(job_id=job_id, status=status, error=error)
            )
        )


def _parse_server_message(raw: aiohttp.WSMessage) -> agent_pb.ServerMessage | None:
    """Decode one websocket message; None when the socket is closing."""
    if raw.type == aiohttp.WSMsgType.BINARY:
        message = agent_pb.ServerMessage()
        try:
            message.ParseFromString(raw.data)
        except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
            raise WorkerProtocolError("undecodable message from the server") from exc
        return message
    if raw.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
        return None
    if raw.type == aiohttp.WSMsgType.ERROR:
        raise WorkerProtocolError(f"websocket error: {raw.data!r}")
    raise WorkerProtocolError(f"unexpected websocket message type {raw.type!r}")


# -- command line -------------------------------------------------------------------------------


def _read_secret(path: str | None, environ: dict[str, str]) -> str:
    if path is not None:
        secret = Path(path).read_text().strip()
    else:
        secret = environ.get("LIVEKIT_API_SECRET", "")
    if not secret:
        raise SystemExit("no API secret: pass --api-secret-file or set LIVEKIT_API_SECRET")
    return secret


def build_parser() -> argparse.ArgumentParser:
    """The `python -m demo.agent` argument parser (the secret is never an argument)."""
    parser = argparse.ArgumentParser(prog="python -m demo.agent", description=__doc__)
    parser.add_argument("--url", required=True, help="LiveKit server URL, e.g. ws://127.0.0.1:7880")
    parser.add_argument("--api-key", required=True)
    parser.add_argument(
        "--api-secret-file", help="file holding the API secret (default: $LIVEKIT_API_SECRET)"
    )
    parser.add_argument("--agent-name", required=True)
    parser.add_argument("--greeting", default=SessionOptions.greeting)
    parser.add_argument("--end-after-turns", type=int, default=None)
    parser.add_argument("--max-session-s", type=float, default=300.0)
    parser.add_argument("--log-level", default="INFO")
    return parser


async def _serve(args: argparse.Namespace, secret: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    agent = DemoAgent(
        url=args.url,
        api_key=args.api_key,
        api_secret=secret,
        agent_name=args.agent_name,
        greeting=args.greeting,
        end_after_turns=args.end_after_turns,
        max_session_s=args.max_session_s,
    )
    await agent.start()
    try:
        await stop.wait()
    finally:
        await agent.aclose()


def main(argv: list[str] | None = None) -> int:
    """Run the demo agent until SIGINT or SIGTERM."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    secret = _read_secret(args.api_secret_file, dict(os.environ))
    asyncio.run(_serve(args, secret))
    return 0


if __name__ == "__main__":
    sys.exit(main())
