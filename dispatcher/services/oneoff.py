"""One-off messages from collectors (CLI, API, web page): the same compliance gate as
scheduled messages, without the cadence rule (SPEC section 4)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import col

from dispatcher.config import Config
from dispatcher.domain import Action, CaseSnapshot, Channel, Decision, MessageKind
from dispatcher.policy import Gate
from dispatcher.policy.zones import local_date
from dispatcher.services.planner import enqueue_decisions
from dispatcher.store.repository import CaseNotFound
from dispatcher.store.snapshots import iter_snapshots
from dispatcher.store.tables import MessageRow
from dispatcher.templates import RenderedMessage, TemplateSet, build_context, opt_out_text, pick_locale


@dataclass(frozen=True)
class OneOffResult:
    decision: Decision
    message_id: int | None  # None when refused

    @property
    def refused(self) -> bool:
        return self.message_id is None

    @property
    def not_before(self) -> str | None:
        """When a deferred message goes out (ISO 8601 with offset); None if it goes now."""
        d = self.decision
        return d.not_before.isoformat() if d.action is Action.DEFER and d.not_before else None


def request_one_off(
    engine: Engine,
    gate: Gate,
    templates: Mapping[tuple[Channel, str, str], Sequence[str]],
    now: dt.datetime,
    *,
    case_id: str,
    channel: Channel,
    template: str | None,
    by: str,
) -> OneOffResult:
    """Gate a collector's message through `gate`; queue it (now or at `not_before`) or
    refuse it."""
    snapshot = next(iter(iter_snapshots(engine, case_ids=[case_id], now=now)), None)
    if snapshot is None:
        raise CaseNotFound(case_id)
    decision = gate.decide_channel(snapshot, templates, now, channel, apply_cadence=False, template=template)
    if decision.action not in (Action.SEND, Action.DEFER):
        return OneOffResult(decision, None)
    with engine.begin() as conn:
        enqueue_decisions(conn, [(snapshot, [decision])], now, created_by=by, kind=MessageKind.ONE_OFF)
        message_id = conn.execute(
            select(col(MessageRow.id))
            .where(col(MessageRow.case_id) == case_id, col(MessageRow.kind) == MessageKind.ONE_OFF.value)
            .order_by(col(MessageRow.id).desc())
            .limit(1)
        ).scalar_one()
    return OneOffResult(decision, message_id)


def offered_templates(gate: Gate, templates: Mapping[tuple[Channel, str, str], Sequence[str]],
                      snapshot: CaseSnapshot, stage: str | None) -> dict[Channel, tuple[str, ...]]:
    """What a collector may choose for a one-off on this case: per channel, the approved
    templates of the case's stage in its locale (else the profile's default locale, as
    the policy falls back); channels without any are left out."""
    if stage is None:
        return {}
    profile = gate.config.jurisdictions.get(snapshot.case.jurisdiction)
    default = profile.default_locale if profile is not None else snapshot.case.locale
    offered = {}
    for channel in Channel:
        found = tuple(gate.candidates(templates, channel, stage, snapshot.case.locale, default))
        if found:
            offered[channel] = found
    return offered


def render_for_case(templates: TemplateSet, config: Config, snapshot: CaseSnapshot, channel: Channel,
                    template_id: str, now: dt.datetime, *, payment_link: str,
                    unsubscribe_url: str | None) -> RenderedMessage:
    """The text `template_id` has for this case now: the same locale choice, context and
    approved file as the sender's (`services.compose`), with the links given (the real
    ones are signed for the message when it is sent). `RenderError`/`UnknownTemplate`
    /`NotApproved` when it cannot be rendered."""
    case = snapshot.case
    profile = config.jurisdictions[case.jurisdiction]
    zone = snapshot.zones[0] if snapshot.zones else profile.default_timezones[0]
    locale = pick_locale(templates, template_id, case.locale, profile.default_locale, approved_only=True)
    context = build_context(case, config=config, channel=channel, today=local_date(now, zone),
                            payment_link=payment_link, opt_out=opt_out_text(channel, locale, unsubscribe_url),
                            locale=locale, unsubscribe_url=unsubscribe_url)
    return templates.render(template_id, locale, context, require_approved=True)
