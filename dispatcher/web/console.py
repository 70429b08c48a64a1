"""The collectors' console: a case's page (what the dispatcher decides for it now and why,
holds, every message and event) and its actions — a one-off message through the same
compliance gate as everything else, placing and releasing holds (SPEC section 1).

    GET  /ui/login, POST /ui/login        sign in with a name (recorded as `by`) and
                                           DISPATCHER_API_TOKEN; POST /ui/logout
    GET  /ui/cases?case_id=ID             find a case
    GET  /ui/cases/{case_id}              the case page
    POST /ui/cases/{case_id}/messages     channel, template ("" = the rotation's choice)
    POST /ui/cases/{case_id}/holds        reason, until (YYYY-MM-DD: 00:00 in the debtor's zone; optional), note
    POST /ui/cases/{case_id}/holds/release   reason ("" = every hold)

Disabled (503) while DISPATCHER_API_TOKEN is unset, like the HTTP API. The session is a
cookie signed with DISPATCHER_SIGNING_KEY (HttpOnly, SameSite=Strict, Secure behind an
https public URL) that carries the name and an expiry checked against the app's clock;
every form also carries a CSRF token derived from the session. Actions answer with a
303 back to the case page, whose banner says what happened (a refused one-off names its
reason code).
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature, Signer
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from dispatcher.clock import Clock
from dispatcher.domain import HOLD_REASONS, Channel, Reason
from dispatcher.logs import mask
from dispatcher.policy.zones import PersonDateError, parse_person_date, primary_zone
from dispatcher.services.oneoff import request_one_off
from dispatcher.services.planner import plan_decisions
from dispatcher.settings import Settings
from dispatcher.store import repository
from dispatcher.store.timeline import case_timeline
from dispatcher.web.dependencies import ClockDep, ConfigDep, EngineDep, GateDep, SettingsDep, TemplatesDep

router = APIRouter(prefix="/ui")

COOKIE = "dispatcher_console"
SESSION_HOURS = 12
_USER = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_CASE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Holds a collector may place from the page (the others come from replies and the IVR).
PAGE_HOLD_REASONS = (Reason.COLLECTOR_HOLD, Reason.LEGAL_HOLD, Reason.DISPUTE_HOLD, Reason.CEASE_COMMUNICATION)

_PAGES = Path(__file__).resolve().parent / "pages"


@functools.cache
def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(_PAGES), autoescape=select_autoescape(["html"]),
                       trim_blocks=True, lstrip_blocks=True)


def _page(name: str, status: int = 200, **values: Any) -> HTMLResponse:
    html = _environment().get_template(name).render(**values)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store",
                                                            "X-Frame-Options": "DENY"})


# ----------------------------------------------------------------------- sessions


class ConsoleSessions:
    """Signed session cookies and the CSRF tokens derived from them (no server state)."""

    def __init__(self, signing_key: str) -> None:
        if not signing_key:
            raise ValueError("the console's sessions need DISPATCHER_SIGNING_KEY")
        self._session = Signer(signing_key, salt="dispatcher.console.session")
        self._csrf = Signer(signing_key, salt="dispatcher.console.csrf")

    def issue(self, user: str, now: dt.datetime) -> str:
        expiry = int((now + dt.timedelta(hours=SESSION_HOURS)).timestamp())
        return self._session.sign(f"{user}|{expiry:x}").decode("ascii")

    def user(self, cookie: str | None, now: dt.datetime) -> str | None:
        """The signed-in name, or None (no cookie, forged, or expired)."""
        if not cookie:
            return None
        try:
            payload = self._session.unsign(cookie).decode("ascii")
            user, expiry_hex = payload.rsplit("|", 1)
            expiry = int(expiry_hex, 16)
        except (BadSignature, ValueError, UnicodeError):
            return None
        if now.timestamp() >= expiry or not _USER.match(user):
            return None
        return user

    def csrf_token(self, cookie: str) -> str:
        return self._csrf.get_signature(cookie).decode("ascii")

    def csrf_ok(self, cookie: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(cookie).encode(), (token or "").encode())


class ConsoleAccess:
    """Who may use the console, for one request: disabled (no API token or signing key),
    signed in (a valid session cookie), or to sign in first."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.enabled = bool(settings.api_token and settings.signing_key)

    @functools.cached_property
    def sessions(self) -> ConsoleSessions:
        """The session signer; only once `disabled()` said no (it needs the signing key).
        Cheap to make per request: the signers derive their keys when used."""
        return ConsoleSessions(self.settings.signing_key)

    def disabled(self) -> HTMLResponse | None:
        """The 503 page while the console is disabled, else None."""
        if self.enabled:
            return None
        return _page("console_message.html", 503, title="Console disabled",
                     message="The collectors' console is disabled: set DISPATCHER_API_TOKEN and"
                             " DISPATCHER_SIGNING_KEY to enable it.")

    def signed_in(self, request: Request) -> str | Response:
        """The signed-in collector's name; else the answer: console disabled, or to sign in."""
        if (denied := self.disabled()) is not None:
            return denied
        user = self.sessions.user(request.cookies.get(COOKIE), self.clock.now())
        if user is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)
        return user


