"""Admin tokens and console sessions on SQLite and PostgreSQL: hashed, scoped, revocable."""

from __future__ import annotations

import hashlib

import pytest

from provisioning.admin.errors import AdminAuthError, UnknownAdminTokenError
from provisioning.admin.tokens import (
    LAST_USED_RESOLUTION_S,
    SESSION_TTL_S,
    AdminScope,
    AdminTokens,
)
from provisioning.errors import BadRequestError
from provisioning.storage import SqlStorage

from .conftest import FakeClock

pytestmark = pytest.mark.integration


@pytest.fixture
def tokens(storage: SqlStorage, clock: FakeClock) -> AdminTokens:
    return AdminTokens(storage.db, clock=clock)


async def test_a_token_is_stored_hashed_and_authenticates(
    tokens: AdminTokens, storage: SqlStorage
) -> None:
    record, secret = await tokens.create("alice", AdminScope.READ_WRITE)
    assert secret.startswith(f"kadm_{record.token_id}_") and len(secret) > 50
    async with storage.db.session() as s:
        rows = await s.fetchall("SELECT * FROM admin_tokens")
    assert secret not in repr(rows)
    assert hashlib.sha256(secret.encode()).hexdigest() in repr(rows)
    token = await tokens.authenticate(secret)
    assert (token.name, token.scope, token.actor) == ("alice", AdminScope.READ_WRITE, "token:alice")
    assert token.can_write


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[:-1] + ("A" if s[-1] != "A" else "B"),  # same id, wrong secret
        lambda s: s.replace("kadm_", "kadm-"),
        lambda s: "",
        lambda s: s + "x",
        lambda s: "kadm_000000000000_" + s.split("_", 2)[2],  # unknown id
    ],
)
async def test_anything_but_the_token_is_refused(tokens: AdminTokens, mangle: object) -> None:
    _, secret = await tokens.create("alice", AdminScope.READ)
    assert callable(mangle)
    with pytest.raises(AdminAuthError):
        await tokens.authenticate(mangle(secret))


async def test_a_revoked_token_is_refused_and_its_sessions_end(
    tokens: AdminTokens, clock: FakeClock
) -> None:
    record, secret = await tokens.create("alice", AdminScope.READ_WRITE)
    session_id, _ = await tokens.open_session(await tokens.authenticate(secret))
    assert await tokens.session(session_id) is not None
    revoked = await tokens.revoke("alice")
    assert revoked.token_id == record.token_id and revoked.revoked_at is not None
    with pytest.raises(AdminAuthError):
        await tokens.authenticate(secret)
    assert await tokens.session(session_id) is None
    with pytest.raises(UnknownAdminTokenError):
        await tokens.revoke("alice")
    # The name is free again; the list keeps the revoked one.
    clock.advance(1)
    again, _ = await tokens.create("alice", AdminScope.READ)
    listed = await tokens.list_tokens()
    assert [(t.token_id, t.revoked_at is None) for t in listed] == [
        (record.token_id, False),
        (again.token_id, True),
    ]


async def test_revoke_by_id(tokens: AdminTokens) -> None:
    record, secret = await tokens.create("bob", AdminScope.READ)
    await tokens.revoke(record.token_id)
    with pytest.raises(AdminAuthError):
        await tokens.authenticate(secret)


async def test_names_are_unique_among_active_tokens_and_plain(tokens: AdminTokens) -> None:
    await tokens.create("alice", AdminScope.READ)
    with pytest.raises(BadRequestError):
        await tokens.create("alice", AdminScope.READ_WRITE)
    for bad in ("", "a b", "<script>", "x" * 65, "tab\t"):
        with pytest.raises(BadRequestError):
            await tokens.create(bad, AdminScope.READ)


async def test_last_used_is_recorded_at_most_once_a_minute(
    tokens: AdminTokens, clock: FakeClock
) -> None:
    _, secret = await tokens.create("alice", AdminScope.READ)
    assert (await tokens.list_tokens())[0].last_used_at is None
    first = clock.now
    await tokens.authenticate(secret)
    clock.advance(LAST_USED_RESOLUTION_S / 2)
    await tokens.authenticate(secret)
    assert (await tokens.list_tokens())[0].last_used_at == first
    clock.advance(LAST_USED_RESOLUTION_S)
    await tokens.authenticate(secret)
    assert (await tokens.list_tokens())[0].last_used_at == clock.now


async def test_sessions_expire_and_close(tokens: AdminTokens, clock: FakeClock) -> None:
    _, secret = await tokens.create("alice", AdminScope.READ)
    token = await tokens.authenticate(secret)
    session_id, session = await tokens.open_session(token)
    found = await tokens.session(session_id)
    assert found is not None and found.csrf_token == session.csrf_token
    assert found.token.token_id == token.token_id
    assert await tokens.session(session_id + "x") is None
    assert await tokens.session("") is None
    clock.advance(SESSION_TTL_S + 1)
    assert await tokens.session(session_id) is None

    other_id, _ = await tokens.open_session(token)
    await tokens.close_session(other_id)
    assert await tokens.session(other_id) is None
