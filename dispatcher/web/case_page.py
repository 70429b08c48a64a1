"""The case page of the collectors' console and its actions.

    GET  /ui/cases/{case_id}                  the case: who, what is owed, days past due, stage, the
                                              debtor's time now; what the dispatcher does now and why;
                                              replies; messages with their full text; the timeline
    GET  /ui/cases/{case_id}/preview?channel=&template=   the exact text of a one-off, then "Send"
    POST /ui/cases/{case_id}/messages         channel, template ("" = the rotation's choice)
    POST /ui/cases/{case_id}/holds            reason, until (YYYY-MM-DD, 00:00 in the debtor's zone), note
    POST /ui/cases/{case_id}/holds/release    reason ("" = every hold); confirm=yes after the confirmation page
    POST /ui/cases/{case_id}/contacts/reveal  channel: the full number, shown once (audited)

Reading needs `cases.read`, a one-off `cases.write`, holds `holds.place` / `holds.release`,
revealing a number `contacts.reveal` (collectors): every address is masked otherwise.
The one-off menus offer only the channels and templates that exist (approved) for the
case's stage and locale. Times are the debtor's, with the offset; the page's script adds
the reader's own. Actions answer with a 303 back to the case page, whose banner says what
happened (a refused one-off names its reason code).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from dispatcher.config import Config
from dispatcher.domain import HOLD_REASONS, CaseSnapshot, Channel, Decision, Reason
from dispatcher.links import LinkSigner
from dispatcher.logs import mask
from dispatcher.policy import Gate
from dispatcher.policy.zones import PersonDateError, parse_person_date, primary_zone
from dispatcher.roles import PROTECTED_HOLD_REASONS, Permission, Principal
from dispatcher.services.case_actions import ActionRefused, clean_text
from dispatcher.services.links import TOKEN_LENGTH, link_url, links_base_url
from dispatcher.services.oneoff import offered_templates, render_for_case, request_one_off
from dispatcher.services.planner import plan_decisions
from dispatcher.services.tasks import Tasks
from dispatcher.store import repository
from dispatcher.store.events import EventKind, record_event
from dispatcher.store.snapshots import get_snapshot
from dispatcher.store.timeline import case_timeline
from dispatcher.templates import TemplateSet
from dispatcher.templates.rendering import NotApproved, RenderError, UnknownTemplate
from dispatcher.web.auth import ConsoleForm, console_form, console_permission
from dispatcher.web.console import no_case
from dispatcher.web.console_ui import console_page, gettext_for, local_text
from dispatcher.web.dependencies import (
    ClockDep,
    ConfigDep,
    EngineDep,
    GateDep,
    SettingsDep,
    SignerDep,
    TasksDep,
    TemplatesDep,
)
from dispatcher.web.i18n import N_
from dispatcher.web.queue_page import kind_names

router = APIRouter(prefix="/ui")

#: Holds a collector may place from the page (the others come from replies and the IVR).
PAGE_HOLD_REASONS = (Reason.COLLECTOR_HOLD, Reason.LEGAL_HOLD, Reason.DISPUTE_HOLD, Reason.CEASE_COMMUNICATION)
#: What the debtor said: shown in their own section, not among the status events.
REPLY_KINDS = frozenset({EventKind.REPLY_RECEIVED.value, EventKind.KEYWORD_RECEIVED.value,
                         EventKind.KEYPRESS.value})
#: What a reply asked for, in words (the code is shown too)
INTENT_NAMES = {
    "opt_out": N_("opt-out"), "opt_in": N_("opt back in"), "help": N_("asks for help"),
    "paid": N_("says it is paid"), "dispute": N_("disputes the debt"), "revocation": N_("revokes consent"),
    "free_text": N_("free text"),
}
#: Rows of the outbox whose text is not rendered yet (the sender renders at send time).
_UNRENDERED = frozenset({"queued", "sending"})

Reader = Annotated[Principal, Depends(console_permission(Permission.CASES_READ))]
Revealer = Annotated[ConsoleForm, Depends(console_form(Permission.CONTACTS_REVEAL))]


def _links(signer: LinkSigner, public_url: str, channel: Channel, config: Config) -> tuple[str, str | None]:
    """Stand-in links of the real ones' length (a payment link is minted for the message
    when it is composed), so the text and an SMS's segment count are what the debtor gets."""
    payment = link_url(links_base_url(config, public_url), "x" * TOKEN_LENGTH)
    unsubscribe = f"{public_url.rstrip('/')}/email/unsubscribe/{'x' * len(signer.unsubscribe_token(1))}"
    return payment, unsubscribe if channel is Channel.EMAIL else None