def _access(settings: SettingsDep, clock: ClockDep) -> ConsoleAccess:
    return ConsoleAccess(settings, clock)


Access = Annotated[ConsoleAccess, Depends(_access)]


def _safe_next(value: str | None) -> str:
    # only our own pages: no scheme, no host (a protocol-relative //evil.example cannot
    # start with /ui/), no backslash that a browser might read as a slash
    if value and value.startswith("/ui/") and "\\" not in value:
        return value
    return "/ui/cases"


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


# ----------------------------------------------------------------------- sign in


@router.get("")
async def console_root(request: Request) -> Response:
    return RedirectResponse("/ui/cases", status_code=303)


@router.get("/login")
async def login_page(access: Access, next: str | None = None) -> Response:
    if (denied := access.disabled()) is not None:
        return denied
    return _page("console_login.html", title="Sign in", next=_safe_next(next), error=None, user="")


@router.post("/login")
async def login(request: Request, access: Access) -> Response:
    if (denied := access.disabled()) is not None:
        return denied
    form = await _form(request)
    user, token, target = form.get("user", "").strip(), form.get("token", ""), _safe_next(form.get("next"))
    expected = access.settings.api_token
    if not _USER.match(user):
        return _page("console_login.html", 400, title="Sign in", next=target, user=user[:64],
                     error="Your name: 1 to 64 letters, digits or . _ @ - (it is recorded on what you do).")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        return _page("console_login.html", 401, title="Sign in", next=target, user=user,
                     error="That access token is not right. Ask your administrator for DISPATCHER_API_TOKEN.")
    response = RedirectResponse(target, status_code=303)
    secure = access.settings.public_url.startswith("https://")
    response.set_cookie(COOKIE, access.sessions.issue(user, access.clock.now()),
                        max_age=SESSION_HOURS * 3600, httponly=True, samesite="strict", secure=secure, path="/ui")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


# ----------------------------------------------------------------------- pages


@router.get("/cases")
async def find_case(request: Request, access: Access, engine: EngineDep, case_id: str | None = None) -> Response:
    user = access.signed_in(request)
    if isinstance(user, Response):
        return user
    if case_id is None:
        return _page("console_search.html", title="Find a case", user=user, error=None, case_id="")
    wanted = case_id.strip()
    if not _CASE_ID.match(wanted):
        return _page("console_search.html", title="Find a case", user=user, case_id=wanted,
                     error="A case id is 1 to 64 letters, digits or . _ -")
    def missing() -> list[str]:
        with engine.connect() as conn:
            return repository.missing_case_ids(conn, [wanted])

    if not await run_in_threadpool(missing):
        return RedirectResponse(f"/ui/cases/{quote(wanted)}", status_code=303)
    return _page("console_search.html", 404, title="Find a case", user=user, case_id=wanted,
                 error=f"No case {wanted}: check the id, or import the case first.")


