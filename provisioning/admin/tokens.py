"""Admin tokens and console sessions: stored hashed, scoped, revocable, over the `Database` seam.

A token is `kadm_<id>_<secret>`: the id finds its row, the SHA-256 of the whole token is
compared in constant time, and only that hash is stored, so the token is shown once, when
it is made. A console session is a random id held in a cookie (stored hashed too), with
its CSRF token and an expiry; it dies with its token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from provisioning.admin.errors import AdminAuthError, UnknownAdminTokenError
from provisioning.errors import BadRequestError, StorageConflictError
from provisioning.storage.base import Database, Row

Clock = Callable[[], float]

TOKEN_PREFIX = "kadm_"
_TOKEN = re.compile(r"kadm_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
# Writing the last-used time on every request would make every read a write.
LAST_USED_RESOLUTION_S = 60.0
SESSION_TTL_S = 8 * 3600
_TOKEN_COLUMNS = "token_id, name, scope, created_at, last_used_at, revoked_at"


class AdminScope(StrEnum):
    """What a token may do: `read` only GETs, `read-write` everything."""

    READ = "read"
    READ_WRITE = "read-write"


@dataclass(frozen=True)
class AdminToken:
    """An admin token as stored: never the token itself."""

    token_id: str
    name: str
    scope: AdminScope
    created_at: float
    last_used_at: float | None
    revoked_at: float | None

    @property
    def actor(self) -> str:
        """Who did it, in the admin actions' record."""
        return f"token:{self.name}"

    @property
    def can_write(self) -> bool:
        """Whether this token may change anything."""
        return self.scope is AdminScope.READ_WRITE


@dataclass(frozen=True)
class ConsoleSession:
    """A signed-in console: its token, its CSRF token and when it ends."""

    token: AdminToken
    csrf_token: str
    expires_at: float


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _token(row: Row) -> AdminToken:
    token_id, name, scope, created_at, last_used_at, revoked_at = row
    return AdminToken(token_id, name, AdminScope(scope), created_at, last_used_at, revoked_at)


def validate_token_name(name: str) -> str:
    """A token's name: letters, digits and `_.@-`, 1 to 64 characters."""
    if not _NAME.fullmatch(name):
        raise BadRequestError("token name must be 1-64 letters, digits or _.@-")
    return name


class AdminTokens:
    """The admin tokens and console sessions in the backend's database."""

    def __init__(self, db: Database, *, clock: Clock = time.time) -> None:
        self._db = db
        self._clock = clock

    async def create(self, name: str, scope: AdminScope) -> tuple[AdminToken, str]:
        """A new token named `name`; returns its record and the token, shown this once."""
        validate_token_name(name)
        token_id = secrets.token_hex(6)
        secret = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        token = AdminToken(token_id, name, AdminScope(scope), self._clock(), None, None)
        try:
            async with self._db.session() as s:
                await s.execute(
                    f"INSERT INTO admin_tokens ({_TOKEN_COLUMNS}, token_hash)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        token_id,
                        name,
                        token.scope.value,
                        token.created_at,
                        None,
                        None,
                        _digest(secret),
                    ),
                )
        except StorageConflictError as exc:
            raise BadRequestError(f"an active admin token is already named {name}") from exc
        return token, secret

    async def list_tokens(self) -> list[AdminToken]:
        """Every token, revoked ones too, oldest first."""
        async with self._db.session() as s:
            rows = await s.fetchall(
                f"SELECT {_TOKEN_COLUMNS} FROM admin_tokens ORDER BY created_at, token_id"
            )
        return [_token(row) for row in rows]

    async def revoke(self, name_or_id: str) -> AdminToken:
        """Revoke the active token with this name or id, and end its console sessions."""
        now = self._clock()
        async with self._db.transaction() as s:
            row = await s.fetchone(
                f"SELECT {_TOKEN_COLUMNS} FROM admin_tokens WHERE revoked_at IS NULL"
                " AND (token_id = ? OR name = ?)",
                (name_or_id, name_or_id),
            )
            if row is None:
                raise UnknownAdminTokenError(f"no active admin token {name_or_id}")
            token = _token(row)
            await s.execute(
                "UPDATE admin_tokens SET revoked_at = ? WHERE token_id = ?", (now, token.token_id)
            )
            await s.execute("DELETE FROM admin_sessions WHERE token_id = ?", (token.token_id,))
        return AdminToken(
            token.token_id, token.name, token.scope, token.created_at, token.last_used_at, now
        )

    async def authenticate(self, secret: str) -> AdminToken:
        """The active token `secret` is; `AdminAuthError` for anything else."""
        match = _TOKEN.fullmatch(secret)
        if match is None:
            raise AdminAuthError()
        async with self._db.session() as s:
            row = await s.fetchone(
                f"SELECT {_TOKEN_COLUMNS}, token_hash FROM admin_tokens"
                " WHERE token_id = ? AND revoked_at IS NULL",
                (match.group(1),),
            )
        if row is None or not hmac.compare_digest(_digest(secret), row[-1]):
            raise AdminAuthError()
        return await self._used(_token(row[:-1]))

    async def _used(self, token: AdminToken) -> AdminToken:
        now = self._clock()
        if token.last_used_at is not None and now - token.last_used_at < LAST_USED_RESOLUTION_S:
            return token
        async with self._db.session() as s:
            await s.execute(
                "UPDATE admin_tokens SET last_used_at = ? WHERE token_id = ?", (now, token.token_id)
            )
        return AdminToken(
            token.token_id, token.name, token.scope, token.created_at, now, token.revoked_at
        )

    # Console sessions

    async def open_session(self, token: AdminToken) -> tuple[str, ConsoleSession]:
        """A new console session for `token`: its id (for the cookie only) and the session."""
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        session = ConsoleSession(token, secrets.token_urlsafe(32), now + SESSION_TTL_S)
        async with self._db.transaction() as s:
            await s.execute("DELETE FROM admin_sessions WHERE expires_at <= ?", (now,))
            await s.execute(
                "INSERT INTO admin_sessions"
                " (session_hash, token_id, csrf_token, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (_digest(session_id), token.token_id, session.csrf_token, now, session.expires_at),
            )
        return session_id, session

    async def session(self, session_id: str) -> ConsoleSession | None:
        """The live session with this id, if its token is still active."""
        if not session_id or len(session_id) > 100:
            return None
        async with self._db.session() as s:
            row = await s.fetchone(
                "SELECT t.token_id, t.name, t.scope, t.created_at, t.last_used_at, t.revoked_at,"
                " s.csrf_token, s.expires_at"
                " FROM admin_sessions s JOIN admin_tokens t ON t.token_id = s.token_id"
                " WHERE s.session_hash = ? AND s.expires_at > ? AND t.revoked_at IS NULL",
                (_digest(session_id), self._clock()),
            )
        if row is None:
            return None
        token = await self._used(_token(row[:6]))
        return ConsoleSession(token, row[6], row[7])

    async def close_session(self, session_id: str) -> None:
        """End a session (logout); nothing happens for an unknown one."""
        async with self._db.session() as s:
            await s.execute(
                "DELETE FROM admin_sessions WHERE session_hash = ?", (_digest(session_id),)
            )