class _Renderer:
    """Renders one-off texts for one case page (stand-in links)."""

    def __init__(self, templates: TemplateSet, config: Config, signer: LinkSigner, public_url: str,
                 snapshot: CaseSnapshot | None, now: dt.datetime) -> None:
        self.templates, self.config, self.signer, self.public_url = templates, config, signer, public_url
        self.snapshot, self.now = snapshot, now

    def text(self, channel: Channel, template_id: str) -> tuple[str | None, str | None, str | None]:
        """(subject, text, problem)."""
        if self.snapshot is None:
            return None, None, "no case"
        payment, unsubscribe = _links(self.signer, self.public_url, channel, self.config)
        try:
            rendered = render_for_case(self.templates, self.config, self.snapshot, channel, template_id, self.now,
                                       payment_link=payment, unsubscribe_url=unsubscribe)
        except (RenderError, UnknownTemplate, NotApproved, ValueError) as exc:
            return None, None, str(exc)
        return rendered.subject, rendered.text, None


def _read_case(engine: Any, gate: Gate, catalog: Any, case_id: str,
               now: dt.datetime) -> tuple[dict[str, Any], CaseSnapshot | None, list[Decision]]:
    with engine.connect() as conn:
        timeline = case_timeline(conn, case_id, now=now)
    found = next(iter(plan_decisions(engine, gate, catalog, now, case_ids=[case_id])), None)
    snapshot, decisions = found if found is not None else (None, [])
    return timeline, snapshot, list(decisions)


def _debtor_time(value: str | None, zone: str) -> str | None:
    """An instant from the redirect's query in the debtor's zone, to the minute with the
    offset (as it came if it is not one: the query is the browser's)."""
    try:
        return local_text(value, zone) or None
    except ValueError:
        return value


def _banner(request: Request, principal: Principal, zone: str) -> dict[str, str] | None:
    """What the last action did, from the redirect's query (shown once, at the top)."""
    params = request.query_params
    _ = gettext_for(request, principal)
    if "refused" in params:
        return {"kind": "refused", "text": _("Refused: %(reason)s — %(detail)s")
                % {"reason": params.get("refused"), "detail": params.get("detail", "")}}
    if "queued" in params:
        values = {"id": params.get("queued"), "action": params.get("action"), "reason": params.get("reason"),
                  "when": _debtor_time(params.get("not_before"), zone)}
        text = (_("Message %(id)s queued (%(action)s, %(reason)s): it goes out at %(when)s, the next legal moment.")
                if values["when"] else _("Message %(id)s queued (%(action)s, %(reason)s): it goes out now."))
        return {"kind": "ok", "text": text % values}
    if "held" in params:
        return {"kind": "ok", "text": _("Hold %(reason)s placed.") % {"reason": params.get("held")}}
    if "released" in params:
        return {"kind": "ok", "text": _("Released %(count)s hold(s).") % {"count": params.get("released")}}
    if "done" in params:
        return {"kind": "ok", "text": str(params.get("done"))}
    if "claimed" in params:
        return {"kind": "ok", "text": _("Task %(id)s is yours now.") % {"id": params.get("claimed")}}
    if "closed" in params:
        return {"kind": "ok", "text": _("Task %(id)s done.") % {"id": params.get("closed")}}
    if "error" in params:
        return {"kind": "refused", "text": str(params.get("error"))}
    return None


