"""The collectors' console: signing in and out, the start pages, the language switcher
and finding a case. The case page and its actions are `web.case_page`, the task queue
`web.queue_page`; every page renders through `web.console_ui` (one Jinja environment
per language, `web.i18n`).

    GET  /ui/login, POST /ui/login        sign in with name + password; POST /ui/logout
    GET  /ui/home                         who you are and what your roles let you do
    POST /ui/locale                       locale=zh-CN|en-US: the console's language
    GET  /ui/cases?q=TEXT                 find a case: id prefix, name, last 4 digits of a phone, e-mail

Who may do what is checked by `web.auth` (the same permissions as the API). The session
cookie holds a random secret (HttpOnly, SameSite=Strict, Secure behind an https public
URL), made anew at every sign-in and looked up in the store on every request; every
form carries a CSRF token derived from it (the sign-in form one bound to a nonce
cookie). Every action is recorded with the signed-in user's name as `by`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from dispatcher.roles import NAME_MAX, Permission, Principal
from dispatcher.services.people import SESSION_HOURS, Refusal
from dispatcher.services.search import CaseHit, SearchError, search_cases
from dispatcher.settings import Settings
from dispatcher.store import repository
from dispatcher.store.plans import get_agreement
from dispatcher.web.auth import (
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    AccessDenied,
    CsrfFailed,
    PeopleDep,
    console_permission,
    console_principal,
    csrf_ok,
    csrf_token,
    form_fields,
    new_sign_in_nonce,
)
from dispatcher.web.console_ui import console_page, gettext_for, page_locale, render
from dispatcher.web.debtor_page import agreement_page
from dispatcher.web.dependencies import EngineDep, SettingsDep
from dispatcher.web.i18n import LOCALE_COOKIE, N_, supported, translator

__all__ = ["console_page", "router"]

router = APIRouter(prefix="/ui")

CASE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

#: A signed-in user who may read cases.
Reader = Annotated[Principal, Depends(console_permission(Permission.CASES_READ))]
Someone = Annotated[Principal, Depends(console_principal)]


def own_page(value: str | None) -> str:
    """`value` if it is one of our pages, else "": no scheme, no host (a protocol-relative
    //evil.example cannot start with /ui/), no backslash a browser might read as a slash."""
    if value and value.startswith("/ui/") and "\\" not in value and not value.startswith("/ui/login"):
        return value
    return ""


def _start_page(principal: Principal) -> str:
    """Where a user starts: collectors at their queue, other readers at search, the rest home."""
    if principal.can(Permission.TASKS_WORK):
        return "/ui/queue"
    return "/ui/cases" if principal.can(Permission.CASES_READ) else "/ui/home"


def _safe_next(value: str | None, principal: Principal) -> str:
    """Where to go after signing in: the page asked for, else the user's start page."""
    return own_page(value) or _start_page(principal)


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def cookie_options(settings: Settings) -> dict[str, Any]:
    return {"httponly": True, "samesite": "strict", "secure": settings.public_url.startswith("https://"),
            "path": "/ui"}


def access_denied_response(request: Request, exc: AccessDenied) -> Response:
    """The console's answer to `web.auth`'s refusals: sign in first, or a 403 page."""
    if exc.status == 401:
        return RedirectResponse(f"/ui/login?next={quote(exc.detail)}", status_code=303)
    _ = gettext_for(request)
    return render("console_message.html", page_locale(request), 403, title=_("Not allowed"), message=exc.detail)


def csrf_failed_response(request: Request, exc: CsrfFailed) -> Response:
    _ = gettext_for(request, exc.principal)
    return console_page(request, exc.principal, "console_message.html", 403, title=_("Form expired"),
                        message=_("This form has expired or did not come from this console. Go back, reload the"
                                  " page and try again."))


# ----------------------------------------------------------------------- sign in

SIGN_IN_FAILED = N_("That name and password do not match an active account. Check both and try again"
                    " (sign-in pauses after 5 failures).")
SIGN_IN_PAUSED = N_("Too many failed sign-ins for this name or from this computer. Wait 15 minutes and try"
                    " again, or ask an administrator to set a new password.")
SIGN_IN_EXPIRED = N_("This sign-in form expired or did not come from this console; try again.")
SIGN_IN_EMPTY = N_("Enter your name and your password.")


def _sign_in_page(request: Request, status: int = 200, *, next: str = "", user: str = "",
                  error: str | None = None, settings: Settings, locale: str | None = None) -> Response:
    """The sign-in form, with a fresh nonce cookie its CSRF token is bound to."""
    locale = locale or page_locale(request)
    _ = translator(locale).gettext
    nonce = new_sign_in_nonce()
    response = render("console_login.html", locale, status, title=_("Sign in"), next=next, user=user,
                      error=_(error) if error else None, csrf=csrf_token(nonce, "sign-in"))
    response.set_cookie(SIGN_IN_COOKIE, nonce, max_age=3600, **cookie_options(settings))
    return response


@router.get("")
async def console_root(request: Request) -> Response:
    return RedirectResponse("/ui/home", status_code=303)


@router.get("/login")
async def login_page(request: Request, settings: SettingsDep, next: str | None = None,
                     lang: str | None = None) -> Response:
    chosen = supported(lang)
    response = _sign_in_page(request, next=own_page(next), settings=settings, locale=chosen)
    if chosen:  # the switcher of a browser not signed in: remembered for a year
        response.set_cookie(LOCALE_COOKIE, chosen, max_age=365 * 86400, **cookie_options(settings))
    return response


@router.post("/login")
async def login(request: Request, settings: SettingsDep, people: PeopleDep) -> Response:
    form = await form_fields(request)
    name, password, wanted = form.get("user", ""), form.get("password", ""), form.get("next")
    shown = " ".join(name.split())[:NAME_MAX]
    if not csrf_ok(request.cookies.get(SIGN_IN_COOKIE), form.get("csrf"), "sign-in"):
        return _sign_in_page(request, 403, next=own_page(wanted), user=shown, settings=settings,
                             error=SIGN_IN_EXPIRED)
    if not shown or not password:
        return _sign_in_page(request, 400, next=own_page(wanted), user=shown, settings=settings,
                             error=SIGN_IN_EMPTY)
    result = await run_in_threadpool(people.sign_in, name, password, _client(request))
    if result.principal is None or result.session is None:
        paused = result.refusal is Refusal.RATE_LIMITED
        return _sign_in_page(request, 429 if paused else 401, next=own_page(wanted), user=shown,
                             settings=settings, error=SIGN_IN_PAUSED if paused else SIGN_IN_FAILED)
    previous = request.cookies.get(SESSION_COOKIE)
    if previous:  # whatever session this browser had ends: the new one has a new secret
        await run_in_threadpool(people.sign_out, previous, result.principal.name)
    chosen = supported(request.cookies.get(LOCALE_COOKIE))
    if chosen and result.principal.locale is None and result.principal.user_id is not None:
        # the language picked on the sign-in page becomes the user's
        await run_in_threadpool(people.set_locale, result.principal.user_id, chosen)
    response = RedirectResponse(_safe_next(wanted, result.principal), status_code=303)
    response.set_cookie(SESSION_COOKIE, result.session, max_age=SESSION_HOURS * 3600, **cookie_options(settings))
    response.delete_cookie(SIGN_IN_COOKIE, path="/ui")
    return response


@router.post("/logout")
async def logout(request: Request, people: PeopleDep, principal: Someone) -> Response:
    form = await form_fields(request)
    secret = request.cookies.get(SESSION_COOKIE)
    if not csrf_ok(secret, form.get("csrf")):
        raise CsrfFailed(principal)
    assert secret is not None
    await run_in_threadpool(people.sign_out, secret, principal.name)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response


@router.post("/locale")
async def choose_language(request: Request, people: PeopleDep, settings: SettingsDep, principal: Someone) -> Response:
    """The header's switcher: the signed-in user's language, kept on their account."""
    form = await form_fields(request)
    if not csrf_ok(request.cookies.get(SESSION_COOKIE), form.get("csrf")):
        raise CsrfFailed(principal)
    chosen = supported(form.get("locale"))
    if chosen is not None and principal.user_id is not None:
        await run_in_threadpool(people.set_locale, principal.user_id, chosen)
    response = RedirectResponse(own_page(form.get("next")) or _start_page(principal), status_code=303)
    if chosen is not None:
        response.set_cookie(LOCALE_COOKIE, chosen, max_age=365 * 86400, **cookie_options(settings))
    return response


@router.get("/home")
async def home(request: Request, principal: Someone) -> Response:
    _ = gettext_for(request, principal)
    return console_page(request, principal, "console_home.html", title=_("Welcome"),
                        permissions=sorted(p.value for p in principal.permissions),
                        can_read_cases=principal.can(Permission.CASES_READ),
                        can_work_tasks=principal.can(Permission.TASKS_WORK))


# ----------------------------------------------------------------------- finding a case


@router.get("/cases")
async def find_case(request: Request, principal: Reader, engine: EngineDep, q: str | None = None,
                    case_id: str | None = None) -> Response:
    """Search (`services.search`): a case id prefix, a name, the last 4 digits of a phone,
    an e-mail name; one exact case id opens the case. Results are masked."""
    _ = gettext_for(request, principal)
    wanted = " ".join((q if q is not None else case_id or "").split())
    title = _("Find a case")
    hint = _("Case id, name, last 4 digits of a phone, or e-mail")
    if not wanted:
        return console_page(request, principal, "console_search.html", title=title, error=None, q="", results=None,
                            hint=hint)

    def find() -> tuple[bool, list[CaseHit]]:
        with engine.connect() as conn:
            exact = CASE_ID.match(wanted) is not None and not repository.missing_case_ids(conn, [wanted])
            return exact, ([] if exact else search_cases(conn, wanted, limit=50))

    try:
        exact, hits = await run_in_threadpool(find)
    except SearchError as exc:
        return console_page(request, principal, "console_search.html", 400, title=title, q=wanted, results=None,
                            hint=hint, error=str(exc))
    if exact:
        return RedirectResponse(f"/ui/cases/{quote(wanted)}", status_code=303)
    if not hits:
        return console_page(request, principal, "console_search.html", 404, title=title, q=wanted, results=[],
                            hint=hint, error=_("No case %(case)s: check the id, or import the case first.")
                            % {"case": wanted})
    return console_page(request, principal, "console_search.html", title=title, q=wanted, results=hits, hint=hint,
                        error=None)


def no_case(request: Request, principal: Principal, case_id: str) -> HTMLResponse:
    _ = gettext_for(request, principal)
    return console_page(request, principal, "console_message.html", 404, title=_("No such case"),
                        message=_("There is no case %(case)s. Check the id, or import the case first.")
                        % {"case": case_id})


@router.get("/cases/{case_id}/agreements/{agreement_id}")
async def case_agreement(case_id: str, agreement_id: int, request: Request, principal: Reader,
                         engine: EngineDep) -> Response:
    """The printable record of a repayment plan agreement the debtor accepted."""
    def read() -> Any:
        with engine.connect() as conn:
            return get_agreement(conn, agreement_id)

    found = await run_in_threadpool(read)
    if found is None or found.case_id != case_id:
        return no_case(request, principal, case_id)
    return agreement_page(found, back=f"/ui/cases/{case_id}", by_label=f"{found.accepted_by}: the debtor's page"
                          if found.accepted_by == "page" else found.accepted_by)
