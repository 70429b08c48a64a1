"""The report on a hand-built history whose answers are worked out by hand (SPEC 9, 16),
on SQLite and PostgreSQL.

Period 2026-11-01 .. 2026-11-30, organisation zone UTC, shipped stages and prices
(CNY: 0.045 per SMS segment, 0.002 per e-mail, 0.10 per call minute).

Stage `early` (DPD 1-29), jurisdiction cn:
- E1 due 10-31: enters 11-01; SMS delivered 11-02 10:00 (2 segments); e-mail 11-04, link
  clicked; pays 1000.00 in full 11-10 -> cured.
- E2 due 10-31: enters 11-01; SMS undelivered 11-03 (1 segment); promise 11-04 kept by a
  100.00 payment 11-05; opts out 11-06; reaches dpd30 on 11-30 -> rolled forward.
- E3 due 11-10: enters 11-11 (pre_due before); SMS without receipt 11-12 (3 segments);
  promise 11-20 not kept; dispute 11-21 -> a complaint; still in the stage at the end.
- E4 due 10-20: in the stage since 10-21 (opening stock: starts 11-01), 500.00 paid on
  10-25 (amount at entry 1500.00); e-mail 11-02; a collector's call 11-03 12:00 with a
  voice/dpd60 template, 61 s, identity confirmed (right-party contact, 2 billed minutes);
  dpd30 from 11-19 -> rolled forward.
- E5 due 10-25, paid in full 10-28: closed before the period, not in the cohort.

cases 4, contacted 2 (E1 SMS, E4 call), cured 1 -> cure rate 0.25, rolled 2 -> roll rate
0.5, amount at entry 1000 + 500 + 300 + 1500 = 3300.00, recovered 1000 + 100 = 1100.00
-> recovery rate 0.3333; cost 6 x 0.045 + 2 x 0.002 + 2 x 0.10 = 0.4740; first contact
34 h (E1) and 60 h (E4) -> median 47.

Experiment sms/dpd30 (us, en-US): variant a 8 of 20 messages followed by a payment
within 7 days, variant b 2 of 20. Pearson chi-squared = 4.8 (expected 5 and 15 per
cell), 1 degree of freedom: p = erfc(sqrt(2.4)) = 0.028460; Wilson interval of 8/20
from the closed formula.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.engine import Engine

from dispatcher.config import Config
from dispatcher.reports import build_report
from dispatcher.store.events import event_values, insert_events
from dispatcher.store.tables import cases_t, holds_t, messages_t, payments_t

UTC = dt.UTC
NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
CREATED = dt.datetime(2026, 10, 1, 0, 0, tzinfo=UTC)


def at(month: int, day: int, hour: int = 10, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, minute, tzinfo=UTC)


def _case(case_id: str, due: dt.date, amount: str, *, jurisdiction: str = "cn", status: str = "active",
          paid: str = "0.00") -> dict[str, Any]:
    currency, locale = ("CNY", "zh-CN") if jurisdiction == "cn" else ("USD", "en-US")
    return dict(case_id=case_id, name="Test Debtor", jurisdiction=jurisdiction, locale=locale, timezone=None,
                zones="Asia/Shanghai" if jurisdiction == "cn" else "America/New_York", escalated_stages="",
                currency=currency, principal=Decimal(amount), interest=Decimal("0"), penalty=Decimal("0"),
                fees=Decimal("0"), amount_due=Decimal(amount), penalty_rate_daily=None, due_date=due,
                status=status, product="loan", paid_total=Decimal(paid), created_at=CREATED,
                updated_at=CREATED if status == "active" else at(10, 28))


_seq = iter(range(1, 10_000))


def _msg(case_id: str, channel: str, template: str, stage: str, sent: dt.datetime, status: str, *,
         segments: int | None = None, locale: str = "zh-CN", conversation: bool = False,
         answered_by: str | None = None, call_seconds: int | None = None) -> dict[str, Any]:
    n = next(_seq)
    return dict(id=n, case_id=case_id, channel=channel, stage=stage, kind="scheduled", template_id=template,
                variant=template.rsplit("/", 1)[-1], locale=locale, content_hash="x", to_address="x", body="b",
                status=status, idempotency_key=f"k{n}", scheduled_at=sent, created_at=sent, sent_at=sent,
                status_at=sent, attempts=1, conversation=conversation, answered_by=answered_by, segments=segments,
                call_seconds=call_seconds)


def _pay(case_id: str, amount: str, when: dt.datetime) -> dict[str, Any]:
    return dict(case_id=case_id, amount=Decimal(amount), at=when, recorded_by="test")


def _hold(case_id: str, reason: str, placed: dt.datetime, until: dt.datetime | None) -> dict[str, Any]:
    return dict(case_id=case_id, reason=reason, placed_at=placed, until=until, placed_by="test")


def build_history(engine: Engine) -> None:
    cases = [
        _case("E1", dt.date(2026, 10, 31), "1000.00", status="paid", paid="1000.00"),
        _case("E2", dt.date(2026, 10, 31), "500.00", paid="100.00"),
        _case("E3", dt.date(2026, 11, 10), "300.00"),
        _case("E4", dt.date(2026, 10, 20), "2000.00", paid="500.00"),
        _case("E5", dt.date(2026, 10, 25), "700.00", status="paid", paid="700.00"),
    ]
    messages = [
        _msg("E1", "sms", "sms/early/a", "early", at(11, 2), "delivered", segments=2),
        _msg("E1", "email", "email/early/a", "early", at(11, 4), "sent"),
        _msg("E2", "sms", "sms/early/b", "early", at(11, 3), "undelivered", segments=1),
        _msg("E3", "sms", "sms/early/a", "early", at(11, 12), "sent", segments=3),
        _msg("E4", "email", "email/early/a", "early", at(11, 2), "sent"),
        # the call's duration as its final status callback stores it (and its event records it)
        _msg("E4", "voice", "voice/dpd60/a", "early", at(11, 3, 12), "completed", conversation=True,
             answered_by="human", call_seconds=61),
    ]
    payments = [_pay("E1", "1000.00", at(11, 10, 3)), _pay("E2", "100.00", at(11, 5)),
                _pay("E4", "500.00", at(10, 25)), _pay("E5", "700.00", at(10, 28))]
    holds = [_hold("E2", "promise_to_pay", at(11, 4), at(11, 11)),
             _hold("E3", "promise_to_pay", at(11, 20), at(11, 27)),
             _hold("E3", "dispute_hold", at(11, 21), None)]
    events = [
        event_values("case_closed", at(11, 10, 3), case_id="E1", status="paid", reason="paid_in_full"),
        event_values("case_closed", at(10, 28), case_id="E5", status="paid", reason="paid_in_full"),
        event_values("link_clicked", at(11, 4, 11), case_id="E1", message_id=messages[1]["id"]),
        event_values("opted_out", at(11, 6), case_id="E2", channel="sms"),
        event_values("status_received", at(11, 3, 12, 2), case_id="E4", message_id=messages[5]["id"],
                     status="completed", duration="61"),
    ]
    # the experiment: 40 us cases in dpd30 all month (due 09-20: DPD 41 on 11-01)
    for arm, converted in (("a", 8), ("b", 2)):
        for i in range(20):
            case_id = f"X{arm}{i}"
            cases.append(_case(case_id, dt.date(2026, 9, 20), "100.00", jurisdiction="us"))
            sent = at(11, 2 + i % 5, 14)
            messages.append(_msg(case_id, "sms", f"sms/dpd30/{arm}", "dpd30", sent, "delivered", segments=1,
                                 locale="en-US"))
            if i < converted:
                payments.append(_pay(case_id, "10.00", sent + dt.timedelta(days=6, hours=23)))
            elif i == converted:  # a payment 8 days later does not count
                payments.append(_pay(case_id, "10.00", sent + dt.timedelta(days=8)))
    with engine.begin() as conn:
        conn.execute(insert(cases_t), cases)
        conn.execute(insert(messages_t), messages)
        conn.execute(insert(payments_t), payments)
        conn.execute(insert(holds_t), holds)
        insert_events(conn, events)


@pytest.fixture
def report(engine: Engine, config: Config) -> Any:
    build_history(engine)
    return build_report(engine, config, NOW, since=dt.date(2026, 11, 1), until=dt.date(2026, 11, 30))


def _row(report: Any, stage: str, jurisdiction: str) -> Any:
    rows = [s for s in report.stages if s.stage == stage and s.jurisdiction == jurisdiction]
    assert len(rows) == 1, [(s.stage, s.jurisdiction) for s in report.stages]
    return rows[0]


def test_stage_kpis_have_the_known_answers(report: Any) -> None:
    early = _row(report, "early", "cn").as_json()
    assert early["currency"] == "CNY"
    assert early["cases_entered"] == 4
    assert early["contacted"] == 2
    assert early["right_party_contacts"] == 1
    assert early["first_contact_hours_p50"] == 47.0
    assert (early["promises"], early["promises_kept"]) == (2, 1)
    assert (early["cured"], early["rolled_forward"]) == (1, 2)
    assert (early["cure_rate"], early["roll_rate"]) == (0.25, 0.5)
    assert early["amount_at_entry"] == "3300.00"
    assert early["amount_recovered"] == "1100.00"
    assert early["recovery_rate"] == "0.3333"
    assert (early["messages"], early["segments"]) == (6, 6)
    assert early["cost"] == "0.4740"
    assert early["cost_per_recovered"] == "0.0004"
    assert (early["complaints"], early["complaints_per_1000"], early["opt_outs"]) == (1, 500.0, 1)


def test_neighbouring_stages_and_currencies(report: Any) -> None:
    # E2 reached dpd30 on 11-30 (one day), E4 on 11-19: both in the cn dpd30 cohort, neither cured
    dpd30_cn = _row(report, "dpd30", "cn")
    assert (dpd30_cn.cases_entered, dpd30_cn.cured, dpd30_cn.rolled_forward) == (2, 0, 0)
    # E3 was in pre_due 11-07 .. 11-10, then rolled into early
    pre_due = _row(report, "pre_due", "cn")
    assert (pre_due.cases_entered, pre_due.rolled_forward) == (1, 1)
    us = _row(report, "dpd30", "us")
    assert (us.currency, us.cases_entered, us.contacted, us.messages, us.segments) == ("USD", 40, 40, 40, 40)
    assert us.amount_recovered == Decimal("120.00")  # 12 payments of 10.00 while in dpd30 (to 11-18)
    assert us.cost == Decimal("0.3320")  # 40 segments x 0.0083 USD
    assert report.currency == {"cn": ["CNY"], "us": ["USD"]}
    last = _row(report, "dpd90", "us") if any(s.stage == "dpd90" for s in report.stages) else None
    assert last is None


def test_variants_group_by_the_templates_stage_and_email_has_no_delivery_rate(report: Any) -> None:
    by_template = {v.template: v.as_json() for v in report.variants}
    assert by_template["email/early/a"]["delivered"] is None
    assert by_template["email/early/a"]["delivery_rate"] is None
    assert by_template["email/early/a"]["clicks"] == 1
    assert by_template["email/early/a"]["payments_7d"] == 1  # E1 paid 6 days after the e-mail
    assert by_template["sms/early/a"]["delivery_rate"] == 0.5
    # the collector's call used a dpd60 template on an early case: listed once, under dpd60
    voice = by_template["voice/dpd60/a"]
    assert (voice["stage"], voice["off_stage"], voice["delivered"]) == ("dpd60", 1, 1)
    assert sum(1 for v in report.variants if v.template == "voice/dpd60/a") == 1


def test_wilson_interval_and_chi_squared_against_independent_values(report: Any) -> None:
    by_template = {v.template: v for v in report.variants}
    a, b = by_template["sms/dpd30/a"], by_template["sms/dpd30/b"]
    assert (a.sent, a.payments_7d, b.sent, b.payments_7d) == (20, 8, 20, 2)
    z, n, p = 1.959963984540054, 20, 8 / 20
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert a.conversion_ci == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert a.as_json()["conversion_ci"] == [0.2188, 0.6134]
    [experiment] = [e for e in report.experiments if e.stage == "dpd30" and e.channel == "sms"]
    assert experiment.locale == "en-US"
    assert experiment.chi2 == pytest.approx(4.8)
    assert experiment.p_value == pytest.approx(math.erfc(math.sqrt(2.4)), rel=1e-12)
    data = experiment.as_json()
    assert data["p_value"] == 0.02846
    assert (data["leader"], data["significant"]) == ("sms/dpd30/a", True)


def test_a_case_counts_once_among_a_stages_opt_outs(engine: Engine, config: Config) -> None:
    """`opted_out` events are one per channel and per change: a revocation about calls
    ("stop calling") records SMS and voice at once, and a keyword followed days later by a
    revocation phrase or an e-mail unsubscribe records more. The stage counts cases.

    Early stage, cn: E2 opted out of SMS on 11-06 (the history), then of voice in the same
    revocation and of e-mail on 11-08 -> one case; E3 sent STOP on 11-15 and "不要再打"
    on 11-22 (SMS and voice again: the flag had been set back by a collector between) -> one
    case; E5, closed in October and in no cohort, opted out on 11-12 -> not counted.
    dpd30, cn: E2 opted out of voice once more on 11-30, its first day in dpd30 -> 1 there."""
    build_history(engine)
    with engine.begin() as conn:
        insert_events(conn, [
            event_values("opted_out", at(11, 6), case_id="E2", channel="voice", phrase="stop calling"),
            event_values("opted_out", at(11, 8), case_id="E2", channel="email", source="unsubscribe"),
            event_values("opted_out", at(11, 15), case_id="E3", channel="sms", source="sms"),
            event_values("opted_in", at(11, 18), case_id="E3", channel="sms", source="collector"),
            event_values("opted_out", at(11, 22), case_id="E3", channel="sms", phrase="不要再打"),
            event_values("opted_out", at(11, 22), case_id="E3", channel="voice", phrase="不要再打"),
            event_values("opted_out", at(11, 12), case_id="E5", channel="email", source="unsubscribe"),
            event_values("opted_out", at(11, 30, 9), case_id="E2", channel="voice", source="ivr"),
        ])
    report = build_report(engine, config, NOW, since=dt.date(2026, 11, 1), until=dt.date(2026, 11, 30))
    assert _row(report, "early", "cn").opt_outs == 2
    assert _row(report, "dpd30", "cn").opt_outs == 1
    assert _row(report, "pre_due", "cn").opt_outs == 0


def test_balances_are_exact_sums_per_jurisdiction_and_currency(engine: Engine, config: Config) -> None:
    """cn: E1..E5 owe 1000 + 500 + 300 + 2000 + 700 = 4500.00, have paid 1000 + 100 + 500 +
    700 = 2300.00; outstanding 0 + 400 + 300 + 1500 + 0 = 2200.00; E1 and E5 are paid
    (closed): 3 open. O1 (cn, 0.10 due, 0.30 paid: overpaid) adds 0.10 and 0.30 and no
    outstanding. us: the experiment's 40 cases, 100.00 each, nothing recorded as paid."""
    build_history(engine)
    with engine.begin() as conn:
        conn.execute(insert(cases_t), [_case("O1", dt.date(2026, 10, 31), "0.10", paid="0.30")])
    report = build_report(engine, config, NOW, since=dt.date(2026, 11, 1), until=dt.date(2026, 11, 30))
    assert [b.as_json() for b in report.balances] == [
        {"jurisdiction": "cn", "currency": "CNY", "cases": 6, "open_cases": 4, "amount_due": "4500.10",
         "paid_total": "2300.30", "outstanding": "2200.00"},
        {"jurisdiction": "us", "currency": "USD", "cases": 40, "open_cases": 40, "amount_due": "4000.00",
         "paid_total": "0.00", "outstanding": "4000.00"},
    ]


