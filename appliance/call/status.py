"""Versioned call-status data messages (docs/architecture.md, "Call status messages")."""

from __future__ import annotations

import json

from appliance.state import StateChange

STATUS_VERSION = 1


def encode_status(change: StateChange, *, seq: int, ts: float) -> bytes:
    """The JSON payload for one state change, sent reliably on the status topic."""
    message: dict[str, object] = {
        "v": STATUS_VERSION,
        "type": "call_status",
        "seq": seq,
        "state": change.state.value,
        "call_id": change.call_id,
        "muted": change.muted,
        "ts": round(ts, 3),
    }
    if change.reason is not None:
        message["reason"] = change.reason
    return json.dumps(message, separators=(",", ":")).encode()
