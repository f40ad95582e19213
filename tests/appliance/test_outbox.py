"""The outbox and the call marker: call reports survive a down backend, restarts and junk."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.backoff import Backoff
from appliance.clock import ManualClock, SystemClock
from appliance.errors import (
    BackendProtocolError,
    BackendUnreachableError,
    CredentialsRejectedError,
    RateLimitedError,
)
from appliance.provisioning_client import DeviceKey, ProvisioningClient
from appliance.provisioning_client.call_marker import (
    MARKER_FILE_NAME,
    UNREADABLE_MARKER_NAME,
    CallMarker,
)
from appliance.provisioning_client.outbox import (
    REJECTED_DIR_NAME,
    WARN_EVERY,
    Outbox,
    Report,
    ReportKind,
)
from appliance.vocabulary import EndReason, Trigger
from provisioning.config import load_config
from provisioning.http import BackendServer

TIMEOUT_S = 5.0
DOCS = Path(__file__).resolve().parents[2] / "docs"


class FakeBackend:
    """A `send` that fails as scripted, recording each attempt's time on the clock."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.failures: list[Exception] = []
        self.attempts: list[tuple[float, Report]] = []
        self.acknowledged: list[Report] = []

    async def send(self, report: Report) -> None:
        self.attempts.append((self.clock.monotonic(), report))
        if self.failures:
            raise self.failures.pop(0)
        self.acknowledged.append(report)

    def attempt_times(self) -> list[float]:
        return [t for t, _ in self.attempts]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def backend(clock: ManualClock) -> FakeBackend:
    return FakeBackend(clock)


def _outbox(directory: Path, backend: FakeBackend) -> Outbox:
    backoff = Backoff(initial_s=1.0, max_s=8.0, jitter=0.0)
    return Outbox(directory, send=backend.send, clock=backend.clock, backoff=backoff)


def _ended(call_id: str, reason: EndReason = EndReason.USER, duration_ms: int = 1000) -> Report:
    return Report.call_ended(call_id, reason, duration_ms, created_at=ManualClock.EPOCH)


def _unreachable() -> BackendUnreachableError:
    return BackendUnreachableError("backend unreachable on POST /v1/calls/c-1/end")


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file())


@pytest.fixture
async def outbox(tmp_path: Path, backend: FakeBackend) -> AsyncIterator[Outbox]:
    async with asyncio.timeout(TIMEOUT_S), _outbox(tmp_path / "outbox", backend) as box:
        yield box


@pytest.mark.unit
def test_report_round_trips_and_keeps_to_the_vocabularies() -> None:
    ended = _ended("c-1", EndReason.AGENT_LEFT, 4200)
    started = Report.call_started("c-1", Trigger.WAKE_WORD, created_at=1.5)
    for report in (ended, started):
        assert Report.from_json(report.to_json()) == report
    assert json.loads(ended.to_json()) == {
        "v": 1,
        "kind": "call_ended",
        "call_id": "c-1",
        "created_at": ManualClock.EPOCH,
        "reason": "agent_left",
        "duration_ms": 4200,
    }
    assert (ended.reason, ended.duration_ms, started.trigger) == ("agent_left", 4200, "wake_word")
    with pytest.raises(AttributeError):
        _ = ended.trigger
    for bad in (
        lambda: Report(ReportKind.CALL_ENDED, "c-1", 1.0, {"reason": "hung_up", "duration_ms": 1}),
        lambda: Report(ReportKind.CALL_ENDED, "c-1", 1.0, {"reason": "user", "duration_ms": -1}),
        lambda: Report(ReportKind.CALL_ENDED, "c-1", 1.0, {"reason": "user", "duration_ms": True}),
        lambda: Report(ReportKind.CALL_ENDED, "c-1", 1.0, {"reason": "user"}),
        lambda: Report(ReportKind.CALL_STARTED, "c-1", 1.0, {"trigger": "knock"}),
        lambda: Report(ReportKind.CALL_STARTED, "", 1.0, {"trigger": "button"}),
        lambda: Report(ReportKind.CALL_STARTED, "c-1", float("nan"), {"trigger": "button"}),
    ):
        with pytest.raises(ValueError):
            bad()