@pytest.fixture
def pg_engine(_pg_migrated: str) -> Iterator[Engine]:
    from dispatcher.store.db import make_engine
    from tests.conftest import _truncate_all

    eng = make_engine(_pg_migrated)
    _truncate_all(eng)
    try:
        yield eng
    finally:
        eng.dispose()


def test_the_readers_share_one_snapshot_while_the_daemon_writes(pg_engine: Engine, config: Config) -> None:
    """On PostgreSQL the report reads through several connections side by side; a case, a
    message and a payment committed after it started (here: just after it exported its
    snapshot, before the other connections joined it) are in none of its figures, so they
    still add up. The next report has them."""
    from sqlalchemy import event

    build_history(pg_engine)
    period = {"since": dt.date(2026, 11, 1), "until": dt.date(2026, 11, 30)}
    before = build_report(pg_engine, config, NOW, **period).as_json()
    backends: set[int] = set()
    written = False

    def late_write(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        nonlocal written
        backends.add(conn.connection.dbapi_connection.info.backend_pid)
        if "pg_export_snapshot" in statement and not written:
            written = True
            with pg_engine.begin() as other:
                other.execute(insert(cases_t), [_case("LATE", dt.date(2026, 10, 31), "900.00")])
                other.execute(insert(messages_t), [_msg("LATE", "sms", "sms/early/a", "early", at(11, 2),
                                                        "delivered", segments=1)])
                other.execute(insert(payments_t), [_pay("LATE", "900.00", at(11, 3))])

    event.listen(pg_engine, "after_cursor_execute", late_write)
    try:
        during = build_report(pg_engine, config, NOW, **period).as_json()
    finally:
        event.remove(pg_engine, "after_cursor_execute", late_write)
    after = build_report(pg_engine, config, NOW, **period).as_json()
    assert written and len(backends) > 1  # the write happened, and more than one connection read
    for report in (before, during, after):
        report.pop("generated_at")
    assert during == before
    assert after != before

    def early_cn(report: dict[str, Any]) -> dict[str, Any]:
        return next(s for s in report["stages"] if s["stage"] == "early" and s["jurisdiction"] == "cn")

    assert early_cn(after)["cases_entered"] == early_cn(before)["cases_entered"] + 1
    assert early_cn(after)["messages"] == early_cn(before)["messages"] + 1
