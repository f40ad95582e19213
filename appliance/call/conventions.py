"""Each call provider's in-call conventions: who the far end is, what it sends, what it means.

Chosen per call from the grant's `provider` (`for_provider`). Pure functions over participant
views (identity, kind, attributes) and received bytes, so they are tested without LiveKit;
`livekit_call.py` feeds them the room's data messages, text streams and attribute changes,
and reports the normalized events they return (`events.py`). Every rule cites the line of
the platform's document in `../shared/seeds/` (PLATFORMS.md puts them side by side); what a
document leaves out is a named assumption here and in docs/platforms.md.
"""

from __future__ import annotations

import json
import logging
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from appliance.call.events import (
    AgentActivity,
    AgentStateChanged,
    CallEvent,
    FarEndAnswered,
    PlatformEnded,
    Speaker,
    ToolCall,
    Transcript,
)
from appliance.vocabulary import PartyKind

logger = logging.getLogger(__name__)

# LiveKit's own names, which LiveKit agents (and the platforms built on them) use.
AGENT_STATE_ATTRIBUTE = "lk.agent.state"
TRANSCRIPTION_TOPIC = "lk.transcription"
TRANSCRIPTION_FINAL = "lk.transcription_final"
SEGMENT_ID = "lk.segment_id"
TRANSCRIBED_TRACK = "lk.transcribed_track_id"
# Click2Call's phone leg (003 l. 58-60).
SIP_CALL_STATUS = "sip.callStatus"
# Our own data topics (call status, control): never a platform's.
OUR_TOPICS = "kiosk."
# What a platform may call the kiosk's side of a transcript (Call2Me names no values).
USER_WORDS = frozenset({"user", "human", "caller", "customer"})
# Bounds on what the far end may make us keep or show.
MAX_TEXT_CHARS = 2000
MAX_REASON_CHARS = 120
MAX_TOOL_ARGS_BYTES = 4096
MAX_MESSAGE_BYTES = 64 * 1024


@dataclass(frozen=True)
class ParticipantView:
    """What the conventions may know of a participant: identity, party kind, attributes."""

    identity: str
    kind: PartyKind | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)


def clean(text: object, limit: int) -> str:
    """`text` as a bounded single-line string: control and format characters become spaces."""
    chars = (" " if unicodedata.category(c)[0] == "C" else c for c in str(text))
    return " ".join("".join(chars).split())[:limit]


class Conventions:
    """The fleet's own LiveKit with a LiveKit agent: the base the platforms refine.

    - The far end is the agent (participant kind AGENT).
    - Transcripts are text streams on `lk.transcription`, interim then final
      (`lk.transcription_final`, `lk.segment_id`); the stream's sender is the speaker, so a
      line sent under the kiosk's identity is the user's (LiveKit agents do this; HMS, which
      runs them, documents it: 004 l. 477-498).
    - The agent's state is its `lk.agent.state` attribute (004 l. 460-468).
    - Tools come over LiveKit RPC (`livekit_call.py`), not data messages.
    """

    name: ClassVar[str] = "livekit"
    # Text-stream topics registered for this platform.
    text_topics: ClassVar[frozenset[str]] = frozenset({TRANSCRIPTION_TOPIC})
    # Data-message topics this platform sends; None is a message without a topic.
    data_topics: ClassVar[frozenset[str | None]] = frozenset()
    # Whether its data messages are read whatever their topic (a document whose client reads
    # every DataReceived); ours (`kiosk.…`) never are.
    any_topic: ClassVar[bool] = False
    # Whether the far end answers after it joined (a phone rings first).
    rings: ClassVar[bool] = False
    # Whether being removed from the room is a token running out, answered by a fresh
    # session (a rejoin the backend reissues), not the room closing.
    reissues: ClassVar[bool] = False

    def __init__(self) -> None:
        self._lines = 0

    # -- who is who ----------------------------------------------------------------------

    def is_far_end(self, participant: ParticipantView) -> bool:
        """Whether this participant is the other side whose messages we read."""
        return participant.kind is PartyKind.AGENT

    def may_send(self, sender: ParticipantView | None) -> bool:
        """Whether a data message from `sender` (None: the server) is the platform's."""
        return sender is None or self.is_far_end(sender)

    def reads_data(self, topic: str | None) -> bool:
        """Whether data messages on `topic` ("" or None: no topic) are the platform's."""
        if topic and topic.startswith(OUR_TOPICS):
            return False
        return self.any_topic or (topic or None) in self.data_topics

    # -- what it means -------------------------------------------------------------------

    def on_attributes(
        self, participant: ParticipantView, changed: Mapping[str, str]
    ) -> list[CallEvent]:
        """Events for attributes that changed (all of them, for one who just joined)."""
        if not self.is_far_end(participant) or AGENT_STATE_ATTRIBUTE not in changed:
            return []
        value = changed[AGENT_STATE_ATTRIBUTE]
        activity = AgentActivity(value) if value in set(AgentActivity) else None
        return [AgentStateChanged(activity)]

    def on_text(
        self,
        sender: ParticipantView | None,
        *,
        local_identity: str,
        local_tracks: frozenset[str] = frozenset(),
        topic: str,
        text: str,
        attributes: Mapping[str, str],
        stream_id: str,
    ) -> list[CallEvent]:
        """Events for a whole text stream received on one of `text_topics`."""
        if topic != TRANSCRIPTION_TOPIC or sender is None:
            return []
        # The kiosk's own speech: sent under its identity, or naming its microphone track.
        if sender.identity == local_identity or attributes.get(TRANSCRIBED_TRACK) in local_tracks:
            speaker = Speaker.USER
        elif self.is_far_end(sender):
            speaker = Speaker.AGENT
        else:
            return []
        final = attributes.get(TRANSCRIPTION_FINAL, "true") != "false"
        segment = attributes.get(SEGMENT_ID) or stream_id
        return [Transcript(speaker, clean(text, MAX_TEXT_CHARS), final, clean(segment, 128))]

    def on_data(self, sender: ParticipantView | None, payload: bytes) -> list[CallEvent]:
        """Events for one data message on one of `data_topics` from `may_send`."""
        message = _json_object(payload)
        return [] if message is None else self.on_message(message)

    def on_message(self, message: Mapping[str, Any]) -> list[CallEvent]:
        """Events for one decoded data message (the platforms' JSON)."""
        return []

    def tool_output(self, call_id: str, output: str, *, ok: bool) -> bytes | None:
        """The data message that answers a tool call made by data message; None if the
        platform makes none (tools then come over LiveKit RPC only)."""
        return None

    def _segment(self) -> str:
        self._lines += 1
        return f"{self.name}-{self._lines}"

    def _transcript(self, speaker: Speaker, text: object, segment: str | None = None) -> Transcript:
        return Transcript(speaker, clean(text, MAX_TEXT_CHARS), True, segment or self._segment())


