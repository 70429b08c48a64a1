"""What a debtor can do on their page (`GET /p/{token}`): see what they owe now, pay,
promise to pay by a date, take a repayment plan, or dispute the debt.

Every choice is an event on the case (`self_service`, actor `page`) next to what it
does: a `promise_to_pay` hold until the date; a plan with its agreement (the text shown,
stored verbatim); a `dispute_hold` and a `review_dispute` task for a person. The page
is the debtor's own reading of the case at the clock's now, in their zone (SPEC 11).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.engine import Engine

from dispatcher.clock import Clock
from dispatcher.config import Config, PlanOffer
from dispatcher.domain import CLOSED_STATUSES, CaseSnapshot, Instalment, Reason
from dispatcher.policy.plans import (
    PlanStanding,
    PlanStatus,
    eligible_offers,
    plan_standing,
    plan_terms,
    schedule,
)
from dispatcher.policy.zones import local_date, primary_zone, promise_hold_until, promise_window
from dispatcher.services.agreement_text import agreement_text, plan_terms_data, text_digest
from dispatcher.services.case_tasks import open_task
from dispatcher.store import repository
from dispatcher.store.events import EventKind, record_event
from dispatcher.store.plans import PlanExists, create_plan
from dispatcher.store.snapshots import get_snapshot
from dispatcher.store.tables import plans_t
from dispatcher.templates.context import penalty_explanation

#: who acts on the page: the debtor, through the link of one of their messages
ACTOR_PAGE = "page"
#: characters of a dispute's text kept on the case
DISPUTE_MAX = 2000


@dataclass(frozen=True, slots=True)
class LinkTarget:
    """What a payment link points at: the case and the message that carried it."""

    case_id: str
    message_id: int | None


@dataclass(frozen=True, slots=True)
class PlanChoice:
    """An offer as the page shows it: the instalments and the agreement text."""

    offer: PlanOffer
    instalments: tuple[Instalment, ...]
    waived: Decimal
    text: str
    digest: str


@dataclass(frozen=True, slots=True)
class PageView:
    """Everything the debtor's page shows (no contact addresses)."""

    snapshot: CaseSnapshot
    locale: str
    zone: str
    today: dt.date
    organisation: str
    support_phone: str
    penalty_explanation: str
    closed: bool
    promise_until: dt.date | None  # a promise to pay in force
    disputed: bool
    promise_max: dt.date
    offers: tuple[PlanChoice, ...] = ()
    plan: PlanStanding | None = None
    plan_agreement_id: int | None = None
    notices: list[str] = field(default_factory=list)