async def show_case(case_id: str, request: Request, principal: Principal, *, engine: Any, gate: Gate,
                    now: dt.datetime, templates: TemplateSet, config: Config, signer: LinkSigner, public_url: str,
                    tasks: Tasks, revealed: dict[str, str] | None = None) -> Response:
    """The case page (also the answer of a reveal, which shows the number once)."""
    catalog = await run_in_threadpool(templates.approved_catalog)
    try:
        timeline, snapshot, decisions = await run_in_threadpool(_read_case, engine, gate, catalog, case_id, now)
    except repository.CaseNotFound:
        return no_case(request, principal, case_id)
    open_tasks = await run_in_threadpool(tasks.for_cases, [case_id])
    _ = gettext_for(request, principal)
    stage = next((d.stage for d in decisions if d.stage), None)
    offered = offered_templates(gate, catalog, snapshot, stage) if snapshot is not None else {}
    renderer = _Renderer(templates, config, signer, public_url, snapshot, now)
    messages = []
    for m in timeline["messages"]:
        item = dict(m)
        if m["status"] in _UNRENDERED and not m["body"] and m["template"]:
            # not rendered yet: the text it will have, rendered now the way the sender will
            item["subject"], item["body"], item["problem"] = renderer.text(Channel(m["channel"]), m["template"])
            item["pending_text"] = True
        messages.append(item)
    # the debtor's zone: every time on the page, the decisions' reasons too
    zone = primary_zone(timeline["zones"], config.jurisdictions.get(timeline["jurisdiction"]))
    contacts = []
    for c in snapshot.contacts if snapshot is not None else ():
        full = (revealed or {}).get(c.channel.value)
        contacts.append({"channel": c.channel.value, "address": full or mask(c.address or ""), "revealed": bool(full),
                         "revealable": c.channel in (Channel.SMS, Channel.VOICE) and bool(c.address),
                         "consent": c.consent, "opted_out": c.opted_out, "invalid": c.invalid})
    return console_page(
        request, principal, "console_case.html",
        title=_("Case %(case)s") % {"case": case_id},
        can_write=principal.can(Permission.CASES_WRITE),
        can_hold=principal.can(Permission.HOLDS_PLACE),
        can_release=principal.can(Permission.HOLDS_RELEASE),
        can_reveal=principal.can(Permission.CONTACTS_REVEAL),
        now=now, zone=zone, debtor_now=local_text(now, zone),
        case=snapshot.case if snapshot is not None else None,
        contacts=contacts, timeline=timeline, messages=messages,
        replies=[e for e in timeline["events"] if e["kind"] in REPLY_KINDS],
        notes=[e for e in timeline["events"] if e["kind"] == EventKind.NOTE_ADDED.value],
        open_tasks=open_tasks, can_work=principal.can(Permission.TASKS_WORK), kind_names=kind_names(_),
        intent_names={k: _(v) for k, v in INTENT_NAMES.items()},
        decisions=decisions, stage=stage,
        offered={ch.value: ids for ch, ids in offered.items()},
        hold_reasons=[r.value for r in PAGE_HOLD_REASONS],
        result=_banner(request, principal, zone),
    )


@router.get("/cases/{case_id}")
async def case_page(case_id: str, request: Request, principal: Reader, engine: EngineDep, gate: GateDep,
                    clock: ClockDep, templates: TemplatesDep, config: ConfigDep, signer: SignerDep,
                    settings: SettingsDep, tasks: TasksDep) -> Response:
    return await show_case(case_id, request, principal, engine=engine, gate=gate, now=clock.now(),
                           templates=templates, config=config, signer=signer, public_url=settings.public_url,
                           tasks=tasks)


