"""A case on a repayment plan, through the planner, the sender and the sandbox: the
ticks send instalment reminders (their own templates, the instalment's amount and date)
instead of collection reminders; once the plan is broken, collection resumes at the
case's own stage."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from test_outbox_sender import DUE_DPD30, SHANGHAI, World, cn_case, test_config, world  # noqa: F401

from dispatcher.config import PlanOffer
from dispatcher.domain import Channel
from dispatcher.policy.plans import plan_terms, schedule
from dispatcher.services.plan_check import after_planning
from dispatcher.store.plans import create_plan
from dispatcher.store.snapshots import get_snapshot


def _take_plan(w: World, case_id: str, accepted: dt.date) -> None:
    offer: PlanOffer = w.config.self_service.plans[0]  # three_months, penalty waived if kept
    case = get_snapshot(w.engine, case_id, w.clock.now()).case
    total, waived = plan_terms(case, offer)
    with w.engine.begin() as conn:
        create_plan(conn, case_id, offer=offer.name, instalments=schedule(offer, total, accepted), waived=waived,
                    paid_at_start=case.paid_total, created_on=accepted, locale=case.locale, terms={}, text="t",
                    by="page", now=w.clock.now())


async def test_instalment_reminders_replace_collection_until_the_plan_breaks(world: World) -> None:  # noqa: F811
    world.add_cases(cn_case(1, due=DUE_DPD30))
    # accepted 2026-11-10: instalment 1 (10,120.00 / 3 = 3,373.34) due 2026-12-10, 3 days after Monday 12-07
    _take_plan(world, "cn-0001", dt.date(2026, 11, 10))
    assert world.plan() == 2
    rows = world.rows()
    assert {(r.channel, r.stage, r.template_id) for r in rows} == {
        ("sms", "plan", "sms/plan/v1"), ("email", "plan", "email/plan/v1")}
    summary = await world.sender().send_due()
    assert summary.sent == 2
    sms = world.row(world.message_id("cn-0001", Channel.SMS))
    email = world.row(world.message_id("cn-0001", Channel.EMAIL))
    assert "第1期于12月10日到期" in sms.body and "尚欠¥10,270.00" in sms.body and sms.segments <= 2
    assert "¥3,373.34" in email.body and "2026年12月10日" in email.body
    # the same day again: nothing more (one reminder a day per channel)
    assert world.plan() == 0

    # Tuesday: no reminder day, and collection stays stopped
    world.clock.set(dt.datetime(2026, 12, 8, 10, 0, tzinfo=SHANGHAI))
    assert world.plan() == 0

    # Monday 12-14: instalment 1 unpaid 4 days after its date (grace 3): the plan breaks
    world.clock.set(dt.datetime(2026, 12, 14, 10, 0, tzinfo=SHANGHAI))
    after_planning(world.config)(world.engine, world.clock.now())
    assert get_snapshot(world.engine, "cn-0001", world.clock.now()).plan is None
    assert world.plan() == 2
    fresh = [r for r in world.rows() if r.status == "queued"]
    assert {(r.channel, r.stage) for r in fresh} == {("sms", "dpd30"), ("email", "dpd30")}
    assert all(r.template_id.startswith(f"{r.channel}/dpd30/") for r in fresh)


async def test_a_payment_covering_the_instalment_moves_the_reminders_to_the_next(world: World) -> None:  # noqa: F811
    world.add_cases(cn_case(1, due=DUE_DPD30))
    _take_plan(world, "cn-0001", dt.date(2026, 10, 11))  # instalments due 11-10, 12-10, 2027-01-09
    from dispatcher.store import repository as repo

    with world.engine.begin() as conn:
        repo.record_payment(conn, "cn-0001", Decimal("3373.34"), "test", world.clock.now())
    assert world.plan() == 2  # 12-10 is 3 days away: instalment 2
    await world.sender().send_due()
    sms = world.row(world.message_id("cn-0001", Channel.SMS))
    assert "第2期于12月10日到期" in sms.body


async def test_a_debtor_takes_a_plan_from_the_link_in_a_sandbox_sms(world: World) -> None:  # noqa: F811
    """The whole loop: a reminder goes out through the sandbox, the debtor opens its link
    (served by our web app), takes the 3-instalment plan on the page; the next ticks send
    instalment reminders, not collection reminders."""
    import re

    import httpx

    local = world.config.model_copy(update={"links": world.config.links.model_copy(update={"base_url": None})})
    world.config = local  # links under the web app's own address, which the test can open
    world.add_cases(cn_case(1, due=DUE_DPD30))
    assert world.plan() == 2
    await world.sender(config=local).send_due()
    [sms] = world.sms_to("+8613800000001")
    link = re.search(r"https?://\S+/p/[A-Za-z0-9_-]{16}", sms["body"])
    assert link is not None
    async with httpx.AsyncClient(timeout=10) as client:
        page = await client.get(link.group(0))
        assert page.status_code == 200 and "¥10,270.00" in page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        offer = re.search(r'name="offer" value="three_months">\s*<input type="hidden" name="digest" value="(\w+)"',
                          page.text)
        assert csrf is not None and offer is not None
        taken = await client.post(f"{link.group(0)}/plan", data={"csrf": csrf.group(1), "offer": "three_months",
                                                                  "digest": offer.group(1)})
        assert taken.status_code == 303
    plan = get_snapshot(world.engine, "cn-0001", world.clock.now()).plan
    assert plan is not None and len(plan.instalments) == 3 and plan.instalments[0].due == dt.date(2027, 1, 6)
    # the next days: no collection reminder; 3 days before the first instalment, its reminders
    world.clock.set(dt.datetime(2026, 12, 14, 10, 0, tzinfo=SHANGHAI))
    assert world.plan() == 0
    world.clock.set(dt.datetime(2027, 1, 4, 10, 0, tzinfo=SHANGHAI))  # Monday, 2 days before: not a reminder day
    assert world.plan() == 0
    world.clock.set(dt.datetime(2027, 1, 6, 10, 0, tzinfo=SHANGHAI))  # the day itself
    assert world.plan() == 2
    fresh = [r for r in world.rows() if r.status == "queued"]
    assert {(r.channel, r.stage) for r in fresh} == {("sms", "plan"), ("email", "plan")}


async def test_the_incremental_planner_comes_back_on_an_instalments_day_without_any_event(world: World) -> None:  # noqa: F811
    """No payment, reply or hold between two reminder days: the case's next instant alone
    must bring it back to the planner on the instalment's due day (the reminder of day 0)."""
    world.add_cases(cn_case(1, due=DUE_DPD30))
    _take_plan(world, "cn-0001", dt.date(2026, 11, 10))  # instalment 1 due 2026-12-10
    assert world.plan() == 2  # 12-07: three days before
    await world.sender().send_due()
    for day in (8, 9):
        world.clock.set(dt.datetime(2026, 12, day, 10, 0, tzinfo=SHANGHAI))
        assert world.plan() == 0
    world.clock.set(dt.datetime(2026, 12, 10, 10, 0, tzinfo=SHANGHAI))
    assert world.plan() == 2  # the day itself, with no event since 12-07
    fresh = [r for r in world.rows() if r.status == "queued"]
    assert {(r.channel, r.stage) for r in fresh} == {("sms", "plan"), ("email", "plan")}
