"""The templates API: versions, drafts and four-eyes approval over HTTP.

    GET  /api/templates                                         every template and locale, with its state
    GET  /api/templates/{channel}/{stage}/{variant}/versions    its versions, newest first
    POST /api/templates/{channel}/{stage}/{variant}/versions    {locale, content} -> 201 {version, problems}
    POST …/versions/{version}/approve                           {note} -> 200, 403 {reason}, 422 {reason}
    POST …/versions/{version}/reject                            {note} -> 200, 403 {reason}

Reading needs `templates.read`, saving a draft `templates.draft` (`web.auth`). Approving
and rejecting are decided by `services.template_versions` (the same rule as the CLI's):
a compliance user who is not the version's author, and for approval a lint-clean
version; anyone else who may read templates gets 403 with the reason (`same_author`,
`not_compliance`, `unknown_user`), a version failing lint 422 `lint_failed` with its
problems. Every action is recorded with the token's user as `by`.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from dispatcher.roles import Permission, Principal
from dispatcher.services.template_versions import (
    ApprovalDenied,
    TemplateSummary,
    TemplateVersion,
    TemplateVersionError,
    TemplateVersions,
    check_template_id,
)
from dispatcher.templates.lint import LintProblem
from dispatcher.web.auth import api_permission
from dispatcher.web.dependencies import TemplateVersionsDep

router = APIRouter(prefix="/api/templates", tags=["templates"])

Reader = Annotated[Principal, Depends(api_permission(Permission.TEMPLATES_READ))]
Drafter = Annotated[Principal, Depends(api_permission(Permission.TEMPLATES_DRAFT))]


class LintProblemOut(BaseModel):
    line: int = Field(description="the line of the template's text")
    message: str


class VersionOut(BaseModel):
    version: int
    template_id: str
    locale: str
    content: str
    sha256: str
    author: str
    created_at: dt.datetime
    state: str = Field(description="draft, approved, rejected or retired")
    approved_by: str | None
    approved_at: dt.datetime | None
    note: str | None
    rejected_by: str | None
    rejected_at: dt.datetime | None


class SummaryOut(BaseModel):
    template_id: str
    locale: str
    state: str = Field(description="approved, awaiting approval (a lint-clean draft) or draft")
    approved_version: int | None
    approved_by: str | None
    approved_at: dt.datetime | None
    draft_version: int | None = Field(description="the newest draft newer than the approved version")
    draft_author: str | None
    draft_problems: int = Field(description="lint problems of that draft")


class TemplateListOut(BaseModel):
    templates: list[SummaryOut]


class VersionListOut(BaseModel):
    template_id: str
    versions: list[VersionOut]


class NewVersionIn(BaseModel):
    locale: str = Field(description="zh-CN or en-US", examples=["zh-CN"])
    content: str = Field(description="the template's whole text (Jinja2)")


class NewVersionOut(BaseModel):
    version: int
    state: str
    problems: list[LintProblemOut] = Field(description="lint problems; a draft with problems cannot be approved")


class ReviewIn(BaseModel):
    note: str | None = Field(default=None, description="the checker's note (required to reject)")


class RefusalOut(BaseModel):
    reason: str = Field(description="same_author, not_compliance, unknown_user or lint_failed")
    detail: str
    problems: list[LintProblemOut] = []


class ErrorOut(BaseModel):
    error: str


def _problems(problems: list[LintProblem]) -> list[LintProblemOut]:
    return [LintProblemOut(line=p.line, message=p.message) for p in problems]


def _version(v: TemplateVersion) -> VersionOut:
    return VersionOut(**v.as_json())


def _summary(s: TemplateSummary) -> SummaryOut:
    a, d = s.approved, s.draft
    return SummaryOut(template_id=s.template_id, locale=s.locale, state=s.state,
                      approved_version=a.version if a else None, approved_by=a.approved_by if a else None,
                      approved_at=a.approved_at if a else None, draft_version=d.version if d else None,
                      draft_author=d.author if d else None, draft_problems=s.draft_problems)


def _error(exc: TemplateVersionError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


def _refused(exc: ApprovalDenied) -> JSONResponse:
    status = 422 if exc.reason == "lint_failed" else 403
    body = RefusalOut(reason=exc.reason, detail=str(exc), problems=_problems(exc.problems))
    return JSONResponse(body.model_dump(), status_code=status)


_ERRORS: dict[int | str, dict[str, Any]] = {400: {"model": ErrorOut}, 404: {"model": ErrorOut},
                                             409: {"model": ErrorOut}}
_REVIEW_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS, 403: {"model": RefusalOut, "description": "four eyes: not this person"}}


@router.get("", response_model=TemplateListOut)
async def list_templates(who: Reader, versions: TemplateVersionsDep) -> TemplateListOut:
    """Every template and locale in the database: its approved version, its draft awaiting approval, its state."""
    summaries = await run_in_threadpool(versions.summaries)
    return TemplateListOut(templates=[_summary(s) for s in summaries])


@router.get("/{channel}/{stage}/{variant}/versions", response_model=VersionListOut, responses=_ERRORS)
async def list_versions(channel: str, stage: str, variant: str, who: Reader,
                        versions: TemplateVersionsDep) -> VersionListOut | JSONResponse:
    """A template's versions in every locale, newest first."""
    template_id = f"{channel}/{stage}/{variant}"
    try:
        check_template_id(template_id)
    except TemplateVersionError as exc:
        return _error(exc)
    found = await run_in_threadpool(versions.versions, template_id)
    if not found:
        return JSONResponse({"error": f"no template {template_id}"}, status_code=404)
    return VersionListOut(template_id=template_id, versions=[_version(v) for v in found])