@router.post("/cases/{case_id}/contacts/reveal")
async def reveal_contact(case_id: str, request: Request, engine: EngineDep, gate: GateDep, clock: ClockDep,
                         templates: TemplatesDep, config: ConfigDep, signer: SignerDep, settings: SettingsDep,
                         tasks: TasksDep, sent: Revealer) -> Response:
    """The full number of one channel, on this answer only; the event names who saw it."""
    principal, form = sent.principal, sent.fields
    try:
        channel = Channel(form.get("channel", ""))
    except ValueError:
        return _back(case_id, error=gettext_for(request, principal)("Choose a channel: sms, email or voice."))
    now = clock.now()

    def reveal() -> str | None:
        snapshot = get_snapshot(engine, case_id, now)
        address = next((c.address for c in snapshot.contacts if c.channel is channel and c.address), None)
        if address is None or channel is Channel.EMAIL:
            return None
        with engine.begin() as conn:
            record_event(conn, EventKind.CONTACT_REVEALED, now, case_id=case_id, actor=principal.name,
                         by=principal.name, channel=channel.value)
        return address

    try:
        address = await run_in_threadpool(reveal)
    except repository.CaseNotFound:
        return no_case(request, principal, case_id)
    shown = {channel.value: address} if address else {}
    return await show_case(case_id, request, principal, engine=engine, gate=gate, now=now, templates=templates,
                           config=config, signer=signer, public_url=settings.public_url, tasks=tasks,
                           revealed=shown)


@router.get("/cases/{case_id}/preview")
async def preview_one_off(case_id: str, request: Request, principal: Reader, engine: EngineDep, gate: GateDep,
                          clock: ClockDep, templates: TemplatesDep, config: ConfigDep, signer: SignerDep,
                          settings: SettingsDep, channel: str = "", template: str = "") -> Response:
    """What the one-off would say, exactly, and whether the gate lets it go now."""
    _ = gettext_for(request, principal)
    now = clock.now()
    try:
        chosen_channel = Channel(channel)
    except ValueError:
        return _back(case_id, error=_("Choose a channel: sms, email or voice."))
    catalog = await run_in_threadpool(templates.approved_catalog)

    def decide() -> tuple[CaseSnapshot, Decision]:
        snapshot = get_snapshot(engine, case_id, now)
        return snapshot, gate.decide_channel(snapshot, catalog, now, chosen_channel, apply_cadence=False,
                                             template=template or None)

    try:
        snapshot, decision = await run_in_threadpool(decide)
    except repository.CaseNotFound:
        return no_case(request, principal, case_id)
    template_id = template or decision.template
    subject = text = problem = None
    # a template the gate would not use for this channel has no text to show
    if template_id and template_id.startswith(f"{chosen_channel.value}/") \
            and decision.reason is not Reason.NO_APPROVED_TEMPLATE:
        renderer = _Renderer(templates, config, signer, settings.public_url, snapshot, now)
        subject, text, problem = await run_in_threadpool(renderer.text, chosen_channel, template_id)
    return console_page(request, principal, "console_preview.html", title=_("Preview"), case_id=case_id,
                        channel=chosen_channel.value, template=template_id or "", subject=subject, text=text,
                        problem=problem, decision=decision,
                        zone=primary_zone(snapshot.zones, config.jurisdictions.get(snapshot.case.jurisdiction)),
                        can_write=principal.can(Permission.CASES_WRITE))


def _back(case_id: str, **params: Any) -> RedirectResponse:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return RedirectResponse(f"/ui/cases/{quote(case_id)}?{query}", status_code=303)