@pytest.mark.unit
def test_an_end_report_may_carry_the_platforms_printable_reason() -> None:
    ended = Report.call_ended(
        "c-1", EndReason.PLATFORM_ENDED, 900, created_at=1.0, detail="call_ended (duration 1 s)"
    )
    assert Report.from_json(ended.to_json()) == ended
    assert ended.detail == "call_ended (duration 1 s)"
    assert _ended("c-2", EndReason.USER, 1).detail is None
    for detail in ("a\x1bb", "x" * 201):
        with pytest.raises(ValueError):
            Report.call_ended("c-1", EndReason.PLATFORM_ENDED, 1, created_at=1.0, detail=detail)
    with pytest.raises(ValueError):
        Report(ReportKind.CALL_STARTED, "c-1", 1.0, {"trigger": "button", "detail": "x"})


@pytest.mark.unit
async def test_reports_are_sent_in_order_and_removed(
    outbox: Outbox, backend: FakeBackend, clock: ManualClock
) -> None:
    reports = [
        Report.call_started("c-1", Trigger.BUTTON, created_at=1.0),
        _ended("c-1"),
        _ended("c-2"),
    ]
    for report in reports:
        assert outbox.put(report)
    assert outbox.pending() == reports
    async with asyncio.timeout(TIMEOUT_S):
        await outbox.drained()
    assert backend.acknowledged == reports
    assert outbox.pending() == [] and _files(outbox.directory) == []


@pytest.mark.unit
async def test_files_sort_in_creation_order_and_are_private(
    outbox: Outbox, backend: FakeBackend, clock: ManualClock
) -> None:
    backend.failures = [_unreachable()]
    for call_id in ("c-b", "c-a", "c-c"):
        outbox.put(_ended(call_id))
    names = _files(outbox.directory)
    assert [n.rsplit("-", 1)[1] for n in names] == ["b.json", "a.json", "c.json"]
    assert all(re.fullmatch(r"\d{12}-call_ended-c-[abc]\.json", n) for n in names)
    assert stat.S_IMODE(outbox.directory.stat().st_mode) == 0o700
    for name in names:
        assert stat.S_IMODE((outbox.directory / name).stat().st_mode) == 0o600


@pytest.mark.unit
async def test_a_down_backend_is_retried_with_growing_capped_delays(
    outbox: Outbox, backend: FakeBackend, clock: ManualClock
) -> None:
    backend.failures = [_unreachable() for _ in range(6)]
    start = clock.monotonic()
    outbox.put(_ended("c-1"))
    await clock.advance(100)
    times = backend.attempt_times()
    assert [round(b - a, 3) for a, b in itertools.pairwise(times)] == [1, 2, 4, 8, 8, 8]
    assert times[0] == start
    assert [r.call_id for r in backend.acknowledged] == ["c-1"]
    # The next outage starts from the first delay again.
    backend.failures = [_unreachable()]
    outbox.put(_ended("c-2"))
    await clock.advance(100)
    assert backend.attempt_times()[-1] - backend.attempt_times()[-2] == 1


@pytest.mark.unit
async def test_credentials_rejected_is_retried_not_dropped(
    outbox: Outbox, backend: FakeBackend, clock: ManualClock
) -> None:
    backend.failures = [CredentialsRejectedError(403, "device_revoked", "revoked")] * 3
    outbox.put(_ended("c-1"))
    await clock.advance(100)
    assert len(backend.attempts) == 4
    assert [r.call_id for r in backend.acknowledged] == ["c-1"]
    assert not (outbox.directory / REJECTED_DIR_NAME).exists()


