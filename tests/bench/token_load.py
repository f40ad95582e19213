"""The load generator of bench_tokens, run as its own process: requests signed beforehand.

`python -m tests.bench.token_load < spec.json` prints one JSON result on stdout.
The spec names the endpoint and the request: a device's (`POST /v1/calls`, `POST
/v1/grants`, the `POST /v1/checkin` heartbeat), signed by the enrolled devices whose raw
Ed25519 private keys it lists; the same unsigned (the bare endpoint); or LiveKit's
webhooks. Then the phases, and the processes whose CPU time to sample.

Every request is signed before its phase starts (Ed25519 in Python would otherwise
cost this process more than the server's verification costs the server), with a
fresh nonce and a timestamp that stays inside the backend's `max_clock_skew_s`
for the whole run. Devices are used round-robin.

Phases, on keep-alive aiohttp connections (or, with `new_connections`, a new TCP
connection for every request, as a device that checks in once a minute makes):
- warm-up: closed loop at `concurrency`, results dropped;
- max rate: closed loop, `concurrency` requests always in flight, for `max_rate_s`;
- latency (unless `latency_s` is 0): open loop, one request every 1/`rate` s on a fixed
  schedule whatever the answers do, for `latency_s`; latency runs from the scheduled
  send time to the end of the answer, so a backlog shows as latency (no coordinated
  omission).

Only 2xx answers count as served; any other status (0: transport error or timeout)
is reported by the caller.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.json_format import MessageToJson
from livekit.api import AccessToken, WebhookEvent
from livekit.protocol.models import ParticipantInfo, Room, TrackInfo, TrackSource, TrackType

from provisioning.livekit_events import WEBHOOK_PATH
from tests.provisioning.conftest import TestDevice

REQUEST_TIMEOUT_S = 10.0
AGENT_IDENTITY = "agent-AJ_bench"
MICROPHONE = TrackInfo(
    sid="TR_bench", type=TrackType.AUDIO, source=TrackSource.MICROPHONE, mime_type="audio/opus"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Request:
    """One request ready to send: headers already signed."""

    method: str
    url: str
    body: bytes
    headers: dict[str, str]


def presign(
    devices: list[TestDevice], count: int, *, base: str, method: str, path: str, body: bytes
) -> list[Request]:
    """`count` requests, signed round-robin by `devices`, each with its own nonce."""
    url = base + path
    if not devices:
        return [Request(method, url, body, {"Content-Type": "application/json"})] * count
    timestamp = int(time.time())
    return [
        Request(
            method,
            url,
            body,
            devices[i % len(devices)].headers(method, path, body, timestamp=timestamp),
        )
        for i in range(count)
    ]


def webhooks(
    count: int, *, base: str, api_key: str, api_secret: str, identities: list[str]
) -> list[Request]:
    """`count` of LiveKit's webhooks, signed as LiveKit signs them, each with its own event id:
    the 8 events of one call at a time (a device's, round-robin over `identities`, and its
    agent's), all of them ones the backend records and needs to do nothing about."""
    requests: list[Request] = []
    call = 0
    while len(requests) < count:
        room = f"call-c-{secrets.token_hex(8)}"
        device = identities[call % len(identities)]
        call += 1
        for kind, identity, track in (
            ("room_started", "", None),
            ("participant_joined", device, None),
            ("participant_joined", AGENT_IDENTITY, None),
            ("track_published", device, MICROPHONE),
            ("track_published", AGENT_IDENTITY, MICROPHONE),
            ("participant_left", AGENT_IDENTITY, None),
            ("participant_left", device, None),
            ("room_finished", "", None),
        ):
            event = WebhookEvent(
                event=kind,
                id="EV_" + secrets.token_hex(6),
                created_at=int(time.time()),
                room=Room(name=room, sid="RM_" + room[-12:]),
            )
            if identity:
                event.participant.CopyFrom(ParticipantInfo(identity=identity, sid="PA_bench"))
            if track is not None:
                event.track.CopyFrom(track)
            body = MessageToJson(event).encode()
            digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
            token = AccessToken(api_key, api_secret).with_sha256(digest).to_jwt()
            headers = {"Content-Type": "application/webhook+json", "Authorization": token}
            requests.append(Request("POST", base + WEBHOOK_PATH, body, headers))
    return requests[:count]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    """The direct children of a process (PostgreSQL's backends of a postmaster)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def core_busy_seconds() -> dict[str, float]:
    """CPU time each core spent busy so far (all processes), by core number."""
    busy = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name.startswith("cpu") and name != "cpu":
            values = [int(tick) for tick in ticks]
            # user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
            busy[name.removeprefix("cpu")] = (sum(values[:8]) - values[3] - values[4]) / CLK_TCK
    return busy


@dataclass
class CpuMeter:
    """CPU seconds used by the server, the database's processes, this process, and each core
    (so what other processes took from the measured cores shows)."""

    server_pid: int
    postmaster_pid: int | None
    start: dict[str, float] = field(default_factory=dict)
    _db_start: dict[int, float] = field(default_factory=dict)
    _cores_start: dict[str, float] = field(default_factory=dict)

    def _db(self) -> dict[int, float]:
        if self.postmaster_pid is None:
            return {}
        pids = [self.postmaster_pid, *children(self.postmaster_pid)]
        return {pid: cpu_seconds(pid) for pid in pids}

    def begin(self) -> None:
        self.start = {"server": cpu_seconds(self.server_pid), "client": time.process_time()}
        self._db_start = self._db()
        self._cores_start = core_busy_seconds()

    def end(self, wall_s: float) -> dict[str, float]:
        """Per cent of one core each used since `begin`."""
        db_now = self._db()
        db_used = sum(now - self._db_start.get(pid, 0.0) for pid, now in db_now.items())
        used = {
            "server": cpu_seconds(self.server_pid) - self.start["server"],
            "client": time.process_time() - self.start["client"],
            "database": db_used,
        }
        for core, busy in core_busy_seconds().items():
            used[f"core{core}"] = busy - self._cores_start.get(core, busy)
        return {name: round(100 * seconds / wall_s, 1) for name, seconds in used.items()}


@dataclass
class Phase:
    """What one phase saw: answers by status, latencies of the 201s, wall time."""

    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    # Open loop: how late this process itself started each request (its own share of latency).
    send_lags_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    def result(self, cpu: dict[str, float]) -> dict[str, Any]:
        ok = sum(n for status, n in self.statuses.items() if 200 <= status < 300)
        ordered = sorted(self.latencies_ms)
        return {
            "ok": ok,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "wall_s": round(self.wall_s, 3),
            "rate": round(ok / self.wall_s, 1) if self.wall_s else 0.0,
            "p50_ms": percentile(ordered, 50),
            "p90_ms": percentile(ordered, 90),
            "p99_ms": percentile(ordered, 99),
            "max_ms": ordered[-1] if ordered else None,
            "send_lag_p99_ms": percentile(sorted(self.send_lags_ms), 99),
            "cpu_pct": cpu,
        }


def percentile(ordered: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of sorted values (None when there are none)."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * pct // 100))
    return round(ordered[int(rank) - 1], 2)


async def _send(session: aiohttp.ClientSession, request: Request) -> int:
    try:
        async with session.request(
            request.method, request.url, data=request.body, headers=request.headers
        ) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return 0  # a transport error or a timeout, counted as status 0


async def closed_loop(
    session: aiohttp.ClientSession,
    requests: Iterator[Request],
    *,
    concurrency: int,
    seconds: float,
) -> Phase:
    """`concurrency` workers, each sending its next request as soon as one is answered."""
    phase = Phase()
    start = time.perf_counter()
    deadline = start + seconds

    async def worker() -> None:
        for request in requests:
            sent = time.perf_counter()
            if sent >= deadline:
                return
            status = await _send(session, request)
            phase.statuses[status] += 1
            if 200 <= status < 300:
                phase.latencies_ms.append(1000 * (time.perf_counter() - sent))

    async with asyncio.TaskGroup() as group:
        for i in range(concurrency):
            group.create_task(worker(), name=f"load-worker-{i}")
    phase.wall_s = time.perf_counter() - start
    return phase


async def open_loop(
    session: aiohttp.ClientSession, requests: list[Request], *, rate: float
) -> Phase:
    """Send `requests[i]` at start + i/rate whatever the earlier ones are doing."""
    phase = Phase()
    start = time.perf_counter()

    async def one(request: Request, scheduled: float) -> None:
        phase.send_lags_ms.append(1000 * (time.perf_counter() - scheduled))
        status = await _send(session, request)
        phase.statuses[status] += 1
        if 200 <= status < 300:
            phase.latencies_ms.append(1000 * (time.perf_counter() - scheduled))

    async with asyncio.TaskGroup() as group:
        for i, request in enumerate(requests):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            group.create_task(one(request, scheduled), name=f"load-request-{i}")
    phase.wall_s = time.perf_counter() - start
    return phase


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the phases of `spec` against its endpoint; the result of each phase."""
    devices = [
        TestDevice(key=Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key)))
        for key in spec["device_keys"]
    ]
    concurrency = int(spec["concurrency"])
    rate = float(spec["rate"])
    meter = CpuMeter(spec["server_pid"], spec.get("postmaster_pid"))

    def build(count: int) -> list[Request]:
        if "webhook" in spec:
            return webhooks(count, base=spec["url"], **spec["webhook"])
        return presign(
            devices,
            count,
            base=spec["url"],
            method=spec["method"],
            path=spec["path"],
            body=spec["body"].encode(),
        )

    t0 = time.perf_counter()
    warmup = build(spec["warmup_requests"])
    closed = build(spec["max_requests"])
    paced = build(round(rate * spec["latency_s"]))
    result: dict[str, Any] = {
        "presigned": len(warmup) + len(closed) + len(paced),
        "presign_s": round(time.perf_counter() - t0, 2),
    }
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    # No connection limit: the open loop needs more connections than the closed loop when
    # answers lag, and a wait for a connection would hide the backlog.
    connector = aiohttp.TCPConnector(limit=0, force_close=bool(spec.get("new_connections")))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await closed_loop(session, iter(warmup), concurrency=concurrency, seconds=spec["warmup_s"])
        meter.begin()
        phase = await closed_loop(
            session, iter(closed), concurrency=concurrency, seconds=spec["max_rate_s"]
        )
        result["max_rate"] = phase.result(meter.end(phase.wall_s))
        result["max_rate"]["exhausted"] = sum(phase.statuses.values()) >= len(closed)
        if paced:
            await asyncio.sleep(spec["pause_s"])
            meter.begin()
            phase = await open_loop(session, paced, rate=rate)
            result["latency"] = phase.result(meter.end(phase.wall_s))
    return result


def main() -> int:
    spec = json.load(sys.stdin)
    print(json.dumps(asyncio.run(asyncio.wait_for(run(spec), spec["time_limit_s"]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
