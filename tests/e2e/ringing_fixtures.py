"""Shared by the ringing end-to-end tests: a stack whose fleet events go to a real webhook
receiver on loopback (signatures verified there, docs/webhooks.md), and a kiosk enrolled into
a group whose calls ring people first."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.audio.simulated import read_wav_mono
from appliance.provisioning_client.enrollment import enroll_device
from appliance.settings import load_settings
from appliance.state import State
from demo.stack import LocalStack
from tests.e2e.conftest import RunningDevice, run_device
from tests.provisioning.webhook_receiver import (
    SECRET,
    Received,
    WebhookReceiver,
    expected_signature,
)

RATE = 48000
GROUP = "front-desk"


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """The fleet's webhook endpoint: verifies each signature, records what it accepted."""
    hooks = WebhookReceiver(time.time, secret=SECRET)
    async with asyncio.timeout(10):
        await hooks.start()
    try:
        yield hooks
    finally:
        await hooks.aclose()


@pytest.fixture
async def stack(tmp_path: Path, receiver: WebhookReceiver) -> AsyncIterator[LocalStack]:
    """The local stack (this module's, over conftest's) with its webhooks to `receiver`."""
    async with (
        asyncio.timeout(60),
        LocalStack(
            workdir=tmp_path / "stack", webhook_url=receiver.url, webhook_secret=SECRET
        ) as s,
    ):
        yield s


@asynccontextmanager
async def ringing_device(
    stack: LocalStack,
    microphone: np.ndarray | None,
    *,
    timeout_s: float,
    on_no_answer: str,
    agent_join_timeout_s: float = 20.0,
) -> AsyncIterator[RunningDevice]:
    """A kiosk in a group whose calls ring people first; it holds grants (the default), so
    the group is set before it enrolls and fetches its first."""
    ring = {"ring_operators": {"timeout_s": timeout_s, "on_no_answer": on_no_answer}}
    await stack.backend.core.set_group_settings(GROUP, ring, actor="test")
    files = stack.write_device(
        "kiosk-desk", microphone, cooldown_s=0.0, agent_join_timeout_s=agent_join_timeout_s
    )
    settings = load_settings(files.config)
    code = await stack.backend.core.create_enrollment_code(ttl_s=600, group=GROUP)
    async with asyncio.timeout(15):
        await enroll_device(settings.device.state_dir, settings.backend.url, "kiosk-desk", code)
    async with run_device(settings) as running:
        await running.watcher.wait_for(State.READY, 15)
        yield running


async def webhook(receiver: WebhookReceiver, kind: str, timeout: float = 15.0) -> Received:
    """The first accepted event of `kind`, its signature checked again here from the doc."""
    async with asyncio.timeout(timeout):
        while not (found := [r for r in receiver.accepted if r.type == kind]):
            await asyncio.sleep(0.05)
    event = found[0]
    headers = event.headers
    want = expected_signature(
        SECRET, headers["Webhook-Id"], headers["Webhook-Timestamp"], event.raw
    )
    assert any(hmac.compare_digest(want, s) for s in headers["Webhook-Signature"].split())
    assert receiver.refused_signatures == 0
    return event


def data(event: Received) -> dict[str, Any]:
    body: dict[str, Any] = event.body["data"]
    return body


def speaker_of(device: RunningDevice) -> np.ndarray:
    return read_wav_mono(device.daemon.settings.simulated.speaker_wav)  # type: ignore[arg-type]


def ring_tone_share(pcm: np.ndarray) -> float:
    """How much of `pcm`'s energy is within 5 Hz of the ring's two tones (440, 480 Hz)."""
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64))) ** 2
    hz = np.fft.rfftfreq(len(pcm), 1 / RATE)
    near = (np.abs(hz - 440) <= 5) | (np.abs(hz - 480) <= 5)
    total = float(spectrum.sum())
    return float(spectrum[near].sum()) / total if total > 0 else 0.0
