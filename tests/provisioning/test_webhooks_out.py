"""Webhooks out: the outbox and its sender against a real receiver (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from provisioning.config import WebhooksConfig
from provisioning.events import EventKind, FleetEvent
from provisioning.logs import ContextFormatter
from provisioning.storage import SqlStorage, open_storage
from provisioning.webhooks_out import (
    DeliveryError,
    DeliveryState,
    OutboxEvents,
    WebhookOutbox,
    WebhookSender,
    open_webhooks,
)
from provisioning.webhooks_out.sender import backoff_s

from .conftest import TIMEOUT_S, FakeClock, database_config
from .webhook_receiver import SECRET, WebhookReceiver

pytestmark = pytest.mark.integration

HOUR_S = 3600.0


@pytest.fixture
async def receiver(clock: FakeClock) -> AsyncIterator[WebhookReceiver]:
    hooks = WebhookReceiver(clock)
    async with asyncio.timeout(TIMEOUT_S):
        await hooks.start()
    try:
        yield hooks
    finally:
        await hooks.aclose()


def webhooks_config(url: str, **overrides: Any) -> WebhooksConfig:
    return WebhooksConfig(url=url, secret=SECRET, **{"timeout_s": 5, **overrides})


class Harness:
    """An outbox, the events that fill it and a sender driven by hand (`deliver`)."""

    def __init__(
        self, storage: SqlStorage, clock: FakeClock, config: WebhooksConfig, jitter: float = 0.5
    ) -> None:
        self.clock = clock
        self.outbox = WebhookOutbox(storage.db)
        self.events = OutboxEvents(self.outbox, clock=clock)
        self.sender = WebhookSender(self.outbox, config, clock=clock, jitter=lambda: jitter)

    async def emit(self, kind: EventKind, device_id: str, **data: Any) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            await self.events.emit(
                FleetEvent(kind, self.clock.now, {"device_id": device_id, **data})
            )

    async def deliver(self) -> int:
        async with asyncio.timeout(TIMEOUT_S):
            return await self.sender.deliver_due()

    async def aclose(self) -> None:
        await self.sender.aclose()


@pytest.fixture
async def harness(
    storage: SqlStorage, clock: FakeClock, receiver: WebhookReceiver
) -> AsyncIterator[Harness]:
    hooks = Harness(storage, clock, webhooks_config(receiver.url))
    try:
        yield hooks
    finally:
        await hooks.aclose()


async def test_an_event_is_posted_signed_with_its_id_in_header_and_body(
    harness: Harness, receiver: WebhookReceiver
) -> None:
    await harness.emit(EventKind.CALL_ENDED, "d-1", call_id="c-1", end_reason="user")
    assert await harness.deliver() == 1
    [got] = receiver.accepted
    assert receiver.refused_signatures == 0
    assert got.headers["Webhook-Id"] == got.body["id"]
    assert got.headers["Webhook-Timestamp"] == str(int(harness.clock.now))
    assert got.headers["Content-Type"] == "application/json"
    assert got.body == {
        "id": got.event_id,
        "type": "call.ended",
        "at": harness.clock.now,
        "data": {"device_id": "d-1", "call_id": "c-1", "end_reason": "user"},
    }
    [delivery] = await harness.outbox.list_deliveries()
    assert delivery.event_id == got.event_id
    assert delivery.state is DeliveryState.DELIVERED
    assert (delivery.attempts, delivery.last_status, delivery.last_error) == (1, 200, None)
    assert delivery.last_attempt_at == harness.clock.now
    # Nothing is due any more.
    assert await harness.deliver() == 0


async def test_a_wrong_secret_does_not_verify(
    storage: SqlStorage, clock: FakeClock, receiver: WebhookReceiver
) -> None:
    config = WebhooksConfig(url=receiver.url, secret="another-secret", timeout_s=5)
    hooks = Harness(storage, clock, config)
    try:
        await hooks.emit(EventKind.DEVICE_ENROLLED, "d-1")
        await hooks.deliver()
    finally:
        await hooks.aclose()
    assert receiver.accepted == []
    assert receiver.refused_signatures == 1
    [delivery] = await hooks.outbox.list_deliveries()
    assert (delivery.state, delivery.last_status) == (DeliveryState.PENDING, 401)
    assert delivery.last_error is DeliveryError.HTTP_STATUS


async def test_a_receiver_down_for_over_an_hour_gets_every_event_once_in_order(
    harness: Harness, receiver: WebhookReceiver
) -> None:
    await receiver.down()
    devices = ["d-a", "d-b", "d-c"]
    kinds = [EventKind.DEVICE_ENROLLED, EventKind.CALL_STARTED, EventKind.CALL_ENDED]
    for kind in kinds:
        for device in devices:
            await harness.emit(kind, device)
            harness.clock.advance(1)
    start = harness.clock.now
    steps = 0
    while harness.clock.now - start < HOUR_S + 60:
        await harness.deliver()
        harness.clock.advance(30)
        steps += 1
        if steps % 20 == 0:
            # More happens while the receiver is still down.
            await harness.emit(EventKind.DEVICE_REVOKED, "d-b")
    assert receiver.received == []
    pending = await harness.outbox.list_deliveries(limit=1000)
    assert {d.state for d in pending} == {DeliveryState.PENDING}
    heads = [d for d in pending if d.attempts > 0]
    # One event per device was tried (the others wait behind it), again and again,
    # backing off to the cap: at most about 1 + log2(600 / 2) + 3600 / 300 attempts.
    assert sorted(d.device_id for d in heads) == devices
    assert {d.last_error for d in heads} == {DeliveryError.CONNECT_FAILED}
    assert all(8 <= d.attempts <= 25 for d in heads), [d.attempts for d in heads]

    await receiver.up()
    harness.clock.advance(600)  # the longest backoff
    await harness.deliver()
    emitted = sorted(pending, key=lambda d: d.seq)
    assert len(receiver.accepted) == len(emitted)
    assert receiver.duplicates == []
    per_device = receiver.accepted_per_device()
    for device in devices:
        assert per_device[device] == [d.event_id for d in emitted if d.device_id == device]
    done = await harness.outbox.list_deliveries(limit=1000)
    assert {d.state for d in done} == {DeliveryState.DELIVERED}


async def test_a_failed_attempt_is_retried_with_the_same_id_and_body(
    harness: Harness, receiver: WebhookReceiver
) -> None:
    receiver.status = 500
    await harness.emit(EventKind.CALL_STARTED, "d-1", trigger="button")
    await harness.deliver()
    [first] = receiver.received
    [delivery] = await harness.outbox.list_deliveries()
    assert (delivery.attempts, delivery.last_status) == (1, 500)
    # Jitter 0.5: 75 % of the first backoff (2 s).
    assert delivery.next_attempt_at == harness.clock.now + 1.5
    assert await harness.deliver() == 0  # not due yet
    receiver.status = 200
    harness.clock.advance(2)
    await harness.deliver()
    second = receiver.received[1]
    assert second.event_id == first.event_id and second.raw == first.raw
    assert second.headers["Webhook-Timestamp"] != first.headers["Webhook-Timestamp"]
    [delivery] = await harness.outbox.list_deliveries()
    assert (delivery.state, delivery.attempts, delivery.last_status) == (
        DeliveryState.DELIVERED,
        2,
        200,
    )


async def test_an_event_given_up_lets_the_devices_next_event_go(
    storage: SqlStorage, clock: FakeClock, receiver: WebhookReceiver
) -> None:
    hooks = Harness(storage, clock, webhooks_config(receiver.url, max_attempts=3))
    try:
        await hooks.emit(EventKind.CALL_STARTED, "d-1")
        await hooks.emit(EventKind.CALL_ENDED, "d-1")
        [_, first] = await hooks.outbox.list_deliveries()
        for _ in range(3):
            receiver.status_for[first.event_id] = 410
            await hooks.deliver()
            clock.advance(600)
        assert [r.status for r in receiver.received[:3]] == [410, 410, 410]
        await hooks.deliver()
    finally:
        await hooks.aclose()
    [second, first] = await hooks.outbox.list_deliveries()
    assert (first.state, first.attempts, first.last_status) == (DeliveryState.FAILED, 3, 410)
    assert first.finished_at is not None
    assert second.state is DeliveryState.DELIVERED
    assert [r.type for r in receiver.accepted] == ["call.ended"]


async def test_an_event_older_than_max_age_is_given_up(
    storage: SqlStorage, clock: FakeClock, receiver: WebhookReceiver
) -> None:
    hooks = Harness(storage, clock, webhooks_config(receiver.url, max_age_s=600))
    receiver.status = 503
    try:
        await hooks.emit(EventKind.DEVICE_ENROLLED, "d-1")
        await hooks.deliver()
        clock.advance(601)
        await hooks.deliver()
    finally:
        await hooks.aclose()
    [delivery] = await hooks.outbox.list_deliveries()
    assert (delivery.state, delivery.attempts) == (DeliveryState.FAILED, 2)


async def test_retry_after_is_honoured_up_to_the_cap(
    harness: Harness, receiver: WebhookReceiver
) -> None:
    receiver.status = 503
    receiver.status_headers = {"Retry-After": "120"}
    await harness.emit(EventKind.DEVICE_ENROLLED, "d-1")
    await harness.deliver()
    [delivery] = await harness.outbox.list_deliveries()
    assert delivery.next_attempt_at == harness.clock.now + 120


async def test_a_redirect_is_not_followed(harness: Harness, receiver: WebhookReceiver) -> None:
    receiver.status = 302
    await harness.emit(EventKind.DEVICE_ENROLLED, "d-1")
    await harness.deliver()
    assert len(receiver.received) == 1
    [delivery] = await harness.outbox.list_deliveries()
    assert (delivery.state, delivery.last_status) == (DeliveryState.PENDING, 302)


async def test_an_expired_lease_is_taken_over_and_the_late_result_ignored(
    harness: Harness, receiver: WebhookReceiver
) -> None:
    await harness.emit(EventKind.DEVICE_ENROLLED, "d-1")
    # Another sender claimed it and died (its lease: 60 s here).
    [held] = await harness.outbox.claim(now=harness.clock.now, owner="s-dead", lease_s=60, limit=8)
    assert await harness.deliver() == 0
    harness.clock.advance(61)
    assert await harness.deliver() == 1
    assert [r.event_id for r in receiver.accepted] == [held.event_id]
    late = await harness.outbox.failed(
        held,
        owner="s-dead",
        now=harness.clock.now,
        status=None,
        error=DeliveryError.TIMEOUT,
        retry_at=harness.clock.now + 1,
    )
    assert late is False
    [delivery] = await harness.outbox.list_deliveries()
    assert delivery.state is DeliveryState.DELIVERED


async def test_two_senders_on_one_database_never_send_an_event_twice(
    tmp_path: Path, database_url: str | None, clock: FakeClock, receiver: WebhookReceiver
) -> None:
    """Two backend processes, as far as the database can tell: two pools, two senders."""
    config = database_config(tmp_path, database_url)
    async with asyncio.timeout(TIMEOUT_S):
        first = await open_storage(config)
        second = await open_storage(config)
    a = Harness(first, clock, webhooks_config(receiver.url))
    b = Harness(second, clock, webhooks_config(receiver.url))
    receiver.hold_s = 0.01  # the two senders' attempts overlap
    try:
        for n in range(40):
            await (a if n % 2 else b).emit(EventKind.CALL_STARTED, f"d-{n % 5}", n=n)
        for _ in range(20):
            async with asyncio.timeout(TIMEOUT_S * 3):
                await asyncio.gather(a.sender.deliver_due(), b.sender.deliver_due())
            if len(receiver.accepted) == 40:
                break
    finally:
        await a.aclose()
        await b.aclose()
        await first.aclose()
        await second.aclose()
    assert receiver.overlaps == []
    assert len(receiver.received) == 40  # every event once: none sent twice, even in turn
    for device, ids in receiver.accepted_per_device().items():
        ns = [r.body["data"]["n"] for r in receiver.accepted if r.device_id == device]
        assert ns == sorted(ns), (device, ids)


async def test_pending_events_survive_a_restart(
    tmp_path: Path, database_url: str | None, clock: FakeClock, receiver: WebhookReceiver
) -> None:
    config = database_config(tmp_path, database_url)
    await receiver.down()
    async with asyncio.timeout(TIMEOUT_S):
        storage = await open_storage(config)
    hooks = Harness(storage, clock, webhooks_config(receiver.url))
    try:
        await hooks.emit(EventKind.DEVICE_ENROLLED, "d-1")
        await hooks.emit(EventKind.CALL_STARTED, "d-1")
        # Claimed, then the backend stops mid-attempt: the lease is given back on close.
        await hooks.outbox.claim(now=clock.now, owner=hooks.sender.owner, lease_s=600, limit=8)
    finally:
        await hooks.aclose()
        await storage.aclose()

    await receiver.up()
    async with asyncio.timeout(TIMEOUT_S):
        storage = await open_storage(config)
    hooks = Harness(storage, clock, webhooks_config(receiver.url))
    try:
        await hooks.deliver()
    finally:
        await hooks.aclose()
        await storage.aclose()
    assert [r.type for r in receiver.accepted] == ["device.enrolled", "call.started"]


async def test_the_task_is_woken_by_an_emit_and_ends_with_its_owner(
    storage: SqlStorage, clock: FakeClock, receiver: WebhookReceiver
) -> None:
    config = webhooks_config(receiver.url)
    async with open_webhooks(config, storage.db, clock=clock) as hooks:
        [task] = [t for t in asyncio.all_tasks() if t.get_name() == "webhooks-out"]
        await hooks.events.emit(FleetEvent(EventKind.DEVICE_ENROLLED, clock.now, {}))
        async with asyncio.timeout(TIMEOUT_S):
            while not await hooks.outbox.list_deliveries(state=DeliveryState.DELIVERED):
                await asyncio.sleep(0.01)
    assert task.done()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "webhooks-out"]
    assert len(receiver.accepted) == 1


async def test_deliveries_are_listed_newest_first_by_state_and_device(harness: Harness) -> None:
    for n in range(5):
        await harness.emit(EventKind.CALL_STARTED, f"d-{n % 2}")
    await harness.outbox.claim(now=harness.clock.now, owner="x", lease_s=1, limit=1)
    await harness.deliver()
    everything = await harness.outbox.list_deliveries()
    assert [d.seq for d in everything] == sorted((d.seq for d in everything), reverse=True)
    assert len(await harness.outbox.list_deliveries(limit=2)) == 2
    of_d1 = await harness.outbox.list_deliveries(device_id="d-1")
    assert len(of_d1) == 2 and {d.device_id for d in of_d1} == {"d-1"}
    # d-0's first event is leased by "x", so d-0 waits; d-1's two went out.
    delivered = await harness.outbox.list_deliveries(state=DeliveryState.DELIVERED)
    assert [d.device_id for d in delivered] == ["d-1", "d-1"]
    body = await harness.outbox.event_body(everything[0].event_id)
    assert body is not None and json.loads(body)["id"] == everything[0].event_id


async def test_no_secret_or_url_credential_in_any_log_line(
    storage: SqlStorage, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = WebhookReceiver(clock, path="/hooks/tok-Zq81")
    async with asyncio.timeout(TIMEOUT_S):
        await receiver.start()
    url = f"http://user:pw-Xy7@127.0.0.1:{receiver.port}{receiver.path}?key=Qk-55"
    try:
        await _deliver_once_after_a_failure(receiver, url, storage, clock)
    finally:
        await receiver.aclose()
    formatter = ContextFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    text = "\n".join(lines)
    assert "webhook delivery started" in text
    assert f"url=http://127.0.0.1:{receiver.port}/…" in text
    assert "webhook attempt failed" in text and "webhook delivered" in text
    assert f"POST http://127.0.0.1:{receiver.port}/…" in text  # httpx's own line
    for secret in (SECRET, "pw-Xy7", "tok-Zq81", "Qk-55", "user:"):
        assert secret not in text


async def _deliver_once_after_a_failure(
    receiver: WebhookReceiver, url: str, storage: SqlStorage, clock: FakeClock
) -> None:
    async with open_webhooks(webhooks_config(url), storage.db, clock=clock) as hooks:
        receiver.status = 500
        await hooks.events.emit(FleetEvent(EventKind.DEVICE_ENROLLED, clock.now, {}))
        async with asyncio.timeout(TIMEOUT_S):
            # Until the failure is recorded (with its retry due 1.5 s of the fake clock on).
            while (
                not await hooks.outbox.list_deliveries(state=DeliveryState.PENDING)
                or not (await hooks.outbox.list_deliveries())[0].attempts
            ):
                await asyncio.sleep(0.01)
        receiver.status = 200
        clock.advance(600)
        hooks.sender.wake()
        async with asyncio.timeout(TIMEOUT_S):
            while not await hooks.outbox.list_deliveries(state=DeliveryState.DELIVERED):
                await asyncio.sleep(0.01)


@pytest.mark.unit
def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    assert [backoff_s(n, cap_s=600, jitter=0.999999) for n in (1, 2, 3)] == pytest.approx([2, 4, 8])
    assert [backoff_s(n, cap_s=600, jitter=0.0) for n in (1, 2, 3)] == [1, 2, 4]
    assert backoff_s(9, cap_s=600, jitter=0.999999) == pytest.approx(512)
    assert backoff_s(10, cap_s=600, jitter=0.999999) == pytest.approx(600)
    assert backoff_s(10_000, cap_s=600, jitter=0.0) == 300
