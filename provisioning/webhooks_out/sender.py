"""The sender: one named task that POSTs due outbox events, signed, and retries with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Callable

import httpx

from appliance.aio import cancel_and_wait
from provisioning.config import WebhooksConfig, redacted_url
from provisioning.errors import StorageError
from provisioning.webhooks_out.outbox import (
    KEEP_FINISHED_S,
    Claimed,
    DeliveryError,
    WebhookOutbox,
)
from provisioning.webhooks_out.signing import signed_headers

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

USER_AGENT = "kiosk-provisioning-webhooks/1"
# The first retry waits about this long; each further one twice as long, up to the cap.
FIRST_BACKOFF_S = 2.0
# Events sent at once (one per device); also the client's connection limit.
BATCH = 8
# With nothing due, the outbox is looked at this often (events of other backend processes).
POLL_S = 30.0
# A lease outlives the attempt's own bound by this much: a sender that died holding it
# is replaced after that, not sooner.
LEASE_MARGIN_S = 60.0
PURGE_EVERY_S = 600.0


def backoff_s(attempts: int, *, cap_s: float, jitter: float) -> float:
    """The wait after `attempts` failed attempts: 2 s doubling, capped, times 0.5 to 1.

    `jitter` is a number in [0, 1): senders retrying together spread out.
    """
    ceiling = min(cap_s, FIRST_BACKOFF_S * 2.0 ** min(attempts - 1, 32))
    return ceiling * (0.5 + 0.5 * jitter)


def _retry_after_s(value: str | None) -> float | None:
    """A `Retry-After` in seconds (the HTTP-date form is ignored)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def _transport_error(exc: Exception) -> DeliveryError:
    """httpx's errors, translated where they enter: one code each, never the URL."""
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return DeliveryError.TIMEOUT
    if isinstance(exc, httpx.ConnectError):
        return DeliveryError.CONNECT_FAILED
    if isinstance(exc, httpx.ProtocolError):
        return DeliveryError.PROTOCOL_ERROR
    if isinstance(exc, httpx.NetworkError):
        return DeliveryError.NETWORK_ERROR
    return DeliveryError.TRANSPORT_ERROR


class _RedactedUrls(logging.Filter):
    """httpx logs every request's full URL at INFO: it is shown as `redacted_url` instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(
                redacted_url(str(a)) if isinstance(a, httpx.URL) else a for a in record.args
            )
        return True


def _redact_httpx_urls() -> None:
    """Install `_RedactedUrls` on httpx's logger, once (the receiver URL may hold a secret)."""
    httpx_logger = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactedUrls) for f in httpx_logger.filters):
        httpx_logger.addFilter(_RedactedUrls())


