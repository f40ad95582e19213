"""A ringing kiosk answered from the webhook's join link, in Debian's headless Chromium with the
official `livekit-client` (the browser, its fake microphone and the page helpers are
`test_operator_browser.py`'s): the kiosk goes in_call and plays the operator, checked by
content; nobody dispatches the agent; the link is refused once the call is over."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from appliance.audio.simulated import read_wav_mono
from appliance.state import State
from demo.signal import slip_tolerant_xcorr
from demo.stack import LocalStack
from demo.tts import synthesize
from provisioning.operators import CLIENT_FILE
from provisioning.ringing import RingState
from tests.e2e.conftest import ended_record
from tests.e2e.ringing_fixtures import (
    RATE,
    data,
    receiver,
    ringing_device,
    speaker_of,
    stack,
    webhook,
)
from tests.e2e.test_operator_browser import (
    OTHER_SENTENCE,
    browser,
    cdp,
    person_wav,
    wait_js,
)
from tests.provisioning.chromium import Cdp, Page, chromium_path
from tests.provisioning.webhook_receiver import WebhookReceiver

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed"),
    pytest.mark.skipif(not CLIENT_FILE.is_file(), reason="run scripts/build-web"),
]
__all__ = ["browser", "cdp", "person_wav", "receiver", "stack"]


async def test_an_operator_answers_from_the_webhooks_link_and_the_kiosk_hears_them(
    stack: LocalStack, receiver: WebhookReceiver, cdp: Cdp, person_wav: Path
) -> None:
    person = read_wav_mono(person_wav)
    async with ringing_device(stack, None, timeout_s=60, on_no_answer="agent") as device:
        device.daemon.press()
        await device.watcher.wait_for(State.RINGING, 20)
        ringing = data(await webhook(receiver, "call.ringing"))
        call_id, link = ringing["call_id"], ringing["join_url"]
        async with asyncio.timeout(120), Page.open(cdp) as page:
            await page.goto(link)
            await wait_js(page, "window.kiosk && window.kiosk.connection === 'connected'")
            await device.watcher.wait_for(State.IN_CALL, 20)
            in_call_mark = len(speaker_of(device))
            assert "ticket" not in await page.evaluate("location.href")  # not for copying on
            await wait_js(page, "window.kiosk.state === 'in_call'", 10)
            # The person's sentence (looped by the fake microphone) twice over, then some.
            await asyncio.sleep(2 * len(person) / RATE + 1.0)
            speaker = speaker_of(device)[in_call_mark:]
            ring = await stack.backend.core.ringing.get(call_id)
            assert ring is not None and ring.state is RingState.ANSWERED
            assert ring.answered_by is not None and ring.answered_by.startswith("operator-")
            answered = data(await webhook(receiver, "call.answered"))
            assert (answered["call_id"], answered["answered_by"]) == (call_id, ring.answered_by)
            assert stack.backend.core.ringing.timers == frozenset()  # the fallback is off
            await page.evaluate("document.getElementById('end-call').click()")
            await device.watcher.wait_for(State.READY, 20)
        record = await ended_record(stack, call_id)
        with pytest.raises(TimeoutError):
            await stack.agent.next_session(timeout=1)  # answered: the agent never came
        # The link again, now that the call is over: refused, and the page says so.
        async with asyncio.timeout(60), Page.open(cdp) as page:
            await page.goto(link)
            await wait_js(page, "window.kiosk && window.kiosk.connection === 'failed'")
            assert "has ended" in await page.text("#connection")

    assert record.end_reason == "operator_ended"
    peak, _ = slip_tolerant_xcorr(speaker, person[: -RATE // 2], RATE)
    other = await asyncio.wait_for(synthesize(OTHER_SENTENCE), 30)
    control, _ = slip_tolerant_xcorr(speaker, other, RATE)
    assert peak > 0.5, f"the kiosk's speaker lacks the operator ({peak:.2f})"
    assert control < 0.3, f"an unrelated sentence matches ({control:.2f})"
    assert np.abs(speaker).max() > 1000
