"""The debtor's page behind a payment link: `GET /p/{token}` and its forms.

- The page, in the case's locale (zh-CN, en-US), fit for a phone: the organisation,
  the outstanding amount now, how charges are calculated, and the choices.
- Every choice is a POST carrying a CSRF token: an HMAC (`web.auth.csrf_token`) of a
  random nonce kept in a cookie set with the page, and of the link's token. Another site
  can neither read the cookie nor make the token; no session is needed.
- After a choice the browser is sent back to the page (POST/redirect/GET), which says
  what was recorded.
- An unknown or expired link gets a page that says so with the support numbers, never
  anything about the case. Requests are rate-limited per client (`web.rate_limit`).

Link resolution is one function (`resolve_link`) over `services.links.resolve`.
"""

from __future__ import annotations

import datetime as dt
import functools
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from dispatcher.services.links import resolve
from dispatcher.services.self_service import LinkTarget, PageView, Refused, SelfService
from dispatcher.store.plans import get_agreement
from dispatcher.store.repository import CaseNotFound
from dispatcher.templates.context import format_day, format_money
from dispatcher.web.auth import csrf_ok, csrf_token, form_fields
from dispatcher.web.dependencies import DispatcherAPI, Web
from dispatcher.web.self_service_text import Words

router = APIRouter()

#: the page's CSRF nonce cookie (scoped to /p/)
NONCE_COOKIE = "dispatcher_page"
_PURPOSE = "debtor-page"
_PAGES = Path(__file__).resolve().parent / "pages"
_DONE = ("promise", "plan", "dispute")


@functools.cache
def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(_PAGES), autoescape=select_autoescape(["html"]),
                       trim_blocks=True, lstrip_blocks=True)


def _html(name: str, status: int = 200, headers: dict[str, str] | None = None, **values: Any) -> HTMLResponse:
    html = _environment().get_template(name).render(**values)
    return HTMLResponse(html, status_code=status, headers={
        "Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", **(headers or {})})


def payment_redirect(payment_page: str, case_id: str) -> str:
    """The payment page with `ref=<case id>` added to its own query."""
    parts = urlsplit(payment_page)
    query = [*parse_qsl(parts.query, keep_blank_values=True), ("ref", case_id)]
    return urlunsplit(parts._replace(query=urlencode(query)))


# -- link resolution (one adapter) -----------------------------------------------------------


class LinkProblem(Exception):
    def __init__(self, reason: str) -> None:  # "expired" or "invalid"
        super().__init__(reason)
        self.reason = reason


def resolve_link(web: Any, token: str) -> LinkTarget:
    """The case and message a payment link's token points at (`services.links.resolve`:
    short stored tokens and old signed ones); `LinkProblem` when the token is unknown,
    malformed or expired."""
    target = resolve(web.engine, web.signer, token, web.clock.now())
    if target is None:
        raise LinkProblem("invalid")
    if target.expired:
        raise LinkProblem("expired")
    return LinkTarget(target.case_id, target.message_id)


# -- pieces -------------------------------------------------------------------------------------


def _support_numbers(web: Any) -> list[str]:
    return sorted({p.support_phone for p in web.config.jurisdictions.values() if p.support_phone})


def _problem(web: Any, request: Request, reason: str, status: int, headers: dict[str, str] | None = None
             ) -> HTMLResponse:
    """A page in both locales (the case is unknown), with the support numbers only."""
    request.state.result = reason
    words = [Words("en-US"), Words("zh-CN")]
    return _html("debtor_problem.html", status, headers, reason=reason, words=words,
                 support=_support_numbers(web))


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _guard(request: Request, web: Any, token: str) -> LinkTarget:
    if len(token) > 200:  # no token is this long: refused before it could fill the limiter's table
        raise _Answer(_problem(web, request, "invalid", 400))
    app = request.app
    limiter = app.page_limiter if isinstance(app, DispatcherAPI) else None
    if limiter is not None and not limiter.allow(_client(request), token, web.clock.now().timestamp()):
        raise _Answer(_problem(web, request, "busy", 429,
                               {"Retry-After": str(limiter.per_link.retry_after())}))
    try:
        return await run_in_threadpool(resolve_link, web, token)
    except LinkProblem as exc:
        raise _Answer(_problem(web, request, exc.reason, 410 if exc.reason == "expired" else 400)) from None


class _Answer(Exception):
    """Stop a handler with this response."""

    def __init__(self, response: Response) -> None:
        super().__init__("answer")
        self.response = response


def _service(web: Web) -> SelfService:
    return SelfService(web.engine, web.config, web.clock)


Service = Annotated[SelfService, Depends(_service)]


def _page_values(view: PageView, t: Words) -> dict[str, Any]:
    case = view.snapshot.case

    def money(value: Any) -> str:
        return format_money(value, case.currency, view.locale)

    def day(value: Any) -> str:
        return format_day(value, view.locale)

    return {"view": view, "case": case, "money": money, "day": day, "t": t, "lang": view.locale}


