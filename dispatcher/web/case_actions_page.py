"""The case page's record-keeping forms: a payment, a promise to pay, a note.

    POST /ui/cases/{case_id}/payments   amount (e.g. 120.50)
    POST /ui/cases/{case_id}/promises   date (YYYY-MM-DD, a day in the debtor's zone)
    POST /ui/cases/{case_id}/notes      text (the contact's outcome, the follow-up plan)

The work is `services.case_actions` (the same as the API's), which records each as an
event on the case with `by` = the signed-in user; each needs `cases.write`. The answer
is a 303 back to the case page with a banner saying what happened.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from dispatcher.roles import Permission
from dispatcher.services.case_actions import ActionRefused, parse_amount
from dispatcher.store import repository
from dispatcher.web.auth import ConsoleForm, console_form
from dispatcher.web.console import no_case
from dispatcher.web.console_ui import gettext_for
from dispatcher.web.dependencies import CaseActionsDep

router = APIRouter(prefix="/ui")

Writer = Annotated[ConsoleForm, Depends(console_form(Permission.CASES_WRITE))]


def _back(case_id: str, **params: Any) -> RedirectResponse:
    return RedirectResponse(f"/ui/cases/{quote(case_id)}?{urlencode(params)}", status_code=303)


@router.post("/cases/{case_id}/payments")
async def record_payment(case_id: str, request: Request, actions: CaseActionsDep, sent: Writer) -> Response:
    _ = gettext_for(request, sent.principal)
    try:
        amount = parse_amount(sent.fields.get("amount", ""))
        out = await run_in_threadpool(actions.payment, case_id, amount, sent.principal.name)
    except ActionRefused as exc:
        return _back(case_id, error=str(exc))
    except repository.CaseNotFound:
        return no_case(request, sent.principal, case_id)
    text = _("Payment of %(amount)s recorded; outstanding now %(outstanding)s.") % out
    if out["closed"]:
        text += " " + _("The case is paid and closed.")
    return _back(case_id, done=text)


@router.post("/cases/{case_id}/promises")
async def record_promise(case_id: str, request: Request, actions: CaseActionsDep, sent: Writer) -> Response:
    _ = gettext_for(request, sent.principal)
    try:
        out = await run_in_threadpool(actions.promise, case_id, sent.fields.get("date", ""), sent.principal.name)
    except ActionRefused as exc:
        return _back(case_id, error=str(exc))
    except repository.CaseNotFound:
        return no_case(request, sent.principal, case_id)
    return _back(case_id, done=_("Promise to pay by %(date)s recorded: reminders wait until then.") % out)


@router.post("/cases/{case_id}/notes")
async def add_note(case_id: str, request: Request, actions: CaseActionsDep, sent: Writer) -> Response:
    _ = gettext_for(request, sent.principal)
    try:
        await run_in_threadpool(actions.note, case_id, sent.fields.get("text", ""), sent.principal.name)
    except ActionRefused as exc:
        return _back(case_id, error=str(exc))
    except repository.CaseNotFound:
        return no_case(request, sent.principal, case_id)
    return _back(case_id, done=_("Note added."))
