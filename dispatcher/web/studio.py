"""The template studio: the console's pages for the people who write and approve what
debtors read (marketing authors and compliance officers).

    GET  /ui/templates                                  every template and locale with its state
    GET  /ui/templates/new?template_id=ID&locale=L      to the editor of a new variant
    GET  /ui/templates/{channel}/{stage}/{variant}?locale=L[&version=N][&case_id=ID]
                                                        the editor: text, live preview, lint, diff, history
    POST /ui/templates/preview                          the live preview (the page's script; JSON)
    POST /ui/templates/{channel}/{stage}/{variant}/versions                 locale, content: a new draft
    POST /ui/templates/{channel}/{stage}/{variant}/versions/{n}/approve     note
    POST /ui/templates/{channel}/{stage}/{variant}/versions/{n}/reject      note

Reading needs `templates.read`, saving `templates.draft`, approving and rejecting
`templates.approve` (checked by `web.auth`, forms with their CSRF token). Four eyes are
kept by `TemplateVersions`: the approve and reject buttons are shown only to a compliance
officer who did not write the version, and a forced request from anyone else is refused
with its reason code (`same_author`, `not_compliance`; `lint_failed` for a version that
fails lint). Every action is recorded with the signed-in user as its author or checker.

The pages carry a Content-Security-Policy that allows scripts from this origin only:
the live preview is `/ui/static/studio.js`, and a template's text is always shown as
text (autoescaped), an e-mail's HTML body inside a sandboxed frame that runs no script.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from dispatcher.roles import Permission, Principal
from dispatcher.services.template_versions import (
    LINT_FAILED,
    NOT_COMPLIANCE,
    SAME_AUTHOR,
    UNKNOWN_USER,
    ApprovalDenied,
    TemplateVersion,
    TemplateVersionError,
    UnknownVersion,
    VersionStateError,
    four_eyes_refusal,
)
from dispatcher.templates.context import SUPPORTED_LOCALES
from dispatcher.templates.draft import DraftError, check_request
from dispatcher.templates.rendering import TEMPLATE_ID_RE
from dispatcher.web.auth import ConsoleForm, console_form, console_permission
from dispatcher.web.console import console_page
from dispatcher.web.console_ui import gettext_for
from dispatcher.web.dependencies import Web
from dispatcher.web.i18n import N_
from dispatcher.web.template_preview import PreviewProblem, make_preview, preview_response, template_versions_of

router = APIRouter(prefix="/ui/templates")

Reader = Annotated[Principal, Depends(console_permission(Permission.TEMPLATES_READ))]

#: Only scripts of this origin (the studio's one file); styles inline (the console's own
#: <style> blocks); no framing; forms post here only.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
       " connect-src 'self'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self';"
       " object-src 'none'")


def _page(request: Request, principal: Principal, name: str, status: int = 200, **values: Any) -> Response:
    response = console_page(request, principal, name, status, **values)
    response.headers["Content-Security-Policy"] = CSP
    return response


def _message(request: Request, principal: Principal, status: int, title: str, message: str) -> Response:
    """A refusal or problem page (`title` and `message` in the reader's language), with
    a way back to the list of templates."""
    return _page(request, principal, "console_message.html", status, title=title, message=message,
                 back="/ui/templates", back_text=gettext_for(request, principal)("All templates"))


#: Why a decision was refused, by reason code, in words the studio translates.
_REFUSALS = {
    SAME_AUTHOR: N_("%(name)s wrote version %(version)s: someone else with the compliance role must review it"
                    " (four eyes)."),
    NOT_COMPLIANCE: N_("%(name)s does not have the compliance role: ask a compliance officer to review version"
                       " %(version)s."),
    UNKNOWN_USER: N_("%(name)s is not an active user: a checker signs in as themselves."),
    LINT_FAILED: N_("Version %(version)s fails lint (%(count)s problem(s)): fix them in a new version."),
}


def _template_id(channel: str, stage: str, variant: str) -> str | None:
    template_id = f"{channel}/{stage}/{variant}"
    return template_id if TEMPLATE_ID_RE.match(template_id) else None


def _editor_url(template_id: str, locale: str, **params: Any) -> str:
    query = urlencode({"locale": locale, **{k: v for k, v in params.items() if v is not None}})
    return f"/ui/templates/{quote(template_id)}?{query}"


#: The list's states (`TemplateSummary.state`) as the page's data-state attribute.
_STATE_KEYS = {"approved": "approved", "awaiting approval": "awaiting", "draft": "draft"}


@router.get("")
async def template_list(request: Request, principal: Reader, web: Web) -> Response:
    versions = template_versions_of(web)

    def read() -> list[dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for summary in versions.summaries():
            row = rows.setdefault(summary.template_id, {"template_id": summary.template_id, "cells": {}})
            row["cells"][summary.locale] = {
                "state": _STATE_KEYS.get(summary.state, "draft"),
                "approved": summary.approved.version if summary.approved is not None else None,
                "pending": summary.draft.version if summary.draft is not None else None,
                "problems": summary.draft_problems,
            }
        return [rows[k] for k in sorted(rows)]

    rows = await run_in_threadpool(read)
    _ = gettext_for(request, principal)
    return _page(request, principal, "console_templates.html", title=_("Templates"), rows=rows,
                 locales=list(SUPPORTED_LOCALES), can_draft=principal.can(Permission.TEMPLATES_DRAFT))


@router.get("/new")
async def new_template(request: Request, principal: Reader, template_id: str = "", locale: str = "zh-CN") -> Response:
    """The list's "new variant" form: to the editor of that id (empty until saved)."""
    wanted = template_id.strip()
    if TEMPLATE_ID_RE.match(wanted) is None or locale not in SUPPORTED_LOCALES:
        _ = gettext_for(request, principal)
        return _message(request, principal, 422, _("Not a template id"),
                        _("%(id)s is not a template id: write <channel>/<stage>/<variant>, e.g. sms/dpd30/v4,"
                          " and choose %(locales)s.") % {"id": repr(wanted), "locales": " / ".join(SUPPORTED_LOCALES)})
    return RedirectResponse(_editor_url(wanted, locale), status_code=303)


@router.get("/{channel}/{stage}/{variant}")
async def editor(channel: str, stage: str, variant: str, request: Request, principal: Reader, web: Web,
                 locale: str = "zh-CN", version: int | None = None, case_id: str | None = None) -> Response:
    _ = gettext_for(request, principal)
    template_id = _template_id(channel, stage, variant)
    if template_id is None or locale not in SUPPORTED_LOCALES:
        return _message(request, principal, 404, _("No such template"),
                        _("Template ids look like sms/dpd30/v1 and languages are %(locales)s.")
                        % {"locales": ", ".join(SUPPORTED_LOCALES)})
    if case_id and not principal.can(Permission.CASES_READ):
        case_id = None  # an author previews with sample cases
    versions = template_versions_of(web)

    def read() -> tuple[list[TemplateVersion], TemplateVersion | None]:
        return versions.versions(template_id, locale), versions.approved(template_id, locale)

    history, approved = await run_in_threadpool(read)
    shown = next((v for v in history if v.version == version), None) if version is not None else None
    if version is not None and shown is None:
        return _message(request, principal, 404, _("No such version"),
                        _("%(template)s (%(locale)s) has no version %(version)s.")
                        % {"template": template_id, "locale": locale, "version": version})
    if shown is None:  # the newest draft if one awaits approval, else the approved text, else the newest
        shown = next((v for v in history if v.state == "draft"), None) or approved or (history[0] if history else None)
    content = shown.content if shown is not None else ""
    fields = {"template_id": template_id, "locale": locale, "content": content, "case_id": case_id}
    try:
        preview = await run_in_threadpool(make_preview, web, principal, fields, console=True)
    except (DraftError, PreviewProblem) as exc:
        return _message(request, principal, 422, _("Cannot preview"), str(exc))
    can_decide, decide_reason = _may_decide(principal, shown)
    result = _banner(request.query_params)
    return _page(request, principal, "console_template.html",
                 title=_("Template %(template)s") % {"template": template_id}, template_id=template_id,
                 template_locale=locale, locales=list(SUPPORTED_LOCALES), channel=channel,
                 history=history, approved=approved, shown=shown, content=content, preview=preview,
                 case_id=case_id or "", can_draft=principal.can(Permission.TEMPLATES_DRAFT),
                 can_read_cases=principal.can(Permission.CASES_READ), can_decide=can_decide,
                 decide_reason=decide_reason, result=result)


def _may_decide(principal: Principal, shown: TemplateVersion | None) -> tuple[bool, str]:
    """Whether to show approve (a draft, or a retired version to roll back to) and reject
    (a draft) for the version shown, else why not (`four_eyes`, `compliance_decides` or
    ""; the page words it): the service's own rule (`four_eyes_refusal`), which
    `TemplateVersions` applies again on POST."""
    if shown is None or shown.state not in ("draft", "retired"):
        return False, ""
    refusal = four_eyes_refusal(shown.author, principal)
    if refusal == SAME_AUTHOR:
        return False, "four_eyes"
    if refusal is not None:
        return False, "compliance_decides" if shown.state == "draft" else ""
    return True, ""


def _banner(params: Any) -> dict[str, Any] | None:
    """What the last action did, from the redirect's query (the page words it)."""
    for what in ("saved", "approved", "rejected"):
        if params.get(what, "").isdigit():
            problems = int(params.get("problems", "0")) if params.get("problems", "0").isdigit() else 0
            return {"what": what, "version": int(params[what]), "problems": problems,
                    "kind": "refused" if problems else "ok"}
    return None


@router.post("/preview")
async def live_preview(request: Request, web: Web,
                       sent: Annotated[ConsoleForm, Depends(console_form(Permission.TEMPLATES_READ))]) -> JSONResponse:
    """The editor's live preview (the same answer as `POST /api/templates/preview`)."""
    fields: dict[str, Any] = {k: v for k, v in sent.fields.items() if k != "csrf"}
    return await preview_response(web, sent.principal, fields, console=True)


@router.post("/{channel}/{stage}/{variant}/versions")
async def save(channel: str, stage: str, variant: str, request: Request, web: Web,
               sent: Annotated[ConsoleForm, Depends(console_form(Permission.TEMPLATES_DRAFT))]) -> Response:
    principal, form = sent.principal, sent.fields
    _ = gettext_for(request, principal)
    template_id = _template_id(channel, stage, variant)
    locale, content = form.get("locale", ""), form.get("content", "").replace("\r\n", "\n")
    if template_id is None:
        return _message(request, principal, 404, _("No such template"), _("Template ids look like sms/dpd30/v1."))
    try:
        check_request(template_id, locale, content)
    except DraftError as exc:
        return _message(request, principal, 422, _("Not saved"), str(exc))
    try:
        saved, problems = await run_in_threadpool(template_versions_of(web).save, template_id, locale, content,
                                                  principal.name)
    except TemplateVersionError as exc:
        why = _("The text is empty: write the template first.") if not content.strip() else str(exc)
        return _message(request, principal, exc.status if exc.status != 400 else 422, _("Not saved"), why)
    return RedirectResponse(_editor_url(template_id, locale, version=saved.version, saved=saved.version,
                                        problems=len(problems)), status_code=303)


async def _decide(request: Request, web: Web, sent: ConsoleForm, template_id: str | None, version: int,
                  approve: bool) -> Response:
    principal, note = sent.principal, (sent.fields.get("note") or "").strip()[:500] or None
    _ = gettext_for(request, principal)
    if template_id is None:
        return _message(request, principal, 404, _("No such template"), _("Template ids look like sms/dpd30/v1."))
    versions = template_versions_of(web)
    action = versions.approve if approve else versions.reject
    try:
        decided = await run_in_threadpool(action, template_id, version, principal.name, note)
    except ApprovalDenied as exc:
        status = 422 if exc.reason == LINT_FAILED else 403
        why = _(_REFUSALS[exc.reason]) % {"name": principal.name, "version": version, "count": len(exc.problems)} \
            if exc.reason in _REFUSALS else str(exc)
        return _message(request, principal, status, _("Refused"),
                        _("Refused: %(reason)s — %(detail)s") % {"reason": exc.reason, "detail": why})
    except UnknownVersion:
        return _message(request, principal, 404, _("No such version"),
                        _("%(template)s has no version %(version)s.") % {"template": template_id, "version": version})
    except VersionStateError:
        found = await run_in_threadpool(versions.get, version)
        state = found.state if found is not None else "?"
        text = (_("Version %(version)s is %(state)s: only a draft or a retired version can be approved; save a new"
                  " version instead.") if approve else
                _("Version %(version)s is %(state)s: only a draft can be rejected."))
        return _message(request, principal, 409, _("Not done"), text % {"version": version, "state": state})
    except TemplateVersionError as exc:  # a rejection without a note
        why = _("Say why: a rejection needs a note for the author.") if not approve and note is None else str(exc)
        return _message(request, principal, exc.status if exc.status != 400 else 422, _("Not done"), why)
    done = {"approved": version} if approve else {"rejected": version}
    return RedirectResponse(_editor_url(template_id, decided.locale, version=version, **done), status_code=303)


@router.post("/{channel}/{stage}/{variant}/versions/{version}/approve")
async def approve(channel: str, stage: str, variant: str, version: int, request: Request, web: Web,
                  sent: Annotated[ConsoleForm, Depends(console_form(Permission.TEMPLATES_APPROVE))]) -> Response:
    return await _decide(request, web, sent, _template_id(channel, stage, variant), version, True)


@router.post("/{channel}/{stage}/{variant}/versions/{version}/reject")
async def reject(channel: str, stage: str, variant: str, version: int, request: Request, web: Web,
                 sent: Annotated[ConsoleForm, Depends(console_form(Permission.TEMPLATES_APPROVE))]) -> Response:
    return await _decide(request, web, sent, _template_id(channel, stage, variant), version, False)