class WebhookSender:
    """POSTs the outbox's due events to the configured URL: `start`, `wake`, `aclose`.

    `deliver_due` sends everything due now (tests drive it with an injected clock);
    the task runs it when woken by an emit, when the next retry is due, and every
    `POLL_S`. `transport` replaces httpx's network transport (tests); `jitter` the
    random source of the backoff.
    """

    def __init__(
        self,
        outbox: WebhookOutbox,
        config: WebhooksConfig,
        *,
        clock: Clock,
        transport: httpx.AsyncBaseTransport | None = None,
        jitter: Callable[[], float] = random.random,
        poll_s: float = POLL_S,
    ) -> None:
        self._outbox = outbox
        self._config = config
        self._secret = config.secret.encode("utf-8")
        self._clock = clock
        self._jitter = jitter
        self._poll_s = poll_s
        self._owner = "s-" + secrets.token_hex(8)
        # httpx bounds each phase; the whole attempt is bounded by twice that.
        self._attempt_bound_s = 2.0 * config.timeout_s
        self._lease_s = self._attempt_bound_s + LEASE_MARGIN_S
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(config.timeout_s),
            limits=httpx.Limits(max_connections=BATCH, max_keepalive_connections=BATCH),
            follow_redirects=False,
            # Settings come from the config file, not from proxy variables read deep inside.
            trust_env=False,
        )
        _redact_httpx_urls()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._next_purge = 0.0

    @property
    def owner(self) -> str:
        """The id this sender's leases carry."""
        return self._owner

    async def start(self) -> None:
        """Start the delivery task."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="webhooks-out")
            logger.info(
                "webhook delivery started",
                extra={"url": self._config.shown_url, "sender": self._owner},
            )

    def wake(self) -> None:
        """Look at the outbox now (an event was just recorded)."""
        self._wakeup.set()

    async def aclose(self) -> None:
        """Cancel and await the task, give back its leases, close the client; idempotent."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        await cancel_and_wait(task)
        try:
            # An attempt cut short may have reached the receiver: it dedupes on the id.
            async with asyncio.timeout(self._config.timeout_s):
                await self._outbox.release(self._owner)
        except (StorageError, TimeoutError):
            logger.warning("webhook leases not released; they expire on their own")
        await self._client.aclose()

    async def deliver_due(self) -> int:
        """Send every event due now, a device's events in order; returns how many were tried."""
        tried = 0
        while True:
            claimed = await self._outbox.claim(
                now=self._clock(), owner=self._owner, lease_s=self._lease_s, limit=BATCH
            )
            if not claimed:
                return tried
            async with asyncio.TaskGroup() as group:
                for event in claimed:
                    group.create_task(self._attempt(event), name=f"webhook-{event.event_id}")
            tried += len(claimed)

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                await self.deliver_due()
                await self._purge()
                delay = await self._delay()
            except StorageError as exc:
                logger.warning("webhook outbox unavailable: %s", exc.message)
                delay = self._poll_s
            except Exception:  # the task's boundary: log it, keep delivering
                logger.exception("webhook delivery failed")
                delay = self._poll_s
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wakeup.wait()

    async def _delay(self) -> float:
        due = await self._outbox.next_due()
        if due is None:
            return self._poll_s
        return min(self._poll_s, max(0.0, due - self._clock()))

    async def _purge(self) -> None:
        now = self._clock()
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_EVERY_S
        await self._outbox.purge(now - KEEP_FINISHED_S)

    async def _attempt(self, event: Claimed) -> None:
        headers = signed_headers(self._secret, event.event_id, int(self._clock()), event.body)
        headers |= {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        status: int | None = None
        retry_after: float | None = None
        error: DeliveryError | None = None
        try:
            async with (
                asyncio.timeout(self._attempt_bound_s),
                self._client.stream(
                    "POST", self._config.url, content=event.body, headers=headers
                ) as response,
            ):
                # The answer's body is not read: only its status counts.
                status = response.status_code
                retry_after = _retry_after_s(response.headers.get("Retry-After"))
        except (httpx.HTTPError, TimeoutError) as exc:
            error = _transport_error(exc)
        if status is not None and not 200 <= status < 300:
            error = DeliveryError.HTTP_STATUS
        try:
            await self._record(event, status, error, retry_after)
        except StorageError as exc:
            # The lease runs out and the event is sent again: the receiver dedupes on its id.
            logger.warning(
                "webhook attempt not recorded: %s", exc.message, extra={"event_id": event.event_id}
            )

    async def _record(
        self,
        event: Claimed,
        status: int | None,
        error: DeliveryError | None,
        retry_after: float | None,
    ) -> None:
        now = self._clock()
        attempts = event.attempts + 1
        context = {
            "event_id": event.event_id,
            "event_type": event.kind,
            "device_id": event.device_id or None,
            "attempts": attempts,
            "status": status,
        }
        if error is None:
            assert status is not None
            await self._outbox.delivered(event, now=now, status=status)
            logger.info("webhook delivered", extra=context)
            return
        cap = float(self._config.max_backoff_s)
        give_up = (
            attempts >= self._config.max_attempts
            or now - event.created_at >= self._config.max_age_s
        )
        retry_at = None
        if not give_up:
            wait = backoff_s(attempts, cap_s=cap, jitter=self._jitter())
            if retry_after is not None:
                wait = max(wait, min(retry_after, cap))
            retry_at = now + wait
        held = await self._outbox.failed(
            event, owner=self._owner, now=now, status=status, error=error, retry_at=retry_at
        )
        context["error"] = error.value
        if not held:
            logger.warning("webhook attempt outlived its lease", extra=context)
        elif give_up:
            logger.error("webhook given up", extra=context)
        else:
            logger.warning("webhook attempt failed", extra={**context, "retry_at": retry_at})
