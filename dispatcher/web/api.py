"""The collectors' HTTP API (SPEC section 14): search, a case's timeline, the case
actions, one-off messages through the same compliance gate as everything else, and the
task queue.

    GET  /api/cases?q=&limit=              search: id prefix, name, phone's last 4, e-mail name (masked)
    GET  /api/cases/{case_id}              the timeline (the `case show --format json` shape)
    POST /api/cases/{case_id}/messages     {"channel": "sms", "template": null}
         202 {"message_id", "action": "send"|"defer", "reason", "template", "not_before"}
         422 {"refused": "<reason code>", "detail"}     any `skip` reason refuses it
    POST /api/cases/{case_id}/payments     {"amount": "120.50"}                       201
    POST /api/cases/{case_id}/holds        {"reason", "until"?: date, "note"?}        201
    POST /api/cases/{case_id}/holds/{hold_id}/release                                 200
    POST /api/cases/{case_id}/promises     {"date": "2026-12-10"}                     201
    POST /api/cases/{case_id}/notes        {"text": "..."}                            201
    GET  /api/tasks?state=open&kind=&assignee=&case_id=&limit=   overdue first
    POST /api/tasks/{task_id}/claim                                                   200
    POST /api/tasks/{task_id}/done         {"note": "..."}                            200
         404 unknown case / hold / task, 400 bad body (the error says what to send),
         409 a task claimed by another or done, 401 no valid token, 403 a role without
         the permission; every POST honours `Idempotency-Key` (`web.idempotency`)

Authentication and permissions: `web.auth` (a user's bearer token, or the bootstrap
DISPATCHER_API_TOKEN). Everything is recorded as done by the token's user; a `by` in a
body is ignored. The daemon's sender sends a queued one-off on its next pass.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dispatcher.domain import Channel
from dispatcher.roles import Permission, Principal
from dispatcher.services.case_actions import ActionRefused, parse_amount
from dispatcher.services.oneoff import request_one_off
from dispatcher.services.search import SearchError, search_cases
from dispatcher.services.tasks import TaskConflict, TaskKind, TaskNotFound, TaskState
from dispatcher.store import repository
from dispatcher.store.timeline import case_timeline as read_case_timeline
from dispatcher.web.auth import api_permission, require
from dispatcher.web.dependencies import CaseActionsDep, ClockDep, EngineDep, GateDep, TasksDep, TemplatesDep

router = APIRouter(prefix="/api")


def _refuse(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


Reader = Annotated[Principal, Depends(api_permission(Permission.CASES_READ))]
Writer = Annotated[Principal, Depends(api_permission(Permission.CASES_WRITE))]
HoldPlacer = Annotated[Principal, Depends(api_permission(Permission.HOLDS_PLACE))]
HoldReleaser = Annotated[Principal, Depends(api_permission(Permission.HOLDS_RELEASE))]
TaskWorker = Annotated[Principal, Depends(api_permission(Permission.TASKS_WORK))]


class BadBody(ValueError):
    """The body is not the JSON object the endpoint takes; the message shows it."""


async def _object(request: Request, shape: str) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise BadBody(f"send JSON {shape}") from None
    if not isinstance(body, dict):
        raise BadBody(f"send JSON {shape}")
    return body


def _text(body: dict[str, Any], field: str, shape: str, *, required: bool = True) -> str | None:
    value = body.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise BadBody(f"send JSON {shape}: {field!r} is {'missing' if value is None else 'not text'}")
    return value


async def _act(work: Any, status: int = 201) -> JSONResponse:
    """Run a case action in a thread; its refusals as the API's 4xx answers."""
    try:
        return JSONResponse(await run_in_threadpool(work), status_code=status)
    except (repository.CaseNotFound, repository.HoldNotFound, TaskNotFound) as exc:
        return _refuse(404, str(exc))
    except TaskConflict as exc:
        return _refuse(409, str(exc))
    except (ActionRefused, BadBody, ValueError) as exc:
        return _refuse(400, str(exc))


@router.get("/cases")
async def search(who: Reader, engine: EngineDep, q: str = "", limit: int = 20) -> JSONResponse:
    """Cases by id prefix (any case), name substring (any script), the last 4 digits of
    a phone or an e-mail's local part; masked."""

    def find() -> dict[str, Any]:
        with engine.connect() as conn:
            return {"query": q, "cases": [hit.as_json() for hit in search_cases(conn, q, limit)]}

    try:
        return JSONResponse(await run_in_threadpool(find))
    except SearchError as exc:
        return _refuse(400, str(exc))


@router.get("/cases/{case_id}")
async def case_timeline(case_id: str, who: Reader, engine: EngineDep, clock: ClockDep) -> JSONResponse:

    def read() -> dict[str, Any]:
        with engine.connect() as conn:
            return read_case_timeline(conn, case_id, now=clock.now())

    try:
        timeline = await run_in_threadpool(read)
    except repository.CaseNotFound as exc:
        return _refuse(404, str(exc))
    return JSONResponse(json.loads(json.dumps(timeline, ensure_ascii=False, default=str)))