@pytest.mark.unit
async def test_retry_after_is_the_floor_even_when_kicked(
    outbox: Outbox, backend: FakeBackend, clock: ManualClock
) -> None:
    backend.failures = [RateLimitedError(30.0, "rate limited")]
    start = clock.monotonic()
    outbox.put(_ended("c-1"))
    await clock.advance(10)
    outbox.kick()
    outbox.put(_ended("c-2"))
    await clock.advance(19)
    assert len(backend.attempts) == 1
    await clock.advance(1)
    assert backend.attempt_times()[1] == start + 30
    assert [r.call_id for r in backend.acknowledged] == ["c-1", "c-2"]


@pytest.mark.unit
async def test_a_put_or_a_kick_ends_the_wait_early(
    outbox: Outbox, backend: FakeBackend, clock: ManualClock
) -> None:
    backend.failures = [_unreachable() for _ in range(4)]
    outbox.put(_ended("c-1"))
    await clock.advance(1 + 2 + 4)  # attempts at 0, 1, 3, 7; the next would be at 15
    assert len(backend.attempts) == 4
    outbox.kick()
    await clock.advance(0)
    assert len(backend.attempts) == 5 and backend.acknowledged == [_ended("c-1")]
    backend.failures = [_unreachable()]
    outbox.put(_ended("c-2"))
    await clock.advance(0)
    outbox.put(_ended("c-3"))  # the new report wakes the sender; the oldest still goes first
    await clock.advance(0)
    assert [r.call_id for _, r in backend.attempts[-3:]] == ["c-2", "c-2", "c-3"]
    assert len(set(backend.attempt_times()[-3:])) == 1  # no time passed: nobody waited
    assert [r.call_id for r in backend.acknowledged] == ["c-1", "c-2", "c-3"]


@pytest.mark.unit
async def test_failed_attempts_warn_without_flooding(
    outbox: Outbox, backend: FakeBackend, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    backend.failures = [_unreachable() for _ in range(2 * WARN_EVERY + 5)]
    with caplog.at_level(logging.DEBUG, logger="appliance.provisioning_client.outbox"):
        outbox.put(_ended("c-9"))
        await clock.advance(8 * (2 * WARN_EVERY + 6))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.getMessage().split("(attempt ")[1].split(",")[0] for w in warnings] == [
        "1",
        str(WARN_EVERY),
        str(2 * WARN_EVERY),
    ]
    assert all(getattr(w, "CALL_ID", None) == "c-9" for w in warnings)
    [ack] = [r for r in caplog.records if "acknowledged" in r.getMessage()]
    assert ack.levelno == logging.INFO and getattr(ack, "CALL_ID", None) == "c-9"
    assert f"after {2 * WARN_EVERY + 6} attempt(s)" in ack.getMessage()