@router.post("/cases/{case_id}/messages")
async def send_one_off(case_id: str, request: Request, engine: EngineDep, gate: GateDep, clock: ClockDep,
                       templates: TemplatesDep,
                       sent: Annotated[ConsoleForm, Depends(console_form(Permission.CASES_WRITE))]) -> Response:
    principal, form = sent.principal, sent.fields
    _ = gettext_for(request, principal)
    try:
        channel = Channel(form.get("channel", ""))
    except ValueError:
        return _back(case_id, error=_("Choose a channel: sms, email or voice."))
    template = form.get("template") or None
    catalog = await run_in_threadpool(templates.approved_catalog)
    try:
        result = await run_in_threadpool(
            lambda: request_one_off(engine, gate, catalog, clock.now(), case_id=case_id,
                                    channel=channel, template=template, by=principal.name))
    except repository.CaseNotFound:
        return no_case(request, principal, case_id)
    decision = result.decision
    if result.refused:
        return _back(case_id, refused=decision.reason.value, detail=decision.detail)
    return _back(case_id, queued=result.message_id, action=decision.action.value, reason=decision.reason.value,
                 not_before=result.not_before)


@router.post("/cases/{case_id}/holds")
async def place_hold(case_id: str, request: Request, engine: EngineDep, clock: ClockDep, config: ConfigDep,
                     sent: Annotated[ConsoleForm, Depends(console_form(Permission.HOLDS_PLACE))]) -> Response:
    principal, form = sent.principal, sent.fields
    _ = gettext_for(request, principal)
    reason_text = form.get("reason", "")
    if reason_text not in {r.value for r in PAGE_HOLD_REASONS}:
        return _back(case_id, error=_("Choose a hold reason: %(reasons)s.")
                     % {"reasons": ", ".join(r.value for r in PAGE_HOLD_REASONS)})
    until_text = (form.get("until") or "").strip()
    try:
        note = clean_text(form.get("note") or "", "note")[:200] or None
    except ActionRefused as exc:
        return _back(case_id, error=str(exc))

    def write() -> str | None:
        with engine.begin() as conn:
            # The date is a day in the debtor's life (SPEC 11): 00:00 of it in their primary zone.
            jurisdiction, zones = repository.case_zones(conn, case_id)
            until: dt.datetime | None = None
            if until_text:
                try:
                    until = parse_person_date(until_text, primary_zone(zones, config.jurisdictions.get(jurisdiction)))
                except PersonDateError:
                    return _("Until: a date like 2026-12-20, or leave it empty (until released).")
                if until <= clock.now():
                    return _("Until must be a date in the future.")
            repository.place_hold(conn, case_id, Reason(reason_text), until, principal.name, clock.now(),
                                  note=note)
        return None

    try:
        error = await run_in_threadpool(write)
    except repository.CaseNotFound:
        return no_case(request, principal, case_id)
    if error is not None:
        return _back(case_id, error=error)
    return _back(case_id, held=reason_text)


@router.post("/cases/{case_id}/holds/release")
async def release_holds(case_id: str, request: Request, engine: EngineDep, clock: ClockDep,
                        sent: Annotated[ConsoleForm, Depends(console_form(Permission.HOLDS_RELEASE))]) -> Response:
    """Release after a confirmation page: the first POST asks, the confirmed one releases."""
    principal, form = sent.principal, sent.fields
    _ = gettext_for(request, principal)
    reason_text = form.get("reason") or None
    if reason_text is not None and reason_text not in {r.value for r in HOLD_REASONS}:
        return _back(case_id, error=_("Unknown hold reason."))
    # legal and cease-communication holds: compliance only (a collector's "release all" keeps them)
    keep = () if principal.can(Permission.HOLDS_RELEASE_PROTECTED) else PROTECTED_HOLD_REASONS
    if reason_text in keep:
        return _back(case_id, error=_("Only compliance may release a %(reason)s hold.") % {"reason": reason_text})
    if form.get("confirm") != "yes":
        return console_page(request, principal, "console_confirm_release.html", title=_("Release a hold?"),
                            case_id=case_id, reason=reason_text or "")

    def write() -> int:
        with engine.begin() as conn:
            return repository.release_holds(conn, case_id, Reason(reason_text) if reason_text else None,
                                            principal.name, clock.now(), keep=keep)

    try:
        count = await run_in_threadpool(write)
    except repository.CaseNotFound:
        return no_case(request, principal, case_id)
    return _back(case_id, released=count)
