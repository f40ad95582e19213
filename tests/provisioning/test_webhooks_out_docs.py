"""docs/webhooks.md held to the code: its verification snippet, its config keys, its events."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from provisioning.config import WebhooksConfig
from provisioning.events import EventKind
from provisioning.webhooks_out.signing import REPLAY_WINDOW_S, signed_headers

pytestmark = pytest.mark.unit

DOC = (Path(__file__).parents[2] / "docs" / "webhooks.md").read_text(encoding="utf-8")


def block(after: str, language: str) -> str:
    section = DOC.split(after, 1)[1]
    match = re.search(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert match is not None, after
    return match.group(1)


def documented_verify() -> Any:
    namespace: dict[str, Any] = {}
    exec(block("## Verifying", "python"), namespace)
    assert namespace["REPLAY_WINDOW_S"] == REPLAY_WINDOW_S
    return namespace["verify"]


def test_the_documented_snippet_verifies_what_the_sender_signs() -> None:
    verify = documented_verify()
    secret, body, now = b"s3cret", b'{"id":"e-1","type":"call.ended"}', 1_800_000_000
    headers = signed_headers(secret, "e-1", now, body)
    assert verify(secret, headers, body, now=now + REPLAY_WINDOW_S)
    assert not verify(secret, headers, body + b" ", now=now)
    assert not verify(b"other", headers, body, now=now)
    assert not verify(secret, headers, body, now=now + REPLAY_WINDOW_S + 1)
    assert not verify(secret, {**headers, "Webhook-Id": "e-2"}, body, now=now)
    rotated = {**headers, "Webhook-Signature": "v1,bm90IGl0 " + headers["Webhook-Signature"]}
    assert verify(secret, rotated, body, now=now)


def test_the_documented_config_keys_are_the_sections_keys() -> None:
    keys = re.findall(r"^(\w+) = ", block("## Config", "toml"), re.MULTILINE)
    fields = set(WebhooksConfig.__dataclass_fields__) - {"secret"} | {"secret_file"}
    assert set(keys) == fields
    for key in ("timeout_s", "max_attempts", "max_age_s", "max_backoff_s"):
        default = WebhooksConfig.__dataclass_fields__[key].default
        assert re.search(rf"^{key} = {default}\b", block("## Config", "toml"), re.MULTILINE)


def test_every_event_kind_is_documented() -> None:
    events = DOC.split("## Events", 1)[1].split("## Delivery", 1)[0]
    for kind in EventKind:
        assert f"`{kind.value}`" in events
