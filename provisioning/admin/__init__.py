"""Fleet administration over HTTP: admin tokens, the JSON admin API and the web console."""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from provisioning.admin.api import AdminApi
from provisioning.admin.console import Console, OperatorGrants
from provisioning.admin.tokens import AdminScope, AdminToken, AdminTokens, Clock
from provisioning.core import ProvisioningCore
from provisioning.storage.base import Database
from provisioning.webhooks_out import WebhookOutbox

__all__ = ["AdminScope", "AdminStores", "AdminToken", "AdminTokens", "add_admin_routes"]


@dataclass(frozen=True)
class AdminStores:
    """What the admin adapters read beside the core: tokens and sessions, webhook deliveries."""

    tokens: AdminTokens
    deliveries: WebhookOutbox

    @classmethod
    def over(cls, db: Database, *, clock: Clock = time.time) -> AdminStores:
        """The stores in the backend's own database."""
        return cls(tokens=AdminTokens(db, clock=clock), deliveries=WebhookOutbox(db))


def add_admin_routes(
    app: web.Application,
    core: ProvisioningCore,
    stores: AdminStores,
    *,
    operators: OperatorGrants | None = None,
) -> None:
    """Serve the admin API (`/v1/admin/`) and the console (`/console/`) over `core`; with
    `operators`, the console's live calls have a "Join call" button."""
    AdminApi(core, stores.tokens, stores.deliveries).add_routes(app)
    Console(core, stores.tokens, stores.deliveries, operators=operators).add_routes(app)
