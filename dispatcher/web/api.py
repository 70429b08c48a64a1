"""The collectors' HTTP API: a case's timeline, and one-off messages through the same
compliance gate as everything else (SPEC section 4, one-off messages).

    GET  /api/cases/{case_id}              the timeline (the `case show --format json` shape)
    POST /api/cases/{case_id}/messages     {"channel": "sms", "template": null}
         202 {"message_id", "action": "send"|"defer", "reason", "template", "not_before"}
         422 {"refused": "<reason code>", "detail"}     any `skip` reason refuses it
         404 unknown case, 400 bad body, 401 no valid token, 403 a role without the permission

Authentication and permissions: `web.auth` (a user's bearer token, or the bootstrap
DISPATCHER_API_TOKEN). The message is recorded as requested by the token's user; a
`by` in the body is ignored. The daemon's sender sends a queued one-off on its next pass.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dispatcher.domain import Channel
from dispatcher.roles import Permission, Principal
from dispatcher.services.oneoff import request_one_off
from dispatcher.store import repository
from dispatcher.store.timeline import case_timeline as read_case_timeline
from dispatcher.web.auth import api_permission
from dispatcher.web.dependencies import ClockDep, EngineDep, GateDep, TemplatesDep

router = APIRouter(prefix="/api")


def _refuse(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


Reader = Annotated[Principal, Depends(api_permission(Permission.CASES_READ))]
Writer = Annotated[Principal, Depends(api_permission(Permission.CASES_WRITE))]


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
