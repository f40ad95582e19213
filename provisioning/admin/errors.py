"""The admin adapters' refusals, as the API's usual `{error, message}` with their status."""

from __future__ import annotations

from provisioning.errors import AuthError, ForbiddenError, ProvisioningError


class AdminAuthError(AuthError):
    """No admin token, a malformed one, or one that is unknown or revoked (HTTP 401)."""

    def __init__(self, message: str = "a valid admin token is required") -> None:
        super().__init__("admin_token_required", message)


class ReadOnlyTokenError(ForbiddenError):
    """A `read` token asked for a change (HTTP 403)."""

    def __init__(self, message: str = "this admin token may only read") -> None:
        super().__init__("read_only_token", message)


class CsrfError(ForbiddenError):
    """A console form without its session's CSRF token, or from another origin (HTTP 403)."""

    def __init__(self, message: str = "the form is stale or from another site") -> None:
        super().__init__("csrf_refused", message)


class UnknownAdminTokenError(ProvisioningError, LookupError):
    """An admin command named a token (by name or id) that is not active (HTTP 404)."""

    status = 404
    code = "unknown_admin_token"
