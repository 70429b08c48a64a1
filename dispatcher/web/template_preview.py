"""Template preview for the API and the template studio.

    POST /api/templates/preview   {template_id, locale, content?, case_id?}
         200 {subject?, text, html?, encoding, segments, cost, currency, cost_basis,
              problems: [{line, message}], diff: [...], ...}
         422 {error, problems?}   a bad id, locale or case, or content that does not render

It renders `content` when given, else the template's current text (the approved version,
or the newest one when none is approved), for the case `case_id` from the store or, without
one, a sample case of the locale's jurisdiction. Lint problems of the content come back
with their line numbers in both answers; `cost` is one message at the `[costs.<CURRENCY>]`
prices of the case's currency (a decimal string; null without prices). It changes
nothing. It needs `templates.read`; a real case's data also needs `cases.read` (an author
previews with sample cases). The studio's page calls the same code at
`POST /ui/templates/preview` with its session and CSRF token (form fields).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from dispatcher.domain import Case
from dispatcher.policy.zones import local_date, primary_zone
from dispatcher.roles import Permission, Principal
from dispatcher.services.template_versions import TemplateVersions
from dispatcher.store.snapshots import iter_snapshots
from dispatcher.templates.draft import DraftError, DraftPreview, check_request, preview_content
from dispatcher.templates.preview import sample_case_for_template
from dispatcher.testing import SAMPLE_TODAY
from dispatcher.web.auth import api_permission, require
from dispatcher.web.dependencies import Web, WebCollaborators

router = APIRouter(prefix="/api/templates", tags=["templates"])


class PreviewRequest(BaseModel):
    """What to preview."""

    template_id: str = Field(examples=["sms/dpd30/v1"], description="<channel>/<stage>/<variant>")
    locale: str = Field(examples=["zh-CN"], description="zh-CN or en-US")
    content: str | None = Field(default=None, description="the text to render; omitted: the current version")
    case_id: str | None = Field(default=None, description="a case from the store (needs cases.read); omitted: a"
                                                          " sample case")


class LineProblem(BaseModel):
    line: int
    message: str


class PreviewOut(BaseModel):
    """The message as a debtor would get it, and what an author needs beside it."""

    template_id: str
    locale: str
    channel: str = Field(description="sms, email or voice")
    case_id: str
    sample: bool = Field(description="true: a sample case (its payment link is a placeholder of real length)")
    subject: str | None = Field(default=None, description="e-mail only")
    text: str | None = Field(description="the SMS, the e-mail's plain text or the call's script; null if it does"
                                         " not render")
    html: str | None = Field(default=None, description="e-mail only")
    encoding: str | None = Field(description="SMS: GSM-7 or UCS-2")
    units: int | None = Field(description="SMS: septets (GSM-7) or UTF-16 code units (UCS-2)")
    segments: int | None = Field(description="SMS: the number of parts it is sent in")
    cost: str | None = Field(description="one message at the [costs.<CURRENCY>] prices, a decimal string; null"
                                         " without prices")
    currency: str
    cost_basis: str = Field(description="what the cost counts, e.g. '2 SMS segment(s) x 0.045 CNY'")
    problems: list[LineProblem] = Field(description="lint problems of the text, by line")
    error: LineProblem | None = Field(description="why the text does not render for this case (then 422)")
    diff: list[str] = Field(description="unified diff from the approved version (empty: none, or no change)")


class PreviewProblem(Exception):
    """The preview cannot be made; `message` says what to change (answered with 422)."""


def current_content(web: WebCollaborators, template_id: str, locale: str) -> tuple[str, str | None]:
    """The template's current text (the approved version, else the newest) and its
    approved text (None if no version is approved)."""
    versions = template_versions_of(web)
    approved = versions.approved(template_id, locale)
    if approved is not None:
        return approved.content, approved.content
    newest = next(iter(versions.versions(template_id, locale)), None)
    if newest is None:
        raise PreviewProblem(f"{template_id} has no version in {locale}; send its text as content, or save one"
                             f" first (known templates: GET /api/templates)")
    return newest.content, None


def approved_content(web: WebCollaborators, template_id: str, locale: str) -> str | None:
    approved = template_versions_of(web).approved(template_id, locale)
    return approved.content if approved is not None else None


def template_versions_of(web: WebCollaborators) -> TemplateVersions:
    if web.template_versions is None:
        raise RuntimeError("the web app was built without template versions (Runtime.web() provides them)")
    return web.template_versions


def _case(web: WebCollaborators, template_id: str, locale: str, case_id: str | None) -> tuple[Case, dt.date, bool]:
    if not case_id:
        return sample_case_for_template(web.config, template_id, locale), SAMPLE_TODAY, True
    now = web.clock.now()
    snapshot = next(iter(iter_snapshots(web.engine, case_ids=[case_id], now=now)), None)
    if snapshot is None:
        raise PreviewProblem(f"no case {case_id}: check the id, or leave case_id out to use a sample case")
    # days past due on the debtor's local date, as the sender counts them
    zone = primary_zone(snapshot.zones, web.config.jurisdictions.get(snapshot.case.jurisdiction))
    return snapshot.case, local_date(now, zone), False


def make_preview(web: WebCollaborators, principal: Principal, fields: dict[str, Any], *,
                 console: bool) -> DraftPreview:
    """The preview `fields` ask for (`PreviewProblem` or `DraftError` if they cannot be met)."""
    template_id, locale = fields.get("template_id"), fields.get("locale")
    content, case_id = fields.get("content"), fields.get("case_id") or None
    for name, value in (("template_id", template_id), ("locale", locale), ("content", content),
                        ("case_id", case_id)):
        if value is not None and not isinstance(value, str):
            raise DraftError(f"{name} must be a string")
    if not template_id or not locale:
        raise DraftError("send template_id (e.g. sms/dpd30/v1) and locale (zh-CN or en-US)")
    assert isinstance(template_id, str) and isinstance(locale, str)
    check_request(template_id, locale, content)
    if case_id is not None:
        require(principal, Permission.CASES_READ, console=console)
    if content is None:
        content, approved = current_content(web, template_id, locale)
    else:
        approved = approved_content(web, template_id, locale)
    case, today, sample = _case(web, template_id, locale, case_id)
    config = web.config
    return preview_content(config, Path(config.resolve(config.templates.forbidden_phrases)), template_id, locale,
                           content, case, today, sample=sample, approved=approved)


async def preview_response(web: WebCollaborators, principal: Principal, fields: dict[str, Any], *,
                           console: bool) -> JSONResponse:
    """200 with the preview, or 422 with what is wrong (and the lint problems if any)."""
    try:
        result = await run_in_threadpool(make_preview, web, principal, fields, console=console)
    except (DraftError, PreviewProblem) as exc:
        return JSONResponse({"error": str(exc)}, status_code=422)
    body = result.as_json()
    if result.error is not None:
        body["error"] = f"line {result.error.line}: {result.error.message}"
        return JSONResponse(body, status_code=422)
    return JSONResponse(body)


Reader = Annotated[Principal, Depends(api_permission(Permission.TEMPLATES_READ))]


@router.post(
    "/preview",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": PreviewRequest.model_json_schema()}}}},
    responses={200: {"model": PreviewOut},
               422: {"description": "a bad id, locale or case, or content that does not render: `error` says"
                                     " what to change"}},
)
async def preview_template(request: Request, who: Reader, web: Web) -> JSONResponse:
    """Render a template (or the `content` given) for a real or a sample case: the text
    a debtor would get, the SMS encoding and segments, the cost of one message, the lint
    problems by line and the difference from the approved version. Changes nothing."""
    try:
        fields = json.loads(await request.body() or b"{}")
    except (ValueError, UnicodeDecodeError):
        fields = None
    if not isinstance(fields, dict):
        return JSONResponse({"error": 'send a JSON object {"template_id", "locale", "content"?, "case_id"?}'},
                            status_code=422)
    return await preview_response(web, who, fields, console=False)