class Refused(ValueError):
    """A choice the page cannot accept; the message is for the debtor (localised key)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def page_locale(locale: str) -> str:
    return "zh-CN" if locale.lower().startswith("zh") else "en-US"


class SelfService:
    """The debtor's choices on their page. Thread-safe (a connection per call)."""

    def __init__(self, engine: Engine, config: Config, clock: Clock) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock

    # -- reading --------------------------------------------------------------------

    def view(self, target: LinkTarget) -> PageView:
        """The page for the case (`CaseNotFound` if it is gone)."""
        now = self.clock.now()
        snapshot = get_snapshot(self.engine, target.case_id, now)
        case = snapshot.case
        profile = self.config.jurisdictions.get(case.jurisdiction)
        zone = primary_zone(snapshot.zones, profile)
        today = local_date(now, zone)
        locale = page_locale(case.locale)
        ss = self.config.self_service
        promise = max((h.until for h in snapshot.holds if h.reason is Reason.PROMISE_TO_PAY and h.until),
                      default=None)
        standing = None
        agreement_id = None
        if snapshot.plan is not None:
            standing = plan_standing(snapshot.plan, case.paid_total, today, ss.plan_grace_days)
            agreement_id = self._agreement_of(snapshot.plan.plan_id)
        closed = case.status in CLOSED_STATUSES or case.outstanding <= 0
        offers: tuple[PlanChoice, ...] = ()
        if not closed and snapshot.plan is None:
            offers = tuple(self._choice(snapshot, o, today, locale) for o in self._eligible(snapshot, today))
        return PageView(
            snapshot=snapshot, locale=locale, zone=zone, today=today,
            organisation=self.config.organisation.name_for(locale),
            support_phone=profile.support_phone if profile else "",
            penalty_explanation=penalty_explanation(case, locale, today),
            closed=closed,
            promise_until=None if promise is None else local_date(promise, zone),
            disputed=any(h.reason is Reason.DISPUTE_HOLD for h in snapshot.holds),
            promise_max=promise_window(today, ss.promise_max_days)[1],
            offers=offers, plan=standing, plan_agreement_id=agreement_id,
        )

    def _eligible(self, snapshot: CaseSnapshot, today: dt.date) -> list[PlanOffer]:
        stage = self.config.stage_for((today - snapshot.case.due_date).days)
        return eligible_offers(self.config.self_service.plans, snapshot.case, stage.name if stage else None)

    def _choice(self, snapshot: CaseSnapshot, offer: PlanOffer, today: dt.date, locale: str) -> PlanChoice:
        case = snapshot.case
        total, waived = plan_terms(case, offer)
        instalments = schedule(offer, total, today)
        text = agreement_text(case, offer, instalments, waived, organisation=self.config.organisation.name_for(locale),
                              locale=locale, today=today, grace_days=self.config.self_service.plan_grace_days)
        return PlanChoice(offer, instalments, waived, text, text_digest(text))

    def _agreement_of(self, plan_id: int) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(select(plans_t.c.agreement_id).where(plans_t.c.id == plan_id)).scalar()

    # -- choices --------------------------------------------------------------------

    def opened(self, target: LinkTarget) -> None:
        """The debtor opened the link (what a click on a payment link always logged)."""
        with self.engine.begin() as conn:
            record_event(conn, EventKind.LINK_CLICKED, self.clock.now(), case_id=target.case_id,
                         message_id=target.message_id, actor=ACTOR_PAGE, page=True)

    def pay_now(self, target: LinkTarget) -> None:
        with self.engine.begin() as conn:
            record_event(conn, EventKind.SELF_SERVICE, self.clock.now(), case_id=target.case_id,
                         message_id=target.message_id, actor=ACTOR_PAGE, choice="pay_now")

    def promise(self, target: LinkTarget, day_text: str) -> dt.date:
        """A promise to pay by a date (the debtor's date, tomorrow to `promise_max_days`
        ahead): a `promise_to_pay` hold until then. Returns the date."""
        view = self.view(target)
        if view.closed:
            raise Refused("closed")
        try:
            day = dt.date.fromisoformat(day_text.strip())
        except ValueError:
            raise Refused("bad_date") from None
        if not view.today < day <= view.promise_max:
            raise Refused("date_range")
        now = self.clock.now()
        until = promise_hold_until(day, view.zone)
        with self.engine.begin() as conn:
            repository.place_hold(conn, target.case_id, Reason.PROMISE_TO_PAY, until, ACTOR_PAGE, now,
                                  note="self-service page")
            record_event(conn, EventKind.SELF_SERVICE, now, case_id=target.case_id, message_id=target.message_id,
                         actor=ACTOR_PAGE, choice="promise_to_pay", promised_by=day.isoformat())
        return day

    def take_plan(self, target: LinkTarget, offer_name: str, digest: str) -> int:
        """Accept the offer named, if the text the debtor saw (`digest`) is still the one
        that applies; returns the agreement id."""
        view = self.view(target)
        if view.closed:
            raise Refused("closed")
        if view.plan is not None and view.plan.status is not PlanStatus.BROKEN:
            raise Refused("plan_exists")
        choice = next((c for c in view.offers if c.offer.name == offer_name), None)
        if choice is None:
            raise Refused("no_offer")
        if choice.digest != digest:
            raise Refused("terms_changed")
        case = view.snapshot.case
        now = self.clock.now()
        ss = self.config.self_service
        try:
            with self.engine.begin() as conn:
                plan_id, agreement_id = create_plan(
                    conn, case.case_id, offer=choice.offer.name, instalments=choice.instalments, waived=choice.waived,
                    paid_at_start=case.paid_total, created_on=view.today, locale=view.locale,
                    terms=plan_terms_data(case, choice.offer, choice.instalments, choice.waived, view.today,
                                          ss.plan_grace_days),
                    text=choice.text, by=ACTOR_PAGE, now=now, message_id=target.message_id,
                )
                record_event(conn, EventKind.SELF_SERVICE, now, case_id=case.case_id, message_id=target.message_id,
                             actor=ACTOR_PAGE, choice="repayment_plan", plan_id=plan_id, agreement_id=agreement_id,
                             offer=choice.offer.name)
        except PlanExists:
            raise Refused("plan_exists") from None
        return agreement_id

    def dispute(self, target: LinkTarget, text: str) -> None:
        """A dispute in the debtor's words: contact stops (`dispute_hold`) and a person
        reviews it (`review_dispute` task)."""
        words = text.strip()[:DISPUTE_MAX]
        if not words:
            raise Refused("empty_dispute")
        now = self.clock.now()
        with self.engine.begin() as conn:
            repository.place_hold(conn, target.case_id, Reason.DISPUTE_HOLD, None, ACTOR_PAGE, now,
                                  note="self-service page")
            record_event(conn, EventKind.SELF_SERVICE, now, case_id=target.case_id, message_id=target.message_id,
                         actor=ACTOR_PAGE, choice="dispute", text=words)
            open_task(conn, self.config, target.case_id, "review_dispute", now, actor=ACTOR_PAGE,
                      source=f"page:{target.message_id}:{now.isoformat()}", detail=words, text=words,
                      message_id=target.message_id)
