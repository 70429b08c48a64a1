"""Who is asking, and may they: the one place the API and the console check permissions.

API: `Authorization: Bearer <token>` — a user's API token (`dispatcher tokens create`),
or DISPATCHER_API_TOKEN, the bootstrap credential (audited as `bootstrap`). A handler
declares what it needs, e.g. `who: Annotated[Principal, Depends(api_permission(
Permission.CASES_WRITE))]`; no valid token is 401, a role without the permission 403.

Console: a session cookie made at sign-in (`People.sign_in`), looked up on every
request, so signing out, disabling the user or changing their password ends it at once.
`console_permission(...)` is the same check for pages (not signed in: to the sign-in
page; no permission: a 403 page), and `console_form(...)` also checks the form's CSRF
token, which is an HMAC of the session's secret: another site can neither read it nor
make it. The sign-in form has its own CSRF token, bound to a nonce cookie.
"""

# No `from __future__ import annotations` here: the dependencies' `Annotated[...,
# Depends(...)]` name closure variables, which FastAPI could not resolve from strings.
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from dispatcher.roles import Permission, Principal, bootstrap_principal
from dispatcher.services.people import People
from dispatcher.web.dependencies import Web

#: The console session cookie (its value is the session's secret) and the sign-in form's nonce.
SESSION_COOKIE = "dispatcher_console"
SIGN_IN_COOKIE = "dispatcher_sign_in"


class AccessDenied(Exception):
    """Refuse a request: 401 (who are you?) or 403 (not allowed). `console` picks the
    answer's form: a page or a redirect to sign in, else JSON."""

    def __init__(self, status: int, detail: str, *, console: bool) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.console = console


def _people(web: Web) -> People:
    return web.people


PeopleDep = Annotated[People, Depends(_people)]
_bearer = HTTPBearer(auto_error=False, description="a user's API token, or DISPATCHER_API_TOKEN (bootstrap)")


# ------------------------------------------------------------------------- API


async def api_principal(web: Web, credentials: Annotated[HTTPAuthorizationCredentials | None,
                                                         Depends(_bearer)]) -> Principal:
    """The holder of the request's bearer token; 401 without a valid one."""
    token = credentials.credentials.strip() if credentials is not None else ""
    if not token:
        raise AccessDenied(401, "send Authorization: Bearer <your API token> (dispatcher tokens create NAME)",
                           console=False)
    bootstrap = web.settings.api_token
    if bootstrap and hmac.compare_digest(token.encode(), bootstrap.encode()):
        return bootstrap_principal()
    principal = await run_in_threadpool(web.people.principal_for_token, token)
    if principal is None:
        raise AccessDenied(401, "this API token is unknown, expired or revoked, or its user is disabled",
                           console=False)
    return principal


def api_permission(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller, if they hold `permission` (else 401 / 403)."""

    async def check(principal: Annotated[Principal, Depends(api_principal)]) -> Principal:
        if not principal.can(permission):
            raise AccessDenied(403, _missing(principal, permission), console=False)
        return principal

    return check


def require(principal: Principal, permission: Permission, *, console: bool = False) -> None:
    """Refuse (403) a request whose user lacks `permission` for part of what it asks, when
    what is needed depends on the data (releasing a legal hold needs more than releasing a
    collector's hold; a template preview for a real case needs `cases.read`)."""
    if not principal.can(permission):
        raise AccessDenied(403, _missing(principal, permission), console=console)


def _missing(principal: Principal, permission: Permission) -> str:
    roles = ", ".join(sorted(principal.roles)) or "none"
    return f"{principal.name} (roles: {roles}) lacks the permission {permission.value}; ask an administrator"


# --------------------------------------------------------------------- console


def csrf_token(secret: str, purpose: str = "console") -> str:
    """The CSRF token of a session (or sign-in nonce): an HMAC of its secret."""
    return hmac.new(secret.encode("utf-8"), f"dispatcher.csrf.{purpose}".encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret: str | None, supplied: str | None, purpose: str = "console") -> bool:
    if not secret or not supplied:
        return False
    return hmac.compare_digest(csrf_token(secret, purpose).encode(), supplied.encode("utf-8", "replace"))


def new_sign_in_nonce() -> str:
    return secrets.token_urlsafe(24)


def _sign_in_target(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


async def console_principal(request: Request, web: Web) -> Principal:
    """The signed-in user of the session cookie; else to the sign-in page."""
    secret = request.cookies.get(SESSION_COOKIE)
    principal = await run_in_threadpool(web.people.principal_for_session, secret) if secret else None
    if principal is None:
        raise AccessDenied(401, _sign_in_target(request), console=True)
    return principal


def console_permission(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    """A dependency for console pages: the signed-in user, if they hold `permission`."""

    async def check(principal: Annotated[Principal, Depends(console_principal)]) -> Principal:
        if not principal.can(permission):
            raise AccessDenied(403, _missing(principal, permission), console=True)
        return principal

    return check


@dataclass(frozen=True, slots=True)
class ConsoleForm:
    """A console form from a signed-in user allowed to send it, its CSRF token checked."""

    principal: Principal
    fields: dict[str, str]


class CsrfFailed(Exception):
    """The form's CSRF token is missing or wrong (the console answers with a 403 page)."""

    def __init__(self, principal: Principal) -> None:
        super().__init__("csrf")
        self.principal = principal


async def form_fields(request: Request) -> dict[str, str]:
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


def console_form(permission: Permission) -> Callable[..., Awaitable[ConsoleForm]]:
    """A dependency for console actions: permission, then the form's CSRF token."""

    async def check(request: Request,
                    principal: Annotated[Principal, Depends(console_permission(permission))]) -> ConsoleForm:
        fields = await form_fields(request)
        if not csrf_ok(request.cookies.get(SESSION_COOKIE), fields.get("csrf")):
            raise CsrfFailed(principal)
        return ConsoleForm(principal, fields)

    return check
