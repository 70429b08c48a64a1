"""The collectors' task queue (their start page) and the work on a task.

    GET  /ui/queue?state=active|open|claimed|mine|done|all&kind=   tasks, overdue first, then by due time
    POST /ui/tasks/{task_id}/claim      take it (task_claimed on the case)
    POST /ui/tasks/{task_id}/done       note: what was done (task_done on the case, with the note)

Tasks are `services.tasks` (opened by replies, the IVR, broken promises, legal hand-offs,
escalations); reading the queue needs `cases.read`, claiming and closing `tasks.work`.
The forms carry `next` (the queue or a case page) to come back to.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from dispatcher.logs import mask_name
from dispatcher.roles import Permission, Principal
from dispatcher.services.tasks import Task, TaskConflict, TaskKind, TaskNotFound, TaskState
from dispatcher.store.tables import cases_t
from dispatcher.store.values import cents, split_list
from dispatcher.web.auth import ConsoleForm, console_form, console_permission
from dispatcher.web.console import own_page
from dispatcher.web.console_ui import console_page, gettext_for
from dispatcher.web.dependencies import ClockDep, EngineDep, TasksDep
from dispatcher.web.i18n import N_

router = APIRouter(prefix="/ui")

Reader = Annotated[Principal, Depends(console_permission(Permission.CASES_READ))]
#: the queue's filters, as the page offers them ("mine": claimed by the reader)
STATES = ("active", "open", "claimed", "mine", "done", "all")
#: what each kind of task asks of a collector, in words (the code is shown too)
KIND_NAMES = {
    TaskKind.VERIFY_PAYMENT_CLAIM.value: N_("Verify a payment claim"),
    TaskKind.REVIEW_DISPUTE.value: N_("Review a dispute"),
    TaskKind.READ_REPLY.value: N_("Read a reply"),
    TaskKind.CALL_BACK.value: N_("Call back"),
    TaskKind.BROKEN_PROMISE.value: N_("Broken promise"),
    TaskKind.REVIEW_REVOCATION.value: N_("Review an opt-out"),
    TaskKind.LEGAL_HANDOFF.value: N_("Hand over to legal"),
    TaskKind.ESCALATE.value: N_("Escalate: no answer"),
}


def kind_names(gettext: Any) -> dict[str, str]:
    """Each task kind's name in the page's language."""
    return {kind: gettext(name) for kind, name in KIND_NAMES.items()}


def _cases(engine: Any, case_ids: list[str]) -> dict[str, dict[str, Any]]:
    """What the queue shows of each task's case: a masked name, the zone, what is owed."""
    if not case_ids:
        return {}
    c = cases_t.c
    with engine.connect() as conn:
        rows = conn.execute(select(c.case_id, c.name, c.zones, c.currency, c.amount_due, c.paid_total)
                            .where(c.case_id.in_(case_ids))).all()
    return {r.case_id: {"name": mask_name(r.name), "zone": (split_list(r.zones) or ("UTC",))[0],
                        "outstanding": max(cents(r.amount_due) - cents(r.paid_total), Decimal("0.00")),
                        "currency": r.currency} for r in rows}


@router.get("/queue")
async def queue(request: Request, principal: Reader, engine: EngineDep, tasks: TasksDep, clock: ClockDep,
                state: str = "active", kind: str = "") -> Response:
    _ = gettext_for(request, principal)
    state = state if state in STATES else "active"
    kind = kind if kind in {k.value for k in TaskKind} else ""
    now = clock.now()

    def read() -> tuple[list[Task], dict[str, dict[str, Any]]]:
        if state == "mine":
            found = tasks.list(TaskState.CLAIMED.value, kind or None, principal.name, 200)
        else:
            found = tasks.list(state, kind or None, None, 200)
        return found, _cases(engine, sorted({t.case_id for t in found}))

    found, cases = await run_in_threadpool(read)
    overdue = sum(1 for t in found if t.overdue(now))
    return console_page(request, principal, "console_queue.html", title=_("Task queue"), tasks=found,
                        cases=cases, now=now, state=state, kind=kind, states=STATES,
                        kinds=[k.value for k in TaskKind], kind_names=kind_names(_), overdue=overdue,
                        can_work=principal.can(Permission.TASKS_WORK), result=_banner(request, principal))


def _banner(request: Request, principal: Principal) -> dict[str, str] | None:
    params = request.query_params
    _ = gettext_for(request, principal)
    if "claimed" in params:
        return {"kind": "ok", "text": _("Task %(id)s is yours now.") % {"id": params.get("claimed")}}
    if "closed" in params:
        return {"kind": "ok", "text": _("Task %(id)s done.") % {"id": params.get("closed")}}
    if "error" in params:
        return {"kind": "refused", "text": str(params.get("error"))}
    return None


def _back(form: dict[str, str], **params: Any) -> RedirectResponse:
    target = own_page(form.get("next")) or "/ui/queue"
    base, _, query = target.partition("?")
    kept = [(k, v) for k, v in parse_qsl(query)
            if k not in {"claimed", "closed", "error", "done", "queued", "refused", "held", "released"}]
    query = urlencode(kept + [(k, str(v)) for k, v in params.items()])
    return RedirectResponse(f"{base}?{query}", status_code=303)


@router.post("/tasks/{task_id}/claim")
async def claim(task_id: int, request: Request, tasks: TasksDep,
                sent: Annotated[ConsoleForm, Depends(console_form(Permission.TASKS_WORK))]) -> Response:
    try:
        await run_in_threadpool(tasks.claim, task_id, sent.principal.name)
    except (TaskNotFound, TaskConflict) as exc:
        return _back(sent.fields, error=str(exc))
    return _back(sent.fields, claimed=task_id)


@router.post("/tasks/{task_id}/done")
async def done(task_id: int, request: Request, tasks: TasksDep,
               sent: Annotated[ConsoleForm, Depends(console_form(Permission.TASKS_WORK))]) -> Response:
    _ = gettext_for(request, sent.principal)
    note = (sent.fields.get("note") or "").strip()
    if not note:
        return _back(sent.fields, error=_("Say what was done: a task is closed with a note."))
    try:
        await run_in_threadpool(tasks.done, task_id, sent.principal.name, note)
    except (TaskNotFound, ValueError) as exc:  # TaskConflict, or a note it cannot keep
        return _back(sent.fields, error=str(exc))
    return _back(sent.fields, closed=task_id)
