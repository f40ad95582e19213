"""The web console under `/console/`: server-rendered pages over the core, no script.

Sign-in takes an admin token and opens a server-side session (`AdminTokens`), held in an
HttpOnly, SameSite=Strict cookie (Secure over https). Every POST is checked here, before
its handler runs: a live session, a same-origin `Origin` (when the browser sends one) and
the session's CSRF token; a change also needs a read-write token. A read-only token gets
no write form at all. Nothing secret is rendered twice: a new enrollment code is in the
answer to the POST that made it and nowhere else, and every page is `no-store`.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import urlencode, urlsplit

from aiohttp import web
from multidict import MultiDictProxy

from provisioning.admin import pages
from provisioning.admin.api import delivery_state, end_reason, parse_time
from provisioning.admin.errors import AdminAuthError, CsrfError, ReadOnlyTokenError
from provisioning.admin.html import NAV, Markup, page
from provisioning.admin.settings_form import form_over
from provisioning.admin.tokens import SESSION_TTL_S, AdminTokens, ConsoleSession
from provisioning.core import ProvisioningCore
from provisioning.errors import BadRequestError, ProvisioningError
from provisioning.webhooks_out import WebhookOutbox

logger = logging.getLogger(__name__)

SESSION_COOKIE = "kiosk_console"
LOGIN_COOKIE = "kiosk_console_login"
LOGIN_TTL_S = 900
CALLS_SHOWN = 200
DELIVERIES_SHOWN = 100
DAY_S = 86400
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it, browsers send `Origin: null` on form posts.
    "Referrer-Policy": "same-origin",
}
DONE = {
    "approve": "Approved",
    "reject": "Rejected",
    "revoke": "Revoked",
    "settings": "Settings saved for",
    "group": "Group saved for",
}

Form = MultiDictProxy[str | bytes | bytearray | web.FileField]


class JoinLink(Protocol):
    """An operator's way into one live call."""

    def join_path(self) -> str:
        """The operator page's path, the credentials in its fragment."""
        ...


class OperatorGrants(Protocol):
    """Mints operator tokens for live calls (`provisioning/operators.py`'s `Operators`)."""

    async def grant(self, call_id: str, *, actor: str) -> JoinLink:
        """A token for one person to join `call_id` now; the call must be open."""
        ...


PageHandler = Callable[[web.Request, ConsoleSession], Awaitable[web.StreamResponse]]
FormHandler = Callable[[web.Request, ConsoleSession, Form], Awaitable[web.StreamResponse]]


def _https(request: web.Request) -> bool:
    # A proxy's word only ever adds the Secure flag; it cannot remove it.
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _check_origin(request: web.Request) -> None:
    """Refuse a POST the browser says came from another site."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise CsrfError("the form was sent from another site")
    origin = request.headers.get("Origin")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc != request.host):
        raise CsrfError("the form was sent from another origin")


def _text(form: Form, name: str) -> str:
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


def respond(
    title: str, body: Markup, *, status: int = 200, header: Markup | None = None
) -> web.Response:
    """An HTML page with the console's headers."""
    return web.Response(
        text=page(title, body, header=header),
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers=HEADERS,
    )


def redirect(location: str) -> web.Response:
    """303 See Other to a page of the console."""
    return web.Response(status=303, headers={**HEADERS, "Location": location})