@router.post("/{channel}/{stage}/{variant}/versions", status_code=201, response_model=NewVersionOut,
             responses=_ERRORS)
async def save_version(channel: str, stage: str, variant: str, body: NewVersionIn, who: Drafter,
                       versions: TemplateVersionsDep) -> NewVersionOut | JSONResponse:
    """Save a new draft (immutable); its lint problems come back with it."""
    template_id = f"{channel}/{stage}/{variant}"
    try:
        saved, problems = await run_in_threadpool(versions.save, template_id, body.locale, body.content, who.name)
    except TemplateVersionError as exc:
        return _error(exc)
    return NewVersionOut(version=saved.version, state=saved.state, problems=_problems(problems))


async def _review(versions: TemplateVersions, action: str, template_id: str, version: int, who: Principal,
                  note: str | None) -> VersionOut | JSONResponse:
    call = versions.approve if action == "approve" else versions.reject
    try:
        done = await run_in_threadpool(call, template_id, version, who.name, note)
    except ApprovalDenied as exc:
        return _refused(exc)
    except TemplateVersionError as exc:
        return _error(exc)
    return _version(done)


@router.post("/{channel}/{stage}/{variant}/versions/{version}/approve", response_model=VersionOut,
             responses={**_REVIEW_ERRORS, 422: {"model": RefusalOut, "description": "lint_failed"}})
async def approve_version(channel: str, stage: str, variant: str, version: int, who: Reader,
                          versions: TemplateVersionsDep, body: ReviewIn | None = None) -> VersionOut | JSONResponse:
    """Approve a version (a draft, or a retired one: a rollback): a compliance user who is not its author,
    and only if it lints clean. The version approved before it in that locale is retired."""
    return await _review(versions, "approve", f"{channel}/{stage}/{variant}", version, who,
                         body.note if body else None)


@router.post("/{channel}/{stage}/{variant}/versions/{version}/reject", response_model=VersionOut,
             responses=_REVIEW_ERRORS)
async def reject_version(channel: str, stage: str, variant: str, version: int, who: Reader,
                         versions: TemplateVersionsDep, body: ReviewIn) -> VersionOut | JSONResponse:
    """Reject a draft with a note for its author (a compliance user who is not its author)."""
    return await _review(versions, "reject", f"{channel}/{stage}/{variant}", version, who, body.note)