def _render_page(request: Request, token: str, view: PageView, *, status: int = 200, error: str = "",
                 done: str = "", done_detail: str = "") -> HTMLResponse:
    nonce = request.cookies.get(NONCE_COOKIE) or secrets.token_urlsafe(24)
    t = Words(view.locale)
    response = _html("debtor_page.html", status, token=token, csrf=csrf_token(nonce + token, _PURPOSE),
                     error=error, done=done, done_detail=done_detail, **_page_values(view, t))
    response.set_cookie(NONCE_COOKIE, nonce, httponly=True, samesite="strict", path="/p/",
                        secure=request.url.scheme == "https")
    return response


def _error_text(t: Words, key: str, view: PageView) -> str:
    return t(f"err_{key}", date=format_day(view.promise_max, view.locale))


# -- routes -------------------------------------------------------------------------------------


@router.get("/p/{token}")
async def page(request: Request, token: str, web: Web, service: Service, done: str = "", d: str = "") -> Response:
    try:
        target = await _guard(request, web, token)
        view = await run_in_threadpool(_view, web, service, request, target)
    except _Answer as answer:
        return answer.response
    if done not in _DONE:  # back from a choice (already logged): not another opening of the link
        await run_in_threadpool(service.opened, target)
    request.state.result = "page"
    detail = ""
    if done == "promise" and d:
        try:
            detail = format_day(dt.date.fromisoformat(d), view.locale)
        except ValueError:
            detail = ""
    return _render_page(request, token, view, done=done if done in _DONE else "", done_detail=detail)


def _view(web: Any, service: SelfService, request: Request, target: LinkTarget) -> PageView:
    try:
        return service.view(target)
    except CaseNotFound:
        raise _Answer(_problem(web, request, "expired", 410)) from None


async def _form(request: Request, web: Any, token: str) -> tuple[LinkTarget, dict[str, str]]:
    target = await _guard(request, web, token)
    fields = await form_fields(request)
    nonce = request.cookies.get(NONCE_COOKIE)
    if not nonce or not csrf_ok(nonce + token, fields.get("csrf"), _PURPOSE):
        raise _Answer(_problem(web, request, "forbidden", 403))
    return target, fields


def _back(token: str, done: str, **extra: str) -> RedirectResponse:
    return RedirectResponse(f"/p/{token}?{urlencode({'done': done, **extra})}", status_code=303)


async def _refused(request: Request, web: Any, service: SelfService, token: str, target: LinkTarget,
                   exc: Refused) -> Response:
    view = await run_in_threadpool(_view, web, service, request, target)
    request.state.result = "refused"
    return _render_page(request, token, view, status=422, error=_error_text(Words(view.locale), exc.key, view))


@router.post("/p/{token}/pay")
async def pay(request: Request, token: str, web: Web, service: Service) -> Response:
    try:
        target, _ = await _form(request, web, token)
    except _Answer as answer:
        return answer.response
    await run_in_threadpool(service.pay_now, target)
    request.state.result = "redirected"
    return RedirectResponse(payment_redirect(web.config.organisation.payment_page, target.case_id), status_code=303)


@router.post("/p/{token}/promise")
async def promise(request: Request, token: str, web: Web, service: Service) -> Response:
    try:
        target, fields = await _form(request, web, token)
        day = await run_in_threadpool(service.promise, target, fields.get("date", ""))
    except _Answer as answer:
        return answer.response
    except Refused as exc:
        return await _refused(request, web, service, token, target, exc)
    request.state.result = "promise"
    return _back(token, "promise", d=day.isoformat())


@router.post("/p/{token}/plan")
async def plan(request: Request, token: str, web: Web, service: Service) -> Response:
    try:
        target, fields = await _form(request, web, token)
        await run_in_threadpool(service.take_plan, target, fields.get("offer", ""), fields.get("digest", ""))
    except _Answer as answer:
        return answer.response
    except Refused as exc:
        return await _refused(request, web, service, token, target, exc)
    request.state.result = "plan"
    return _back(token, "plan")


@router.post("/p/{token}/dispute")
async def dispute(request: Request, token: str, web: Web, service: Service) -> Response:
    try:
        target, fields = await _form(request, web, token)
        await run_in_threadpool(service.dispute, target, fields.get("text", ""))
    except _Answer as answer:
        return answer.response
    except Refused as exc:
        return await _refused(request, web, service, token, target, exc)
    request.state.result = "dispute"
    return _back(token, "dispute")


@router.get("/p/{token}/agreement/{agreement_id}")
async def agreement(request: Request, token: str, agreement_id: int, web: Web) -> Response:
    """The agreement the debtor accepted, printable; only through a link of its case."""
    try:
        target = await _guard(request, web, token)
    except _Answer as answer:
        return answer.response
    found = await run_in_threadpool(_agreement, web, agreement_id)
    if found is None or found.case_id != target.case_id:
        return _problem(web, request, "invalid", 404)
    request.state.result = "agreement"
    return agreement_page(found, back=f"/p/{token}")


def _agreement(web: Any, agreement_id: int) -> Any:
    with web.engine.connect() as conn:
        return get_agreement(conn, agreement_id)


def agreement_page(found: Any, *, back: str = "", by_label: str | None = None) -> HTMLResponse:
    """The printable record of an agreement (also for collectors)."""
    t = Words(found.locale)
    lines: Sequence[str] = found.text.split("\n")
    return _html("debtor_agreement.html", agreement=found, lines=lines, t=t, lang=found.locale, back=back,
                 by=by_label or found.accepted_by)
