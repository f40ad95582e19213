"""Fleet administration over HTTP: admin tokens, the JSON admin API and the web console."""

from __future__ import annotations

from aiohttp import web

from provisioning.admin.api import AdminApi
from provisioning.admin.console import Console
from provisioning.admin.tokens import AdminScope, AdminToken, AdminTokens
from provisioning.core import ProvisioningCore

__all__ = ["AdminScope", "AdminToken", "AdminTokens", "add_admin_routes"]


def add_admin_routes(app: web.Application, core: ProvisioningCore, tokens: AdminTokens) -> None:
    """Serve the admin API (`/v1/admin/`) and the console (`/console/`) over `core`."""
    AdminApi(core, tokens).add_routes(app)
    Console(core, tokens).add_routes(app)