@router.get("/cases/{case_id}")
async def case_page(case_id: str, request: Request, access: Access, engine: EngineDep, gate: GateDep,
                    clock: ClockDep, templates: TemplatesDep) -> Response:
    user = access.signed_in(request)
    if isinstance(user, Response):
        return user
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
        return _no_case(case_id, user)
    stage = next((d.stage for d in decisions if d.stage), None)
    locale = snapshot.case.locale if snapshot is not None else ""
    choices = {ch.value: list(catalog.get((ch, stage, locale), ())) for ch in Channel} if stage else {}
    cookie = request.cookies.get(COOKIE, "")
    return _page(
        "console_case.html",
        title=f"Case {case_id}",
        user=user,
        csrf=access.sessions.csrf_token(cookie),
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


async def _authorised_form(request: Request, access: ConsoleAccess) -> tuple[str, dict[str, str]] | Response:
    user = access.signed_in(request)
    if isinstance(user, Response):
        return user
    form = await _form(request)
    if not access.sessions.csrf_ok(request.cookies.get(COOKIE, ""), form.get("csrf")):
        return _page("console_message.html", 403, title="Form expired", user=user,
                     message="This form has expired or did not come from this console. Go back, reload the"
                             " page and try again.")
    return user, form


def _no_case(case_id: str, user: str) -> HTMLResponse:
    return _page("console_message.html", 404, title="No such case", user=user,
                 message=f"There is no case {case_id}. Check the id, or import the case first.")


def _back(case_id: str, **params: Any) -> RedirectResponse:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return RedirectResponse(f"/ui/cases/{quote(case_id)}?{query}", status_code=303)


@router.post("/cases/{case_id}/messages")
async def send_one_off(case_id: str, request: Request, access: Access, engine: EngineDep, gate: GateDep,
                       clock: ClockDep, templates: TemplatesDep) -> Response:
    checked = await _authorised_form(request, access)
    if isinstance(checked, Response):
        return checked
    user, form = checked
    try:
        channel = Channel(form.get("channel", ""))
    except ValueError:
        return _back(case_id, error="Choose a channel: sms, email or voice.")
    template = form.get("template") or None
    catalog = await run_in_threadpool(templates.approved_catalog)
    try:
        result = await run_in_threadpool(
            lambda: request_one_off(engine, gate, catalog, clock.now(), case_id=case_id,
                                    channel=channel, template=template, by=user))
    except repository.CaseNotFound:
        return _no_case(case_id, user)
    decision = result.decision
    if result.refused:
        return _back(case_id, refused=decision.reason.value, detail=decision.detail)
    return _back(case_id, queued=result.message_id, action=decision.action.value, reason=decision.reason.value,
                 not_before=result.not_before)


@router.post("/cases/{case_id}/holds")
async def place_hold(case_id: str, request: Request, access: Access, engine: EngineDep,
                     clock: ClockDep, config: ConfigDep) -> Response:
    checked = await _authorised_form(request, access)
    if isinstance(checked, Response):
        return checked
    user, form = checked
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
            repository.place_hold(conn, case_id, Reason(reason_text), until, user, clock.now(), note=note)
        return None

    try:
        error = await run_in_threadpool(write)
    except repository.CaseNotFound:
        return _no_case(case_id, user)
    if error is not None:
        return _back(case_id, error=error)
    return _back(case_id, held=reason_text)


@router.post("/cases/{case_id}/holds/release")
async def release_holds(case_id: str, request: Request, access: Access, engine: EngineDep,
                        clock: ClockDep) -> Response:
    checked = await _authorised_form(request, access)
    if isinstance(checked, Response):
        return checked
    user, form = checked
    reason_text = form.get("reason") or None
    if reason_text is not None and reason_text not in {r.value for r in HOLD_REASONS}:
        return _back(case_id, error="Unknown hold reason.")

    def write() -> int:
        with engine.begin() as conn:
            return repository.release_holds(conn, case_id, Reason(reason_text) if reason_text else None, user,
                                            clock.now())

    try:
        count = await run_in_threadpool(write)
    except repository.CaseNotFound:
        return _no_case(case_id, user)
    return _back(case_id, released=count)
