"""The collectors' console: a case's page (what the dispatcher decides for it now and why,
holds, every message and event) and its actions — a one-off message through the same
compliance gate as everything else, placing and releasing holds (SPEC section 1).

    GET  /ui/login, POST /ui/login        sign in with name + password; POST /ui/logout
    GET  /ui/home                         who you are and what your roles let you do
    GET  /ui/cases?case_id=ID             find a case
    GET  /ui/cases/{case_id}              the case page
    POST /ui/cases/{case_id}/messages     channel, template ("" = the rotation's choice)
    POST /ui/cases/{case_id}/holds        reason, until (YYYY-MM-DD: 00:00 in the debtor's zone; optional), note
    POST /ui/cases/{case_id}/holds/release   reason ("" = every hold)

Who may do what is checked by `web.auth` (the same permissions as the API): reading
needs `cases.read`, a one-off `cases.write`, holds `holds.place` / `holds.release`.
The session cookie holds a random secret (HttpOnly, SameSite=Strict, Secure behind an
https public URL), made anew at every sign-in and looked up in the store on every
request; every form carries a CSRF token derived from it (the sign-in form one bound to
a nonce cookie). Every action is recorded with the signed-in user's name as `by`.
Actions answer with a 303 back to the case page, whose banner says what happened (a
refused one-off names its reason code).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from dispatcher.domain import HOLD_REASONS, Channel, Reason
from dispatcher.logs import mask
from dispatcher.policy.zones import PersonDateError, parse_person_date, primary_zone
from dispatcher.roles import NAME_MAX, PROTECTED_HOLD_REASONS, Permission, Principal
from dispatcher.services.oneoff import request_one_off
from dispatcher.services.people import SESSION_HOURS, Refusal
from dispatcher.services.planner import plan_decisions
from dispatcher.settings import Settings
from dispatcher.store import repository
from dispatcher.store.timeline import case_timeline
from dispatcher.web.auth import (
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    AccessDenied,
    ConsoleForm,
    CsrfFailed,
    PeopleDep,
    console_form,
    console_permission,
    console_principal,
    csrf_ok,
    csrf_token,
    form_fields,
    new_sign_in_nonce,
)
from dispatcher.web.dependencies import ClockDep, ConfigDep, EngineDep, GateDep, SettingsDep, TemplatesDep

router = APIRouter(prefix="/ui")

_CASE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Holds a collector may place from the page (the others come from replies and the IVR).
PAGE_HOLD_REASONS = (Reason.COLLECTOR_HOLD, Reason.LEGAL_HOLD, Reason.DISPUTE_HOLD, Reason.CEASE_COMMUNICATION)

#: A signed-in user who may read cases.
Reader = Annotated[Principal, Depends(console_permission(Permission.CASES_READ))]

_PAGES = Path(__file__).resolve().parent / "pages"


@functools.cache
def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(_PAGES), autoescape=select_autoescape(["html"]),
                       trim_blocks=True, lstrip_blocks=True)


def _page(name: str, status: int = 200, **values: Any) -> HTMLResponse:
    html = _environment().get_template(name).render(**values)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store",
                                                            "X-Frame-Options": "DENY"})


def _own_page(value: str | None) -> str:
    """`value` if it is one of our pages, else "": no scheme, no host (a protocol-relative
    //evil.example cannot start with /ui/), no backslash a browser might read as a slash."""
    if value and value.startswith("/ui/") and "\\" not in value and not value.startswith("/ui/login"):
        return value
    return ""


def _safe_next(value: str | None, principal: Principal | None = None) -> str:
    """Where to go after signing in: the page asked for, else the user's start page."""
    if _own_page(value):
        return _own_page(value)
    if principal is not None and not principal.can(Permission.CASES_READ):
        return "/ui/home"
    return "/ui/cases"


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _cookie_options(settings: Settings) -> dict[str, Any]:
    return {"httponly": True, "samesite": "strict", "secure": settings.public_url.startswith("https://"),
            "path": "/ui"}


def console_page(request: Request, principal: Principal, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    """A page for a signed-in user: their name, and the CSRF token every form carries
    (the sign-out button's too)."""
    csrf = csrf_token(request.cookies.get(SESSION_COOKIE, ""))
    return _page(name, status, user=principal.name, roles=sorted(principal.roles), csrf=csrf, **values)


def access_denied_response(request: Request, exc: AccessDenied) -> Response:
    """The console's answer to `web.auth`'s refusals: sign in first, or a 403 page."""
    if exc.status == 401:
        return RedirectResponse(f"/ui/login?next={quote(exc.detail)}", status_code=303)
    return _page("console_message.html", 403, title="Not allowed", message=exc.detail)


def csrf_failed_response(request: Request, exc: CsrfFailed) -> Response:
    return console_page(request, exc.principal, "console_message.html", 403, title="Form expired",
                        message="This form has expired or did not come from this console. Go back, reload the"
                                " page and try again.")


# ----------------------------------------------------------------------- sign in

SIGN_IN_FAILED = ("That name and password do not match an active account. Check both and try again"
                  " (sign-in pauses after 5 failures).")
SIGN_IN_PAUSED = ("Too many failed sign-ins for this name or from this computer. Wait 15 minutes and try"
                  " again, or ask an administrator to set a new password.")


def _sign_in_page(request: Request, status: int = 200, *, next: str = "", user: str = "",
                  error: str | None = None, settings: Settings) -> Response:
    """The sign-in form, with a fresh nonce cookie its CSRF token is bound to."""
    nonce = new_sign_in_nonce()
    response = _page("console_login.html", status, title="Sign in", next=next, user=user, error=error,
                     csrf=csrf_token(nonce, "sign-in"))
    response.set_cookie(SIGN_IN_COOKIE, nonce, max_age=3600, **_cookie_options(settings))
    return response


@router.get("")
async def console_root(request: Request) -> Response:
    return RedirectResponse("/ui/cases", status_code=303)


@router.get("/login")
async def login_page(request: Request, settings: SettingsDep, next: str | None = None) -> Response:
    return _sign_in_page(request, next=_own_page(next), settings=settings)


@router.post("/login")
async def login(request: Request, settings: SettingsDep, people: PeopleDep) -> Response:
    form = await form_fields(request)
    name, password, wanted = form.get("user", ""), form.get("password", ""), form.get("next")
    shown = " ".join(name.split())[:NAME_MAX]
    if not csrf_ok(request.cookies.get(SIGN_IN_COOKIE), form.get("csrf"), "sign-in"):
        return _sign_in_page(request, 403, next=_own_page(wanted), user=shown, settings=settings,
                             error="This sign-in form expired or did not come from this console; try again.")
    if not shown or not password:
        return _sign_in_page(request, 400, next=_own_page(wanted), user=shown, settings=settings,
                             error="Enter your name and your password.")
    result = await run_in_threadpool(people.sign_in, name, password, _client(request))
    if result.principal is None or result.session is None:
        paused = result.refusal is Refusal.RATE_LIMITED
        return _sign_in_page(request, 429 if paused else 401, next=_own_page(wanted), user=shown,
                             settings=settings, error=SIGN_IN_PAUSED if paused else SIGN_IN_FAILED)
    previous = request.cookies.get(SESSION_COOKIE)
    if previous:  # whatever session this browser had ends: the new one has a new secret
        await run_in_threadpool(people.sign_out, previous, result.principal.name)
    response = RedirectResponse(_safe_next(wanted, result.principal), status_code=303)
    response.set_cookie(SESSION_COOKIE, result.session, max_age=SESSION_HOURS * 3600, **_cookie_options(settings))
    response.delete_cookie(SIGN_IN_COOKIE, path="/ui")
    return response


@router.post("/logout")
async def logout(request: Request, people: PeopleDep,
                 principal: Annotated[Principal, Depends(console_principal)]) -> Response:
    form = await form_fields(request)
    secret = request.cookies.get(SESSION_COOKIE)
    if not csrf_ok(secret, form.get("csrf")):
        raise CsrfFailed(principal)
    assert secret is not None
    await run_in_threadpool(people.sign_out, secret, principal.name)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response


@router.get("/home")
async def home(request: Request, principal: Annotated[Principal, Depends(console_principal)]) -> Response:
    return console_page(request, principal, "console_home.html", title="Welcome",
                        permissions=sorted(p.value for p in principal.permissions),
                        can_read_cases=principal.can(Permission.CASES_READ))


# ----------------------------------------------------------------------- pages


@router.get("/cases")
async def find_case(request: Request, principal: Reader, engine: EngineDep, case_id: str | None = None) -> Response:
    if case_id is None:
        return console_page(request, principal, "console_search.html", title="Find a case", error=None, case_id="")
    wanted = case_id.strip()
    if not _CASE_ID.match(wanted):
        return console_page(request, principal, "console_search.html", title="Find a case", case_id=wanted,
                     error="A case id is 1 to 64 letters, digits or . _ -")
    def missing() -> list[str]:
        with engine.connect() as conn:
            return repository.missing_case_ids(conn, [wanted])

    if not await run_in_threadpool(missing):
        return RedirectResponse(f"/ui/cases/{quote(wanted)}", status_code=303)
    return console_page(request, principal, "console_search.html", 404, title="Find a case", case_id=wanted,
                 error=f"No case {wanted}: check the id, or import the case first.")


@router.get("/cases/{case_id}")
async def case_page(case_id: str, request: Request, principal: Reader, engine: EngineDep, gate: GateDep,
                    clock: ClockDep, templates: TemplatesDep) -> Response:
    now = clock.now()
    catalog = await run_in_threadpool(templates.approved_catalog)

    def read() -> tuple[dict[str, Any], Any, list[Any]]:
        with engine.connect() as conn:
            timeline = case_timeline(conn, case_id, now=now)
        found = next(iter(plan_decisions(engine, gate, catalog, now, case_ids=[case_id])), None)
        snapshot, decisions = found if found is not None else (None, [])
        return timeline, snapshot, decisions

    try:
        timeline, snapshot, decisions = await run_in_threadpool(read)
    except repository.CaseNotFound:
        return _no_case(request, principal, case_id)
    stage = next((d.stage for d in decisions if d.stage), None)
    locale = snapshot.case.locale if snapshot is not None else ""
    choices = {ch.value: list(catalog.get((ch, stage, locale), ())) for ch in Channel} if stage else {}
    return console_page(
        request,
        principal,
        "console_case.html",
        title=f"Case {case_id}",
        can_write=principal.can(Permission.CASES_WRITE),
        can_hold=principal.can(Permission.HOLDS_PLACE),
        can_release=principal.can(Permission.HOLDS_RELEASE),
        now=now,
        case=snapshot.case if snapshot is not None else None,
        contacts=[{"channel": c.channel.value, "address": mask(c.address or ""), "consent": c.consent,
                   "opted_out": c.opted_out, "invalid": c.invalid}
                  for c in (snapshot.contacts if snapshot is not None else ())],
        timeline=timeline,
        decisions=decisions,
        stage=stage,
        templates=choices,
        hold_reasons=[r.value for r in PAGE_HOLD_REASONS],
        result=_result_banner(request.query_params),
    )


def _result_banner(params: Any) -> dict[str, str] | None:
    """What the last action did, from the redirect's query (shown once, at the top)."""
    if "refused" in params:
        return {"kind": "refused", "text": f"Refused: {params.get('refused')} — {params.get('detail', '')}"}
    if "queued" in params:
        when = params.get("not_before")
        text = (f"Message {params.get('queued')} queued ({params.get('action')}, {params.get('reason')})"
                + (f": it goes out at {when}, the next legal moment." if when else ": it goes out now."))
        return {"kind": "ok", "text": text}
    if "held" in params:
        return {"kind": "ok", "text": f"Hold {params.get('held')} placed."}
    if "released" in params:
        return {"kind": "ok", "text": f"Released {params.get('released')} hold(s)."}
    if "error" in params:
        return {"kind": "refused", "text": str(params.get("error"))}
    return None


# ----------------------------------------------------------------------- actions


def _no_case(request: Request, principal: Principal, case_id: str) -> HTMLResponse:
    return console_page(request, principal, "console_message.html", 404, title="No such case",
                        message=f"There is no case {case_id}. Check the id, or import the case first.")


def _back(case_id: str, **params: Any) -> RedirectResponse:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return RedirectResponse(f"/ui/cases/{quote(case_id)}?{query}", status_code=303)


@router.post("/cases/{case_id}/messages")
async def send_one_off(case_id: str, request: Request, engine: EngineDep, gate: GateDep, clock: ClockDep,
                       templates: TemplatesDep,
                       sent: Annotated[ConsoleForm, Depends(console_form(Permission.CASES_WRITE))]) -> Response:
    principal, form = sent.principal, sent.fields
    try:
        channel = Channel(form.get("channel", ""))
    except ValueError:
        return _back(case_id, error="Choose a channel: sms, email or voice.")
    template = form.get("template") or None
    catalog = await run_in_threadpool(templates.approved_catalog)
    try:
        result = await run_in_threadpool(
            lambda: request_one_off(engine, gate, catalog, clock.now(), case_id=case_id,
                                    channel=channel, template=template, by=principal.name))
    except repository.CaseNotFound:
        return _no_case(request, principal, case_id)
    decision = result.decision
    if result.refused:
        return _back(case_id, refused=decision.reason.value, detail=decision.detail)
    return _back(case_id, queued=result.message_id, action=decision.action.value, reason=decision.reason.value,
                 not_before=result.not_before)


@router.post("/cases/{case_id}/holds")
async def place_hold(case_id: str, request: Request, engine: EngineDep, clock: ClockDep, config: ConfigDep,
                     sent: Annotated[ConsoleForm, Depends(console_form(Permission.HOLDS_PLACE))]) -> Response:
    principal, form = sent.principal, sent.fields
    reason_text = form.get("reason", "")
    if reason_text not in {r.value for r in PAGE_HOLD_REASONS}:
        return _back(case_id, error=f"Choose a hold reason: {', '.join(r.value for r in PAGE_HOLD_REASONS)}.")
    until_text = (form.get("until") or "").strip()
    note = (form.get("note") or "").strip()[:200] or None

    def write() -> str | None:
        with engine.begin() as conn:
            # The date is a day in the debtor's life (SPEC 11): 00:00 of it in their primary zone.
            jurisdiction, zones = repository.case_zones(conn, case_id)
            until: dt.datetime | None = None
            if until_text:
                try:
                    until = parse_person_date(until_text, primary_zone(zones, config.jurisdictions.get(jurisdiction)))
                except PersonDateError:
                    return "Until: a date like 2026-12-20, or leave it empty (until released)."
                if until <= clock.now():
                    return "Until must be a date in the future."
            repository.place_hold(conn, case_id, Reason(reason_text), until, principal.name, clock.now(),
                                  note=note)
        return None

    try:
        error = await run_in_threadpool(write)
    except repository.CaseNotFound:
        return _no_case(request, principal, case_id)
    if error is not None:
        return _back(case_id, error=error)
    return _back(case_id, held=reason_text)


@router.post("/cases/{case_id}/holds/release")
async def release_holds(case_id: str, request: Request, engine: EngineDep, clock: ClockDep,
                        sent: Annotated[ConsoleForm, Depends(console_form(Permission.HOLDS_RELEASE))]) -> Response:
    principal, form = sent.principal, sent.fields
    reason_text = form.get("reason") or None
    if reason_text is not None and reason_text not in {r.value for r in HOLD_REASONS}:
        return _back(case_id, error="Unknown hold reason.")

    # legal and cease-communication holds: compliance only (a collector's "release all" keeps them)
    keep = () if principal.can(Permission.HOLDS_RELEASE_PROTECTED) else PROTECTED_HOLD_REASONS
    if reason_text in keep:
        return _back(case_id, error=f"Only compliance may release a {reason_text} hold.")

    def write() -> int:
        with engine.begin() as conn:
            return repository.release_holds(conn, case_id, Reason(reason_text) if reason_text else None,
                                            principal.name, clock.now(), keep=keep)

    try:
        count = await run_in_threadpool(write)
    except repository.CaseNotFound:
        return _no_case(request, principal, case_id)
    return _back(case_id, released=count)
