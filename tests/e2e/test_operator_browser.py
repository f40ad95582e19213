"""A person joins a kiosk's call from Debian's headless Chromium with the official
`livekit-client` (the page the backend serves), checked by content: who hears whom, what a
late joiner reads, who may end the call, and an agent's hand-over to the person."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import numpy as np
import pytest
from livekit import api

from appliance.audio.simulated import read_wav_mono
from appliance.state import State
from demo.signal import slip_tolerant_xcorr
from demo.stack import LocalStack, write_wav
from demo.tts import synthesize
from provisioning.admin.tokens import AdminScope, AdminTokens
from provisioning.config import load_config
from provisioning.operators import CLIENT_FILE
from provisioning.storage import open_storage
from tests.e2e.conftest import RunningDevice, ended_record
from tests.provisioning.chromium import Cdp, Chromium, Page, chromium_path

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed"),
    pytest.mark.skipif(not CLIENT_FILE.is_file(), reason="run scripts/build-web"),
]

RATE = 48000
PERSON_SENTENCE = "Good morning, this is the front desk. How can I help you today?"
OTHER_SENTENCE = "The weather on the coast will be windy with some rain in the afternoon."
# What the page records of the kiosk's track: each remote audio track of the participant
# that carries the kiosk's attributes, through WebAudio, as float samples.
RECORD_KIOSK = """(() => {
  window.heard = [];
  const ctx = new AudioContext({sampleRate: 48000});
  for (const p of window.kioskRoom.remoteParticipants.values()) {
    if (!('kiosk.state' in p.attributes)) continue;
    for (const pub of p.audioTrackPublications.values()) {
      if (!pub.track) continue;
      const src = ctx.createMediaStreamSource(new MediaStream([pub.track.mediaStreamTrack]));
      const node = ctx.createScriptProcessor(4096, 1, 1);
      node.onaudioprocess = (e) => window.heard.push(Array.from(e.inputBuffer.getChannelData(0)));
      src.connect(node);
      node.connect(ctx.destination);
      return true;
    }
  }
  return false;
})()"""
HEARD = """(() => {
  const f = window.heard.flat();
  const pcm = new Int16Array(f.length);
  for (let i = 0; i < f.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, f[i] * 32767));
  const bytes = new Uint8Array(pcm.buffer);
  let s = '';
  for (let i = 0; i < bytes.length; i += 8192) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
  }
  return btoa(s);
})()"""


@pytest.fixture(scope="module")
def person_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The person's voice, which Chromium's fake microphone plays in a loop."""
    speech = asyncio.run(asyncio.wait_for(synthesize(PERSON_SENTENCE), 30))
    path = tmp_path_factory.mktemp("person") / "person.wav"
    write_wav(path, np.concatenate([speech, np.zeros(RATE // 2, dtype=np.int16)]))
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, person_wav: Path) -> Iterator[Chromium]:
    chromium = Chromium(
        tmp_path_factory.mktemp("chromium"),
        (
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={person_wav}",
            "--autoplay-policy=no-user-gesture-required",
        ),
    )
    chromium.start()
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture
async def cdp(browser: Chromium) -> AsyncIterator[Cdp]:
    async with Cdp.connect(browser.endpoint) as connection:
        yield connection


@pytest.fixture
async def admin_token(stack: LocalStack) -> str:
    storage = await open_storage(load_config(stack.backend_config).database)
    try:
        return (await AdminTokens(storage.db).create("ops", AdminScope.READ_WRITE))[1]
    finally:
        await storage.aclose()


async def open_call(stack: LocalStack, device: RunningDevice) -> str:
    device.daemon.press()
    await device.watcher.wait_for(State.IN_CALL, 30)
    calls = await stack.backend.core.list_calls()
    return calls[-1].call_id


async def operator_link(stack: LocalStack, token: str, call_id: str) -> dict[str, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{stack.backend.url}/v1/admin/calls/{call_id}/operator-token",
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response,
    ):
        assert response.status == 201, await response.text()
        body: dict[str, str] = await response.json()
        return body


async def wait_js(page: Page, expression: str, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await page.evaluate(expression):
            await asyncio.sleep(0.1)


def speaker_of(device: RunningDevice) -> np.ndarray:
    return read_wav_mono(device.daemon.settings.simulated.speaker_wav)  # type: ignore[arg-type]


async def test_a_person_hears_the_kiosk_is_heard_over_the_agent_and_reads_its_state(
    stack: LocalStack,
    device: RunningDevice,
    cdp: Cdp,
    admin_token: str,
    person_wav: Path,
    user_pcm: np.ndarray,
) -> None:
    call_id = await open_call(stack, device)
    session = await stack.agent.next_session(timeout=20)
    link = await operator_link(stack, admin_token, call_id)
    assert link["identity"].startswith("operator-") and link["room"]
    async with asyncio.timeout(120), Page.open(cdp) as page:
        await page.goto(link["join_url"])
        await wait_js(page, "window.kiosk && window.kiosk.connection === 'connected'")
        # A late joiner knows at once: the kiosk's attributes, and its status sent to us.
        await wait_js(page, "window.kiosk.state === 'in_call'", 10)
        attributes = await page.evaluate(
            "Object.fromEntries([...window.kioskRoom.remoteParticipants.values()]"
            ".filter(p => 'kiosk.state' in p.attributes).map(p => [p.identity, p.attributes]))"
        )
        assert [a["kiosk.state"] for a in attributes.values()] == ["in_call"]
        assert [a["kiosk.call_id"] for a in attributes.values()] == [call_id]
        await wait_js(page, "window.kiosk.statuses.some(s => s.state === 'in_call')", 10)
        assert "in_call" in await page.text("#kiosk-state")

        speaker_before = len(speaker_of(device))
        answers_before = len(session.utterances)
        assert await page.evaluate(RECORD_KIOSK)
        # The person talks (looped) while the kiosk's user talks and the agent answers.
        await wait_js(page, "window.heard.length * 4096 >= 48000 * 12", 40)
        async with asyncio.timeout(40):
            while len(session.utterances) <= answers_before:
                await asyncio.sleep(0.2)
        # The answer is recorded when the agent starts saying it: let it be played out.
        await asyncio.sleep(len(session.utterances[answers_before]) / RATE + 1.5)
        heard = np.frombuffer(base64.b64decode(await page.evaluate(HEARD)), dtype=np.int16)

    speaker = speaker_of(device)[speaker_before:]
    person = read_wav_mono(person_wav)
    other = await asyncio.wait_for(synthesize(OTHER_SENTENCE), 30)
    # The kiosk's speaker carries the person, and the agent's answer in the same stretch.
    person_peak, _ = slip_tolerant_xcorr(speaker, person[: -RATE // 2], RATE)
    answer_peak, _ = slip_tolerant_xcorr(speaker, session.utterances[answers_before], RATE)
    control, _ = slip_tolerant_xcorr(speaker, other, RATE)
    assert person_peak > 0.5, f"the kiosk's speaker lacks the person ({person_peak:.2f})"
    assert answer_peak > 0.5, f"the kiosk's speaker lacks the agent ({answer_peak:.2f})"
    assert control < 0.3, f"an unrelated sentence matches ({control:.2f})"
    # The person heard the kiosk's microphone.
    kiosk_peak, _ = slip_tolerant_xcorr(heard, user_pcm[: -RATE * 3 // 2], RATE)
    heard_control, _ = slip_tolerant_xcorr(heard, other, RATE)
    assert kiosk_peak > 0.5, f"the person did not hear the kiosk ({kiosk_peak:.2f})"
    assert heard_control < 0.3, f"an unrelated sentence matches ({heard_control:.2f})"


async def test_only_a_vouched_operator_ends_the_call_from_the_room(
    stack: LocalStack, device: RunningDevice, cdp: Cdp, admin_token: str
) -> None:
    call_id = await open_call(stack, device)
    calls = await stack.backend.core.list_calls()
    room = calls[-1].room
    livekit = load_config(stack.backend_config).livekit
    # Someone with a valid token for the room, but not one the backend minted an operator.
    stranger = (
        api.AccessToken(livekit.api_key, livekit.api_secret)
        .with_identity("stranger")
        .with_grants(
            api.VideoGrants(
                room_join=True,
                room=room,
                can_publish=True,
                can_subscribe=True,
                can_publish_data=True,
                can_publish_sources=["microphone"],
            )
        )
        .to_jwt()
    )
    async with asyncio.timeout(120):
        async with Page.open(cdp) as page:
            await page.goto(
                f"{stack.backend.url}/operator#{urlencode({'url': livekit.url, 'token': stranger})}"
            )
            await wait_js(page, "window.kiosk && window.kiosk.connection === 'connected'")
            await page.evaluate("document.getElementById('end-call').click()")
            await asyncio.sleep(3)  # the message has long arrived: the call goes on
            assert device.daemon.supervisor.state is State.IN_CALL
        link = await operator_link(stack, admin_token, call_id)
        async with Page.open(cdp) as page:
            await page.goto(link["join_url"])
            await wait_js(page, "window.kiosk && window.kiosk.connection === 'connected'")
            await page.evaluate("document.getElementById('end-call').click()")
            await device.watcher.wait_for(State.READY, 20)
    record = await ended_record(stack, call_id)
    assert record.end_reason == "operator_ended"


async def test_the_agent_hands_over_to_the_person_and_the_call_ends_when_the_person_leaves(
    stack: LocalStack, device: RunningDevice, cdp: Cdp, admin_token: str
) -> None:
    call_id = await open_call(stack, device)
    session = await stack.agent.next_session(timeout=20)
    link = await operator_link(stack, admin_token, call_id)
    async with asyncio.timeout(120), Page.open(cdp) as page:
        await page.goto(link["join_url"])
        await wait_js(page, "window.kiosk && window.kiosk.connection === 'connected'")
        await session.leave()
        await asyncio.sleep(3)  # the agent's leaving has reached the kiosk: still a call
        assert device.daemon.supervisor.state is State.IN_CALL
        await page.evaluate("window.kioskRoom.disconnect()")
        await device.watcher.wait_for(State.READY, 20)
    record = await ended_record(stack, call_id)
    assert record.end_reason == "person_left"