class Console:
    """The console's routes over `core` and the webhook outbox; sessions through `tokens`."""

    def __init__(
        self,
        core: ProvisioningCore,
        tokens: AdminTokens,
        deliveries: WebhookOutbox,
        *,
        operators: OperatorGrants | None = None,
    ) -> None:
        self._core = core
        self._tokens = tokens
        self._deliveries = deliveries
        self._operators = operators

    def add_routes(self, app: web.Application) -> None:
        """Register the console's pages and forms."""
        add_get = app.router.add_get
        add_post = app.router.add_post
        add_get("/console", self.home, allow_head=False)
        add_get("/console/", self.home, allow_head=False)
        add_get("/console/login", self.login_form, allow_head=False)
        add_post("/console/login", self.login)
        add_post("/console/logout", self._form(self.logout, write=False))
        add_get("/console/devices", self._page(self.devices), allow_head=False)
        add_get("/console/devices/{device_id}", self._page(self.device), allow_head=False)
        for action in ("approve", "reject", "revoke", "settings", "group"):
            add_post(f"/console/devices/{{device_id}}/{action}", self._form(self.change_device))
        add_get("/console/calls", self._page(self.calls), allow_head=False)
        if self._operators is not None:
            add_post("/console/calls/{call_id}/join", self._form(self.join_call))
        add_get("/console/enrollment-codes", self._page(self.codes), allow_head=False)
        add_post("/console/enrollment-codes", self._form(self.create_code))
        add_get("/console/groups", self._page(self.groups), allow_head=False)
        add_post("/console/groups", self._form(self.set_group))
        add_get("/console/actions", self._page(self.actions), allow_head=False)
        add_get("/console/webhooks", self._page(self.webhooks), allow_head=False)

    # Sessions, CSRF and refusals, for every page and form

    async def _session(self, request: web.Request) -> ConsoleSession | None:
        return await self._tokens.session(request.cookies.get(SESSION_COOKIE, ""))

    def _page(self, handler: PageHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            session = await self._session(request)
            if session is None:
                return redirect("/console/login")
            try:
                return await handler(request, session)
            except ProvisioningError as exc:
                return self._refusal(exc, session)

        return guarded

    def _form(
        self, handler: FormHandler, *, write: bool = True
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            session = await self._session(request)
            try:
                if session is None:
                    raise CsrfError("you are not signed in (or the session expired)")
                _check_origin(request)
                form = await request.post()
                sent = _text(form, "csrf")
                if not sent or not hmac.compare_digest(sent, session.csrf_token):
                    raise CsrfError()
                if write and not session.token.can_write:
                    raise ReadOnlyTokenError()
                return await handler(request, session, form)
            except ProvisioningError as exc:
                logger.info("console form refused", extra={"error_code": exc.code})
                return self._refusal(exc, session)

        return guarded

    def _header(self, session: ConsoleSession) -> Markup:
        token = session.token
        return pages.header(token.name, token.scope.value, session.csrf_token, NAV)

    def _refusal(self, exc: ProvisioningError, session: ConsoleSession | None) -> web.Response:
        header = None if session is None else self._header(session)
        return respond("Refused", pages.error_body(exc.message), status=exc.status, header=header)

    def _show(
        self, title: str, body: Markup, session: ConsoleSession, status: int = 200
    ) -> web.Response:
        return respond(title, body, status=status, header=self._header(session))

    @staticmethod
    def _csrf(session: ConsoleSession) -> str | None:
        """The CSRF token for write forms, or None: a read-only token gets none."""
        return session.csrf_token if session.token.can_write else None

    # Sign-in

    async def home(self, request: web.Request) -> web.Response:
        return redirect("/console/devices")

    async def login_form(self, request: web.Request, *, error: str | None = None) -> web.Response:
        """The sign-in page; its form's token is also in a short-lived cookie (double submit)."""
        login_csrf = secrets.token_urlsafe(24)
        response = respond(
            "Sign in", pages.login_page(login_csrf, error), status=401 if error else 200
        )
        response.set_cookie(
            LOGIN_COOKIE,
            login_csrf,
            max_age=LOGIN_TTL_S,
            path="/console/login",
            httponly=True,
            samesite="Strict",
            secure=_https(request),
        )
        return response

    async def login(self, request: web.Request) -> web.Response:
        try:
            _check_origin(request)
            form = await request.post()
            sent, kept = _text(form, "login_csrf"), request.cookies.get(LOGIN_COOKIE, "")
            if not sent or not kept or not hmac.compare_digest(sent, kept):
                raise CsrfError("the sign-in form is stale: try again")
            token = await self._tokens.authenticate(_text(form, "token").strip())
        except (AdminAuthError, CsrfError) as exc:
            logger.info("console sign-in refused", extra={"error_code": exc.code})
            message = "That token was refused." if isinstance(exc, AdminAuthError) else exc.message
            return await self.login_form(request, error=message)
        session_id, _ = await self._tokens.open_session(token)
        logger.info("console sign-in", extra={"admin_token": token.name})
        response = redirect("/console/devices")
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=SESSION_TTL_S,
            path="/console",
            httponly=True,
            samesite="Strict",
            secure=_https(request),
        )
        response.del_cookie(LOGIN_COOKIE, path="/console/login")
        return response

    async def logout(
        self, request: web.Request, session: ConsoleSession, form: Form
    ) -> web.Response:
        await self._tokens.close_session(request.cookies.get(SESSION_COOKIE, ""))
        response = redirect("/console/login")
        response.del_cookie(SESSION_COOKIE, path="/console")
        return response

    # Devices

    async def devices(self, request: web.Request, session: ConsoleSession) -> web.Response:
        devices = await self._core.list_devices()
        offline = {d.device_id for d in devices if self._core.offline(d)}
        done, device_id = request.query.get("done", ""), request.query.get("device", "")
        message = f"{DONE[done]} {device_id}." if done in DONE and device_id else None
        body = pages.devices_page(devices, offline, self._csrf(session), message)
        return self._show("Devices", body, session)

    async def device(
        self,
        request: web.Request,
        session: ConsoleSession,
        *,
        message: str | None = None,
        error: str | None = None,
    ) -> web.Response:
        device = await self._core.get_device(request.match_info["device_id"])
        body = pages.device_page(
            device,
            offline=self._core.offline(device),
            effective=self._core.settings_of(device),
            csrf=self._csrf(session),
            message=message,
            error=error,
        )
        return self._show(device.name or device.device_id, body, session, 400 if error else 200)

    async def change_device(
        self, request: web.Request, session: ConsoleSession, form: Form
    ) -> web.Response:
        device_id = request.match_info["device_id"]
        action = request.path.rsplit("/", 1)[1]
        actor = session.token.actor
        if action == "approve":
            await self._core.approve_device(device_id, actor=actor)
        elif action == "reject":
            await self._core.reject_device(device_id, actor=actor)
        elif action == "revoke":
            await self._core.revoke_device(device_id, actor=actor)
        else:
            try:
                if action == "settings":
                    stored = (await self._core.get_device(device_id)).settings
                    settings = form_over(stored, lambda name: _text(form, name))
                    await self._core.set_device_settings(device_id, settings, actor=actor)
                else:
                    group = _text(form, "group").strip() or None
                    await self._core.set_device_group(device_id, group, actor=actor)
            except BadRequestError as exc:
                return await self.device(request, session, error=exc.message)
            return redirect(f"/console/devices/{device_id}?done={action}")
        return redirect(f"/console/devices?done={action}&device={device_id}")

    # Calls, codes, actions, webhooks

    async def calls(self, request: web.Request, session: ConsoleSession) -> web.Response:
        query = request.query
        filters = pages.CallFilters(
            device_id=query.get("device_id", ""),
            end_reason=query.get("end_reason", ""),
            since=query.get("since", ""),
            until=query.get("until", ""),
        )
        devices = await self._core.list_devices()
        error = None
        try:
            since = parse_time(filters.since, "From") if filters.since else None
            until = parse_time(filters.until, "To") if filters.until else None
            if until is not None and "T" not in filters.until:
                until += DAY_S  # a date "to" includes its day
            calls = await self._core.list_calls(
                filters.device_id or None,
                end_reason=end_reason(filters.end_reason),
                since=since,
                until=until,
            )
        except BadRequestError as exc:
            calls, error = [], exc.message
        newest = list(reversed(calls))[:CALLS_SHOWN]
        by_id = {d.device_id: d for d in devices}
        joinable = {
            c.call_id
            for c in newest
            if self._operators is not None
            and c.ended_at is None
            and c.device_id in by_id
            and self._core.on_own_livekit(by_id[c.device_id])
        }
        body = pages.calls_page(
            newest,
            devices,
            filters,
            total=len(calls),
            error=error,
            csrf=self._csrf(session) if self._operators is not None else None,
            joinable=joinable,
        )
        return self._show("Calls", body, session, 400 if error else 200)

    async def join_call(
        self, request: web.Request, session: ConsoleSession, form: Form
    ) -> web.Response:
        """The admin joins a live call as its operator: a fresh operator token (recorded in
        the audit log), and the operator page with it in the fragment, which the browser
        keeps to itself."""
        assert self._operators is not None  # the route exists only with them
        grant = await self._operators.grant(
            request.match_info["call_id"], actor=session.token.actor
        )
        return redirect(grant.join_path())

    async def codes(
        self,
        request: web.Request,
        session: ConsoleSession,
        *,
        new_code: str | None = None,
        error: str | None = None,
    ) -> web.Response:
        codes = await self._core.list_enrollment_codes()
        body = pages.codes_page(codes, csrf=self._csrf(session), new_code=new_code, error=error)
        return self._show("Enrollment codes", body, session, 400 if error else 200)

    async def create_code(
        self, request: web.Request, session: ConsoleSession, form: Form
    ) -> web.Response:
        try:
            ttl_text = _text(form, "ttl_s") or "3600"
            if not ttl_text.isdigit():
                raise BadRequestError("the validity must be a number of seconds")
            code = await self._core.create_enrollment_code(
                int(ttl_text),
                _text(form, "label").strip(),
                requires_approval=_text(form, "requires_approval") == "1",
                group=_text(form, "group").strip() or None,
                actor=session.token.actor,
            )
        except BadRequestError as exc:
            return await self.codes(request, session, error=exc.message)
        # The answer to this POST is the only place the code is ever shown.
        return await self.codes(request, session, new_code=code)

    async def groups(
        self,
        request: web.Request,
        session: ConsoleSession,
        *,
        error: str | None = None,
    ) -> web.Response:
        groups = await self._core.list_groups()
        members: dict[str, int] = {}
        for device in await self._core.list_devices():
            if device.group is not None:
                members[device.group] = members.get(device.group, 0) + 1
        saved = request.query.get("saved", "")
        message = f"Settings saved for group {saved}." if saved in groups else None
        body = pages.groups_page(
            groups, members, csrf=self._csrf(session), message=message, error=error
        )
        return self._show("Groups", body, session, 400 if error else 200)

    async def set_group(
        self, request: web.Request, session: ConsoleSession, form: Form
    ) -> web.Response:
        group = _text(form, "group").strip()
        try:
            stored = (await self._core.list_groups()).get(group, {})
            settings = form_over(stored, lambda name: _text(form, name))
            await self._core.set_group_settings(group, settings, actor=session.token.actor)
        except BadRequestError as exc:
            return await self.groups(request, session, error=exc.message)
        return redirect(f"/console/groups?{urlencode({'saved': group})}")

    async def actions(self, request: web.Request, session: ConsoleSession) -> web.Response:
        actions = await self._core.list_admin_actions(200)
        return self._show("Admin actions", pages.actions_page(actions), session)

    async def webhooks(self, request: web.Request, session: ConsoleSession) -> web.Response:
        chosen = request.query.get("state", "")
        error = None
        try:
            state = delivery_state(chosen)
            deliveries = await self._deliveries.list_deliveries(limit=DELIVERIES_SHOWN, state=state)
        except BadRequestError as exc:
            deliveries, error = [], exc.message
        body = pages.deliveries_page(deliveries, chosen, error=error)
        return self._show("Webhook deliveries", body, session, 400 if error else 200)