class HostedConventions(Conventions):
    """A hosted platform's room: everyone in it but the kiosk is the platform's (its agent,
    whatever kind it joins as; there are no operators of ours), so any party is the far end."""

    def is_far_end(self, participant: ParticipantView) -> bool:
        return participant.kind is not None


class Call2MeConventions(HostedConventions):
    """Call2Me (seeds/000): an agent; transcripts as data messages without a topic."""

    name = "call2me"
    text_topics = frozenset()
    # l. 64-66: tokens last about 60 minutes; "the SDK fires a disconnected event with reason
    # token-expired; your code reissues and reconnects".
    reissues = True
    # l. 72-79: "LiveKit publishes transcripts as data messages on the same room", read with
    # DataReceived whatever the topic (none is given): {"type": "transcript", "speaker", "text"}.
    any_topic = True

    def on_message(self, message: Mapping[str, Any]) -> list[CallEvent]:
        if message.get("type") != "transcript" or "text" not in message:
            return []
        # l. 77 prints `speaker` without naming its values. Assumed: "user" (or "human",
        # "caller", "customer") is the kiosk's side, anything else the far end.
        speaker = Speaker.USER if message.get("speaker") in USER_WORDS else Speaker.AGENT
        return [self._transcript(speaker, message["text"])]


class VatelConventions(HostedConventions):
    """Vatel (seeds/001): an agent; the session's `{type, timestamp, data}` events.

    The document gives the events (l. 55-64) and the reply (`sendToolCallOutput(toolCallId,
    output)`, l. 65), but not how they travel in the room. **Assumed** (docs/platforms.md):
    each event is a JSON data message (any topic; none expected), and a tool's output goes
    back to the caller on the topic its call came on, as `{"type": "tool_call_output",
    "timestamp", "data": {"toolCallId", "output"}}`. A subclass with other `data_topics`
    or another `tool_output` swaps it.
    """

    name = "vatel"
    text_topics = frozenset()
    any_topic = True

    def on_message(self, message: Mapping[str, Any]) -> list[CallEvent]:
        kind = message.get("type")
        data = message.get("data")
        data = data if isinstance(data, Mapping) else {}
        if kind == "response_text" and "text" in data:
            # l. 59: agent text for the turn, `text`, `turn_id`.
            turn = data.get("turn_id")
            return [self._transcript(Speaker.AGENT, data["text"], turn and clean(turn, 128))]
        if kind == "input_audio_transcript" and "transcript" in data:
            # l. 60: STT of user speech, `transcript`.
            return [self._transcript(Speaker.USER, data["transcript"])]
        if kind == "session_ended":
            # l. 58: "May be an empty object; treat as end-of-call".
            reason = data.get("reason") or "session_ended"
            return [PlatformEnded(clean(reason, MAX_REASON_CHARS))]
        if kind == "tool_call":
            # l. 64: toolCallId, toolName, arguments (parameter descriptors, optional value).
            call_id, name = data.get("toolCallId"), data.get("toolName")
            if not isinstance(call_id, str) or not isinstance(name, str):
                return []
            return [ToolCall(clean(name, 64), clean(call_id, 128), _descriptor_args(data))]
        return []  # session_started, speech_started/stopped, interruption: nothing to show

    def tool_output(self, call_id: str, output: str, *, ok: bool) -> bytes:
        # l. 65: session.sendToolCallOutput(toolCallId, outputString); a refusal is an
        # output too (the document has no error form).
        message = {
            "type": "tool_call_output",
            "timestamp": int(time.time() * 1000),
            "data": {"toolCallId": call_id, "output": output},
        }
        return json.dumps(message, separators=(",", ":")).encode()


