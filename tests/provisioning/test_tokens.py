"""The backend's own HS256 signing of call tokens, held to what livekit-api would mint."""

from __future__ import annotations

import time

import jwt
import pytest
from livekit.api import TokenVerifier

from provisioning.tokens import LiveKitTokenMinter
from tests.bench.bare_endpoint import AccessTokenMinter

KEY = "test-key"
SECRET = "test-secret-0123456789abcdef0123456789"
CALL = {
    "identity": "device-d-00112233aabbccdd",
    "name": "Lobby kiosk \u00e9",
    "room": "call-c-0011223344556677",
    "device_id": "d-00112233aabbccdd",
    "call_id": "c-0011223344556677",
}


def _claims(token: str) -> dict[str, object]:
    claims: dict[str, object] = jwt.decode(token, SECRET, algorithms=["HS256"], issuer=KEY)
    return claims


@pytest.mark.parametrize("ttl_s", [60, 600])
def test_the_claims_are_livekit_apis_key_for_key(ttl_s: int) -> None:
    ours = LiveKitTokenMinter(api_key=KEY, api_secret=SECRET, agent_name="agent-x", ttl_s=ttl_s)
    reference = AccessTokenMinter(api_key=KEY, api_secret=SECRET, agent_name="agent-x", ttl_s=ttl_s)
    before = int(time.time())
    minted, expected = ours.mint(**CALL), reference.mint(**CALL)
    after = int(time.time())

    assert jwt.get_unverified_header(minted.jwt) == jwt.get_unverified_header(expected.jwt)
    claims, expected_claims = _claims(minted.jwt), _claims(expected.jwt)
    times = ("nbf", "exp")
    assert {k: v for k, v in claims.items() if k not in times} == {
        k: v for k, v in expected_claims.items() if k not in times
    }
    assert before <= int(str(claims["nbf"])) <= after
    assert claims["exp"] == int(str(claims["nbf"])) + ttl_s == minted.expires_at


def test_livekits_verifier_accepts_it_and_a_wrong_secret_does_not() -> None:
    minter = LiveKitTokenMinter(api_key=KEY, api_secret=SECRET, agent_name="agent-x", ttl_s=60)
    token = minter.mint(**CALL, agent_name="agent-y").jwt

    claims = TokenVerifier(KEY, SECRET).verify(token)
    assert claims.identity == CALL["identity"]
    assert claims.video is not None and claims.video.room == CALL["room"]
    assert claims.room_config is not None
    assert [agent.agent_name for agent in claims.room_config.agents] == ["agent-y"]
    with pytest.raises(jwt.InvalidSignatureError):
        TokenVerifier(KEY, SECRET + "x").verify(token)


def test_each_token_is_signed_afresh() -> None:
    minter = LiveKitTokenMinter(api_key=KEY, api_secret=SECRET, agent_name="agent-x", ttl_s=60)
    first = minter.mint(**CALL).jwt
    other = minter.mint(**{**CALL, "room": "call-c-ffffffffffffffff"}).jwt
    # The prepared key is copied for each token, never updated in place: both verify.
    rooms = [TokenVerifier(KEY, SECRET).verify(token).video for token in (first, other)]
    assert [video.room if video else None for video in rooms] == [
        CALL["room"],
        "call-c-ffffffffffffffff",
    ]