@router.post("/cases/{case_id}/messages")
async def one_off(case_id: str, request: Request, who: Writer, engine: EngineDep, gate: GateDep,
                  clock: ClockDep, templates: TemplatesDep) -> JSONResponse:
    try:
        body = json.loads(await request.body() or b"{}")
        channel = Channel(body["channel"])
        template = body.get("template")
        if template is not None and not isinstance(template, str):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        return _refuse(400, 'send JSON {"channel": "sms"|"email"|"voice", "template": null}')
    # the approved templates are read from the tree on each call: approvals may change
    catalog = await run_in_threadpool(templates.approved_catalog)
    try:
        result = await run_in_threadpool(
            lambda: request_one_off(engine, gate, catalog, clock.now(), case_id=case_id,
                                    channel=channel, template=template, by=who.name)
        )
    except repository.CaseNotFound as exc:
        return _refuse(404, str(exc))
    decision = result.decision
    if result.refused:
        return JSONResponse({"refused": decision.reason.value, "detail": decision.detail}, status_code=422)
    return JSONResponse(
        {
            "message_id": result.message_id,
            "action": decision.action.value,
            "reason": decision.reason.value,
            "template": decision.template,
            "not_before": result.not_before,
        },
        status_code=202,
    )


@router.post("/cases/{case_id}/payments", status_code=201)
async def payment(case_id: str, request: Request, who: Writer, actions: CaseActionsDep) -> JSONResponse:
    shape = '{"amount": "120.50"}'
    try:
        amount = parse_amount((await _object(request, shape)).get("amount"))
    except (BadBody, ActionRefused) as exc:
        return _refuse(400, str(exc))
    return await _act(lambda: actions.payment(case_id, amount, who.name))


@router.post("/cases/{case_id}/holds", status_code=201)
async def hold(case_id: str, request: Request, who: HoldPlacer, actions: CaseActionsDep) -> JSONResponse:
    shape = '{"reason": "collector_hold", "until": "2026-12-20" (optional), "note": "..." (optional)}'
    try:
        body = await _object(request, shape)
        reason = _text(body, "reason", shape) or ""
        until = _text(body, "until", shape, required=False)
        note = _text(body, "note", shape, required=False)
    except BadBody as exc:
        return _refuse(400, str(exc))
    return await _act(lambda: actions.hold(case_id, reason, until, note, who.name))


@router.post("/cases/{case_id}/holds/{hold_id}/release")
async def release(case_id: str, hold_id: int, who: HoldReleaser, actions: CaseActionsDep) -> JSONResponse:
    try:
        needs = await run_in_threadpool(actions.release_needs, case_id, hold_id)
    except repository.HoldNotFound as exc:
        return _refuse(404, str(exc))
    require(who, needs)  # legal and cease-communication holds: compliance only
    return await _act(lambda: actions.release(case_id, hold_id, who.name), status=200)


@router.post("/cases/{case_id}/promises", status_code=201)
async def promise(case_id: str, request: Request, who: Writer, actions: CaseActionsDep) -> JSONResponse:
    shape = '{"date": "2026-12-10"} (a day in the debtor\'s time zone)'
    try:
        date = _text(await _object(request, shape), "date", shape) or ""
    except BadBody as exc:
        return _refuse(400, str(exc))
    return await _act(lambda: actions.promise(case_id, date, who.name))


@router.post("/cases/{case_id}/notes", status_code=201)
async def note(case_id: str, request: Request, who: Writer, actions: CaseActionsDep) -> JSONResponse:
    shape = '{"text": "..."}'
    try:
        text = _text(await _object(request, shape), "text", shape) or ""
    except BadBody as exc:
        return _refuse(400, str(exc))
    return await _act(lambda: actions.note(case_id, text, who.name))


@router.get("/tasks")
async def task_queue(who: Reader, tasks: TasksDep, clock: ClockDep, state: str = TaskState.OPEN.value,
                     kind: str | None = None, assignee: str | None = None, limit: int = 100,
                     case_id: str | None = None) -> JSONResponse:
    """The task queue, overdue first (by due time, then age). `state`: open, claimed,
    done, active (open or claimed) or all."""
    if any(ch < " " for ch in (assignee or "") + (case_id or "")):
        return _refuse(400, "assignee and case_id cannot contain control characters")
    if state not in {*TaskState, "active", "all"} or (kind and kind not in set(TaskKind)):
        return _refuse(400, f"state: one of {', '.join([*TaskState, 'active', 'all'])};"
                            f" kind: one of {', '.join(TaskKind)}")
    found = await run_in_threadpool(lambda: tasks.list(state, kind or None, assignee or None, limit,
                                                       case_id=case_id or None))
    now = clock.now()
    return JSONResponse({"tasks": [t.as_json(now) for t in found]})


@router.post("/tasks/{task_id}/claim")
async def claim_task(task_id: int, who: TaskWorker, tasks: TasksDep, clock: ClockDep) -> JSONResponse:
    return await _act(lambda: tasks.claim(task_id, who.name).as_json(clock.now()), status=200)


@router.post("/tasks/{task_id}/done")
async def close_task(task_id: int, request: Request, who: TaskWorker, tasks: TasksDep,
                     clock: ClockDep) -> JSONResponse:
    shape = '{"note": "what was done"}'
    try:
        text = _text(await _object(request, shape), "note", shape) or ""
    except BadBody as exc:
        return _refuse(400, str(exc))
    return await _act(lambda: tasks.done(task_id, who.name, text).as_json(clock.now()), status=200)