class ThinnestAIConventions(HostedConventions):
    """thinnestAI (seeds/002): an agent; transcripts and the end as data messages."""

    name = "thinnestai"
    text_topics = frozenset()
    # l. 108-111: "data_received | Metadata from the voice engine", read with DataReceived
    # whatever the topic.
    any_topic = True

    def on_message(self, message: Mapping[str, Any]) -> list[CallEvent]:
        kind = message.get("type")
        if kind == "transcript" and "text" in message:
            # l. 113-115: role "user" or "agent".
            speaker = Speaker.USER if message.get("role") == "user" else Speaker.AGENT
            return [self._transcript(speaker, message["text"])]
        if kind == "call_ended":
            # l. 117-118: {"type": "call_ended", "duration"}; a `reason`, if the engine sends
            # one, is kept as the platform's reason.
            reason = str(message.get("reason") or "call_ended")
            duration = message.get("duration")
            if isinstance(duration, int | float) and not isinstance(duration, bool):
                reason = f"{reason} (duration {duration:g} s)"
            return [PlatformEnded(clean(reason, MAX_REASON_CHARS))]
        return []


class Click2CallConventions(Conventions):
    """Click2Call (seeds/003): the far end is a phone, the `sip…` participant; it rings
    first and has answered when its `sip.callStatus` attribute becomes `active`."""

    name = "click2call"
    text_topics = frozenset()
    rings = True

    def is_far_end(self, participant: ParticipantView) -> bool:
        # l. 46, 50, 59: `p.identity.startsWith('sip')`.
        return participant.kind is PartyKind.SIP or participant.identity.startswith("sip")

    def on_attributes(
        self, participant: ParticipantView, changed: Mapping[str, str]
    ) -> list[CallEvent]:
        # l. 58-60: ParticipantAttributesChanged, `sip.callStatus` === 'active' is the answer.
        if self.is_far_end(participant) and changed.get(SIP_CALL_STATUS) == "active":
            return [FarEndAnswered(participant.identity)]
        return []


class HmsVoiceDockConventions(HostedConventions):
    """HMS VoiceDock (seeds/004): a LiveKit agent; `lk.transcription` text streams with
    `lk.transcription_final` and `lk.segment_id` (l. 477-498) and `lk.agent.state`
    (l. 460-468). Tool calls are not sent into the room (l. 575); the end reason is only in
    its webhook (l. 634-641), so its room closing is our `room_closed`."""

    name = "hmsvoicedock"


_BY_PROVIDER: dict[str, type[Conventions]] = {
    cls.name: cls
    for cls in (
        Conventions,
        Call2MeConventions,
        VatelConventions,
        ThinnestAIConventions,
        Click2CallConventions,
        HmsVoiceDockConventions,
    )
}


def for_provider(provider: str) -> Conventions:
    """The conventions of the grant's `provider`; an unknown one gets the own LiveKit's."""
    cls = _BY_PROVIDER.get(provider)
    if cls is None:
        logger.warning("unknown call provider %r: reading the call as LiveKit's", provider)
        cls = Conventions
    return cls()


def rings(provider: str) -> bool:
    """Whether the far end of `provider`'s calls is a phone that rings before it answers."""
    cls = _BY_PROVIDER.get(provider)
    return cls is not None and cls.rings


def _json_object(payload: bytes) -> dict[str, Any] | None:
    if len(payload) > MAX_MESSAGE_BYTES:
        return None
    try:
        message = json.loads(payload)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _descriptor_args(data: Mapping[str, Any]) -> dict[str, Any]:
    """Vatel's `arguments` (descriptors `{name, value?}`; an object is taken as it is)."""
    raw = data.get("arguments")
    args: dict[str, Any] = {}
    if isinstance(raw, Mapping):
        args = dict(raw)
    elif isinstance(raw, list):
        for item in raw:
            if isinstance(item, Mapping) and isinstance(item.get("name"), str) and "value" in item:
                args[item["name"]] = item["value"]
    if len(json.dumps(args, default=str)) > MAX_TOOL_ARGS_BYTES:
        return {}
    return args
