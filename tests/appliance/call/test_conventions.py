"""Each platform's in-call conventions, on participant views and bytes (no LiveKit): the far
end, the messages read, what they mean. Each case cites its seed document's line."""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance.call.conventions import (
    MAX_REASON_CHARS,
    Call2MeConventions,
    Click2CallConventions,
    Conventions,
    HmsVoiceDockConventions,
    ParticipantView,
    ThinnestAIConventions,
    VatelConventions,
    for_provider,
)
from appliance.call.events import (
    AgentActivity,
    AgentStateChanged,
    FarEndAnswered,
    PlatformEnded,
    Speaker,
    ToolCall,
    Transcript,
)
from appliance.vocabulary import PartyKind

pytestmark = pytest.mark.unit

AGENT = ParticipantView("agent-1", PartyKind.AGENT)
PERSON = ParticipantView("operator-1", PartyKind.PERSON)
KIOSK = "device-abc"


def _data(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


@pytest.mark.parametrize(
    ("provider", "cls"),
    [
        ("livekit", Conventions),
        ("call2me", Call2MeConventions),
        ("vatel", VatelConventions),
        ("thinnestai", ThinnestAIConventions),
        ("click2call", Click2CallConventions),
        ("hmsvoicedock", HmsVoiceDockConventions),
        ("something-new", Conventions),
    ],
)
def test_the_grants_provider_chooses_the_conventions(provider: str, cls: type) -> None:
    assert type(for_provider(provider)) is cls


@pytest.mark.parametrize("conventions", [Conventions(), HmsVoiceDockConventions()])
def test_lk_transcription_streams_interim_then_final_by_sender(conventions: Conventions) -> None:
    # 004 l. 482-498: interim (final "false") then final ("true"), one lk.segment_id; the
    # sender is the speaker.
    def text(sender: ParticipantView, words: str, final: str, **extra: str) -> list[Any]:
        return conventions.on_text(
            sender,
            local_identity=KIOSK,
            local_tracks=frozenset({"TR_mic"}),
            topic="lk.transcription",
            text=words,
            attributes={"lk.transcription_final": final, "lk.segment_id": "SG_1", **extra},
            stream_id="ST_9",
        )

    kiosk = ParticipantView(KIOSK)
    assert text(kiosk, "when does it", "false") == [
        Transcript(Speaker.USER, "when does it", False, "SG_1")
    ]
    assert text(kiosk, "when does it open", "true") == [
        Transcript(Speaker.USER, "when does it open", True, "SG_1")
    ]
    assert text(AGENT, "At nine.", "true") == [Transcript(Speaker.AGENT, "At nine.", True, "SG_1")]
    # The agent publishing the user's line for the kiosk's microphone track.
    assert text(AGENT, "hi", "true", **{"lk.transcribed_track_id": "TR_mic"})[0].speaker is (
        Speaker.USER
    )
    # On our own LiveKit a person (an operator) is not the agent; in a platform's room
    # everyone but the kiosk is the platform's.
    hosted = isinstance(conventions, HmsVoiceDockConventions)
    assert text(PERSON, "psst", "true") == (
        [Transcript(Speaker.AGENT, "psst", True, "SG_1")] if hosted else []
    )
    assert (
        conventions.on_text(
            AGENT, local_identity=KIOSK, topic="chat", text="x", attributes={}, stream_id="s"
        )
        == []
    )
    # Without a segment id the stream's id stands in (004 l. 493); control characters go.
    (line,) = conventions.on_text(
        AGENT,
        local_identity=KIOSK,
        topic="lk.transcription",
        text="a\x1b[2Jb\nc",
        attributes={},
        stream_id="ST_9",
    )
    assert line == Transcript(Speaker.AGENT, "a [2Jb c", True, "ST_9")


def test_lk_agent_state_from_the_far_end_only() -> None:
    conventions = Conventions()
    assert conventions.on_attributes(AGENT, {"lk.agent.state": "thinking"}) == [
        AgentStateChanged(AgentActivity.THINKING)
    ]
    assert conventions.on_attributes(AGENT, {"lk.agent.state": "initializing"}) == [
        AgentStateChanged(None)
    ]
    assert conventions.on_attributes(AGENT, {"other": "x"}) == []
    assert conventions.on_attributes(PERSON, {"lk.agent.state": "speaking"}) == []


def test_own_livekit_reads_no_data_messages() -> None:
    assert not Conventions().reads_data(None)
    assert not Conventions().reads_data("kiosk.control")


def test_call2me_transcripts_are_data_without_a_topic() -> None:
    conventions = Call2MeConventions()
    # 000 l. 72-79: no topic given; the client reads every data message but ours.
    assert conventions.reads_data(None) and conventions.reads_data("")
    assert conventions.reads_data("transcripts")
    assert not conventions.reads_data("kiosk.control")
    assert conventions.text_topics == frozenset()
    first = conventions.on_data(
        AGENT, _data({"type": "transcript", "speaker": "agent", "text": "Hi"})
    )
    second = conventions.on_data(
        AGENT, _data({"type": "transcript", "speaker": "user", "text": "Yo"})
    )
    assert [(t.speaker, t.text, t.final) for t in first + second] == [
        (Speaker.AGENT, "Hi", True),
        (Speaker.USER, "Yo", True),
    ]
    assert first[0].segment_id != second[0].segment_id  # type: ignore[union-attr]
    assert conventions.on_data(AGENT, b"not json") == []
    assert conventions.on_data(AGENT, _data({"type": "metrics"})) == []
    assert conventions.may_send(AGENT) and conventions.may_send(None)
    assert conventions.may_send(PERSON)  # the platform's agent, whatever kind it joins as
    (human,) = conventions.on_data(
        PERSON, _data({"type": "transcript", "speaker": "human", "text": "Hi"})
    )
    assert human.speaker is Speaker.USER  # type: ignore[union-attr]


def test_thinnestai_transcripts_and_call_ended_with_its_reason() -> None:
    conventions = ThinnestAIConventions()
    # 002 l. 111-119.
    assert conventions.reads_data(None)
    (line,) = conventions.on_data(AGENT, _data({"type": "transcript", "role": "user", "text": "a"}))
    assert (line.speaker, line.text) == (Speaker.USER, "a")  # type: ignore[union-attr]
    assert conventions.on_data(AGENT, _data({"type": "call_ended", "duration": 42})) == [
        PlatformEnded("call_ended (duration 42 s)")
    ]
    long = {"type": "call_ended", "reason": "agent\x00hung up " + "x" * 500}
    (ended,) = conventions.on_data(AGENT, _data(long))
    assert isinstance(ended, PlatformEnded)
    assert ended.reason.startswith("agent hung up") and len(ended.reason) == MAX_REASON_CHARS


def test_vatel_events_and_tool_calls_under_the_documented_assumption() -> None:
    conventions = VatelConventions()
    assert conventions.reads_data(None) and conventions.reads_data("vatel")
    assert not conventions.reads_data("kiosk.call_status")

    def event(kind: str, data: dict[str, Any]) -> list[Any]:
        # 001 l. 55: each msg has type, timestamp and data.
        return conventions.on_data(AGENT, _data({"type": kind, "timestamp": 1, "data": data}))

    # l. 59-60.
    assert event("response_text", {"text": "Hello", "turn_id": "t1"}) == [
        Transcript(Speaker.AGENT, "Hello", True, "t1")
    ]
    assert [t.speaker for t in event("input_audio_transcript", {"transcript": "hi"})] == [
        Speaker.USER
    ]
    # l. 58: session_ended, maybe empty: the end of the call.
    assert event("session_ended", {}) == [PlatformEnded("session_ended")]
    # l. 64: toolCallId, toolName, arguments as parameter descriptors.
    call = event(
        "tool_call",
        {
            "toolCallId": "tc-1",
            "toolName": "set_volume",
            "arguments": [{"name": "level", "value": 0.5}, {"name": "unset"}],
        },
    )
    assert call == [ToolCall("set_volume", "tc-1", {"level": 0.5})]
    assert event("tool_call", {"toolName": "x"}) == []
    assert event("speech_started", {"emulated": True}) == []
    # l. 65: the answer is sendToolCallOutput(toolCallId, output).
    reply = json.loads(conventions.tool_output("tc-1", "ok", ok=True))  # type: ignore[arg-type]
    assert reply["type"] == "tool_call_output"
    assert reply["data"] == {"toolCallId": "tc-1", "output": "ok"}
    assert isinstance(reply["timestamp"], int)


def test_click2call_far_end_is_the_sip_participant_and_answers_when_active() -> None:
    conventions = Click2CallConventions()
    phone = ParticipantView("sip_9530251797", PartyKind.PERSON)
    # 003 l. 46, 50: identity starts with "sip"; the SIP kind too.
    assert conventions.is_far_end(phone)
    assert conventions.is_far_end(ParticipantView("x", PartyKind.SIP))
    assert not conventions.is_far_end(AGENT)
    assert conventions.rings
    # l. 58-60: sip.callStatus becoming active is the answer.
    assert conventions.on_attributes(phone, {"sip.callStatus": "ringing"}) == []
    assert conventions.on_attributes(phone, {"sip.callStatus": "active"}) == [
        FarEndAnswered("sip_9530251797")
    ]
    assert conventions.on_attributes(AGENT, {"sip.callStatus": "active"}) == []


def test_only_call2me_reissues_when_removed() -> None:
    # 000 l. 66: a token-expired disconnect means reissue and reconnect.
    assert Call2MeConventions.reissues
    assert not any(
        cls.reissues
        for cls in (
            Conventions,
            VatelConventions,
            ThinnestAIConventions,
            Click2CallConventions,
            HmsVoiceDockConventions,
        )
    )