@pytest.mark.unit
async def test_a_refused_report_is_kept_in_rejected_with_an_error(
    outbox: Outbox, backend: FakeBackend, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    refusal = "backend refused POST /v1/calls/c-1/end: 404 unknown_call: no such call"
    backend.failures = [BackendProtocolError(refusal)]
    with caplog.at_level(logging.INFO, logger="appliance.provisioning_client.outbox"):
        outbox.put(_ended("c-1"))
        outbox.put(_ended("c-2"))
        async with asyncio.timeout(TIMEOUT_S):
            await outbox.drained()
    assert [r.call_id for r in backend.acknowledged] == ["c-2"]
    rejected = outbox.directory / REJECTED_DIR_NAME
    [name] = _files(rejected)
    assert Report.from_json((rejected / name).read_bytes()) == _ended("c-1")
    assert stat.S_IMODE(rejected.stat().st_mode) == 0o700
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "c-1" in error.getMessage() and "404 unknown_call" in error.getMessage()
    assert getattr(error, "CALL_ID", None) == "c-1"
    # Settled: a late duplicate is not tried again.
    assert not outbox.put(_ended("c-1"))


@pytest.mark.unit
async def test_junk_files_go_to_rejected_and_the_rest_is_sent(
    tmp_path: Path, backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "outbox"
    directory.mkdir(mode=0o700)
    good = _ended("c-good")
    (directory / "000000000001-call_ended-c-x.json").write_bytes(good.to_json()[:20])  # partial
    (directory / "000000000002-call_ended-c-good.json").write_bytes(good.to_json())
    (directory / "000000000003-call_ended-c-y.json").write_text('{"v": 1, "kind": "call_ended"}')
    (directory / "notes.txt").write_bytes(b"\xff\xfe junk")
    (directory / ".000000000004-call_ended-c-z.json.123.tmp").write_bytes(b"{")  # unfinished
    with caplog.at_level(logging.INFO, logger="appliance.provisioning_client.outbox"):
        async with asyncio.timeout(TIMEOUT_S), _outbox(directory, backend) as outbox:
            assert outbox.pending() == [good]
            await outbox.drained()
            # A new report never takes the number of one left behind, even a rejected one.
            backend.failures = [_unreachable()]
            outbox.put(_ended("c-new"))
            [new_name] = _files(directory)
            assert new_name.startswith("000000000004-")
    assert backend.acknowledged == [good]
    assert _files(directory) == ["000000000004-call_ended-c-new.json"]
    assert _files(directory / REJECTED_DIR_NAME) == [
        "000000000001-call_ended-c-x.json",
        "000000000003-call_ended-c-y.json",
        "notes.txt",
    ]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3 and all("unreadable report" in e for e in errors)


@pytest.mark.unit
async def test_a_second_end_for_one_call_is_deduplicated(
    outbox: Outbox, backend: FakeBackend, clock: ManualClock
) -> None:
    backend.failures = [_unreachable()]
    assert outbox.put(_ended("c-1", EndReason.USER))
    assert not outbox.put(_ended("c-1", EndReason.SHUTDOWN))
    assert len(_files(outbox.directory)) == 1
    await clock.advance(10)
    assert backend.acknowledged == [_ended("c-1", EndReason.USER)]
    assert not outbox.put(_ended("c-1", EndReason.DEVICE_RESTARTED))
    # A start and an end of one call are two reports.
    assert outbox.put(Report.call_started("c-2", Trigger.BUTTON, created_at=1.0))
    assert outbox.put(_ended("c-2"))


@pytest.mark.unit
async def test_what_a_stopped_outbox_left_is_sent_by_the_next_one(
    tmp_path: Path, backend: FakeBackend, clock: ManualClock
) -> None:
    directory = tmp_path / "outbox"
    backend.failures = [_unreachable() for _ in range(3)]
    first = _outbox(directory, backend)
    async with asyncio.timeout(TIMEOUT_S):
        await first.start()
        first.put(_ended("c-1"))
        first.put(Report.call_started("c-2", Trigger.BUTTON, created_at=2.0))
        await clock.advance(2)
        first.put(_ended("c-2"))  # put just before an abrupt stop: no chance to send it
        await first.aclose()
    assert [r.call_id for r in backend.acknowledged] == []
    assert len(_files(directory)) == 3

    again = _outbox(directory, backend)
    assert [r.call_id for r in again.pending()] == ["c-1", "c-2", "c-2"]
    assert not again.put(_ended("c-2", EndReason.DEVICE_RESTARTED))  # the first end stands
    async with asyncio.timeout(TIMEOUT_S), again:
        await clock.advance(10)
        await again.drained()
    assert [(r.kind, r.call_id) for r in backend.acknowledged] == [
        (ReportKind.CALL_ENDED, "c-1"),
        (ReportKind.CALL_STARTED, "c-2"),
        (ReportKind.CALL_ENDED, "c-2"),
    ]
    assert backend.acknowledged[-1].reason is EndReason.USER
    assert _files(directory) == []


@pytest.mark.unit
async def test_closing_mid_send_keeps_the_report(tmp_path: Path, clock: ManualClock) -> None:
    started = asyncio.Event()
    sent: list[Report] = []

    async def hangs(report: Report) -> None:
        started.set()
        await asyncio.Event().wait()

    directory = tmp_path / "outbox"
    async with asyncio.timeout(TIMEOUT_S):
        async with Outbox(directory, send=hangs, clock=clock) as outbox:
            outbox.put(_ended("c-1"))
            await started.wait()
        assert outbox.pending() == [_ended("c-1")]

        async def works(report: Report) -> None:
            sent.append(report)

        async with Outbox(directory, send=works, clock=clock) as again:
            await again.drained()
    assert sent == [_ended("c-1")]


@pytest.mark.unit
async def test_an_unexpected_error_in_send_is_logged_and_retried(
    outbox: Outbox, backend: FakeBackend, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    backend.failures = [TypeError("a bug in send")]
    with caplog.at_level(logging.INFO, logger="appliance.provisioning_client.outbox"):
        outbox.put(_ended("c-1"))
        await clock.advance(1)
    assert backend.acknowledged == [_ended("c-1")]
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.exc_info is not None and "a bug in send" in error.getMessage()


@pytest.mark.unit
async def test_a_marker_left_by_a_dead_daemon_reports_device_restarted(
    tmp_path: Path, backend: FakeBackend, clock: ManualClock
) -> None:
    state = tmp_path / "state"
    marker = CallMarker(state, clock=clock)
    marker.begin("c-7", Trigger.WAKE_WORD)
    path = state / MARKER_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for _ in range(3):
        await clock.advance(10)
        marker.touch()
    await clock.advance(7)  # the daemon dies here: killed, crashed or the power went
    assert json.loads(path.read_text()) == {
        "call_id": "c-7",
        "trigger": "wake_word",
        "started_at": ManualClock.EPOCH + 1000,
        "last_alive": ManualClock.EPOCH + 1030,
    }

    await clock.advance(60)  # the restart
    async with asyncio.timeout(TIMEOUT_S), _outbox(state / "outbox", backend) as outbox:
        report = CallMarker(state, clock=clock).recover(outbox)
        assert report == Report.call_ended(
            "c-7", EndReason.DEVICE_RESTARTED, 30_000, created_at=clock.time()
        )
        assert not path.exists()
        await outbox.drained()
    assert backend.acknowledged == [report]
    assert CallMarker(state, clock=clock).recover(outbox) is None


@pytest.mark.unit
async def test_recovery_keeps_an_end_already_in_the_outbox(
    tmp_path: Path, backend: FakeBackend, clock: ManualClock
) -> None:
    state = tmp_path / "state"
    marker = CallMarker(state, clock=clock)
    marker.begin("c-7", Trigger.BUTTON)
    outbox = _outbox(state / "outbox", backend)
    outbox.put(_ended("c-7", EndReason.USER, 5000))  # died before clear()

    again = _outbox(state / "outbox", backend)
    assert CallMarker(state, clock=clock).recover(again) is None
    assert not marker.path.exists()
    assert again.pending() == [_ended("c-7", EndReason.USER, 5000)]


@pytest.mark.unit
async def test_marker_lifecycle_and_an_unreadable_marker(
    tmp_path: Path, backend: FakeBackend, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    marker = CallMarker(state, clock=clock)
    marker.touch()  # no call: nothing written
    assert not marker.path.exists()
    marker.begin("c-1", Trigger.BUTTON)
    await clock.advance(5)
    marker.touch()
    marker.clear()
    assert not marker.path.exists()
    marker.touch()  # after clear: nothing written again
    assert not marker.path.exists()

    marker.path.write_bytes(b'{"call_id": "c-2", "trigger": "button", "start')  # old firmware
    outbox = _outbox(state / "outbox", backend)
    with caplog.at_level(logging.ERROR):
        assert marker.recover(outbox) is None
    assert not marker.path.exists() and (state / UNREADABLE_MARKER_NAME).exists()
    assert outbox.pending() == []
    assert any("unreadable call marker" in r.getMessage() for r in caplog.records)


@pytest.mark.unit
async def test_recovered_duration_is_never_negative(
    tmp_path: Path, backend: FakeBackend, clock: ManualClock
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / MARKER_FILE_NAME).write_text(
        json.dumps({"call_id": "c-3", "trigger": "button", "started_at": 100, "last_alive": 90})
    )
    report = CallMarker(state, clock=clock).recover(_outbox(state / "outbox", backend))
    assert report is not None and report.duration_ms == 0


@pytest.mark.unit
def test_api_docs_list_the_reason_a_recovered_call_ends_with() -> None:
    text = (DOCS / "api.md").read_text()
    [row] = re.findall(r"^\| `reason` \| (.*) \|$", text, re.MULTILINE)
    assert EndReason.DEVICE_RESTARTED.value in re.findall(r"`([a-z_]+)`", row)


# -- against the real backend ------------------------------------------------------------------

API_KEY = "APIoutboxtest"
API_SECRET = "outbox-test-secret-0123456789abcdefghijkl"


def _backend_config(tmp_path: Path) -> Path:
    config = tmp_path / "provisioning.toml"
    config.write_text(
        '[server]\nhost = "127.0.0.1"\nport = 0\n[database]\npath = "db.sqlite3"\n'
        f'[livekit]\nurl = "ws://127.0.0.1:7880"\napi_key = "{API_KEY}"\n'
        f'api_secret = "{API_SECRET}"\n[calls]\nagent_name = "agent-x"\ntoken_ttl_s = 300\n'
    )
    config.chmod(0o600)
    return config


@pytest.mark.integration
async def test_an_end_put_while_the_backend_is_down_is_recorded_when_it_is_back(
    tmp_path: Path,
) -> None:
    config = load_config(_backend_config(tmp_path))
    state = tmp_path / "state"
    backoff = Backoff(initial_s=0.05, max_s=0.2, jitter=0.0)
    failures: list[Exception] = []
    two_failures = asyncio.Event()

    async with asyncio.timeout(20):
        server = BackendServer(config, port=0)
        await server.start()
        port = server.port
        key = DeviceKey.load_or_create(state)
        client = ProvisioningClient(server.url, key)
        try:
            await client.enroll(await server.core.create_enrollment_code(ttl_s=60), "lobby")
            grant = await client.create_call("button")
            await server.aclose()

            async def send(report: Report) -> None:
                try:
                    await client.end_call(report.call_id, report.reason, report.duration_ms)
                except BackendUnreachableError as exc:
                    failures.append(exc)
                    if len(failures) >= 2:
                        two_failures.set()
                    raise

            async with Outbox(
                state / "outbox", send=send, clock=SystemClock(), backoff=backoff
            ) as outbox:
                outbox.put(
                    Report.call_ended(
                        grant.call_id, EndReason.DEVICE_RESTARTED, 12_345, created_at=1.0
                    )
                )
                outbox.put(_ended("c-0000000000000000"))  # not this device's call: a 404
                await two_failures.wait()
                server = BackendServer(config, port=port)  # the same database, the same port
                await server.start()
                await outbox.drained()
            records = await server.core.list_calls()
        finally:
            await client.aclose()
            await server.aclose()

    assert len(failures) >= 2
    [record] = records
    assert record.call_id == grant.call_id
    assert (record.end_reason, record.duration_ms) == ("device_restarted", 12_345)
    [rejected] = _files(state / "outbox" / REJECTED_DIR_NAME)
    assert rejected.endswith("-call_ended-c-0000000000000000.json")
    assert _files(state / "outbox") == []
