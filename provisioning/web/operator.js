// The operator page: joins a kiosk's call with the official LiveKit client, speaks through
// the microphone, plays everyone else, shows the kiosk's state (its participant attributes
// and call-status messages) and can end the call. The server URL and token come in the
// page's fragment, which the browser never sends to a server; a ringing call's join link
// carries a ticket instead, which the page trades for a token when it is opened.
"use strict";

const STATUS_TOPIC = "kiosk.call_status";
const CONTROL_TOPIC = "kiosk.control";
const { Room, RoomEvent, Track } = LivekitClient;

// What the page knows, for people (the elements) and for tests (window.kiosk).
const kiosk = (window.kiosk = {
  connection: "joining",
  state: null,
  muted: null,
  callId: null,
  statuses: [],
  error: null,
});

function show() {
  document.getElementById("connection").textContent = kiosk.error
    ? `${kiosk.connection}: ${kiosk.error}`
    : kiosk.connection;
  document.getElementById("kiosk-state").textContent = kiosk.state ?? "unknown";
  document.getElementById("kiosk-muted").textContent =
    kiosk.muted === null ? "unknown" : kiosk.muted ? "muted" : "on";
  document.getElementById("call-id").textContent = kiosk.callId ?? "-";
  document.getElementById("end-call").disabled = kiosk.connection !== "connected";
}

function fromAttributes(participant) {
  const a = participant.attributes || {};
  if (!("kiosk.state" in a)) return;
  kiosk.state = a["kiosk.state"];
  kiosk.muted = a["kiosk.muted"] === "true";
  kiosk.callId = a["kiosk.call_id"] || null;
  show();
}

// The server and token: in the fragment, or minted now for a ringing call's ticket (the
// backend refuses it once the call is over).
async function credentials(params) {
  if (!params.has("ticket")) return { url: params.get("url"), token: params.get("token") };
  const response = await fetch("/v1/operator/join", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ticket: params.get("ticket") }),
    cache: "no-store",
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.message || `refused (${response.status})`);
  return { url: body.server_url, token: body.token };
}

async function main() {
  const params = new URLSearchParams(location.hash.slice(1));
  const room = new Room();
  window.kioskRoom = room;
  room.on(RoomEvent.TrackSubscribed, (track) => {
    if (track.kind === Track.Kind.Audio) {
      document.getElementById("audio").appendChild(track.attach());
    }
  });
  room.on(RoomEvent.DataReceived, (payload, participant, kind, topic) => {
    if (topic !== STATUS_TOPIC) return;
    const message = JSON.parse(new TextDecoder().decode(payload));
    kiosk.statuses.push(message);
    kiosk.state = message.state;
    kiosk.muted = message.muted;
    kiosk.callId = message.call_id;
    show();
  });
  room.on(RoomEvent.ParticipantAttributesChanged, (changed, participant) => {
    if (participant !== room.localParticipant) fromAttributes(participant);
  });
  room.on(RoomEvent.ParticipantConnected, fromAttributes);
  room.on(RoomEvent.Disconnected, () => {
    kiosk.connection = "left";
    show();
  });
  document.getElementById("end-call").addEventListener("click", () => {
    const message = JSON.stringify({ v: 1, type: "end_call" });
    room.localParticipant.publishData(new TextEncoder().encode(message), {
      reliable: true,
      topic: CONTROL_TOPIC,
    });
  });
  const { url, token } = await credentials(params);
  // Out of the address bar and the history, whichever form came: a token is a secret and a
  // join link is not for copying on.
  history.replaceState(null, "", location.pathname);
  await room.connect(url, token);
  for (const participant of room.remoteParticipants.values()) fromAttributes(participant);
  await room.localParticipant.setMicrophoneEnabled(true);
  kiosk.connection = "connected";
  show();
}

main().catch((error) => {
  kiosk.connection = "failed";
  kiosk.error = error instanceof Error ? error.message : String(error);
  show();
});
