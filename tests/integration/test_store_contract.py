"""The store's contract suite: the same assertions on SQLite and on PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from dispatcher.domain import (
    Case,
    CaseStatus,
    Channel,
    ContactPoint,
    Hold,
    MessageStatus,
    Product,
    Reason,
)
from dispatcher.store import repository as repo
from dispatcher.store.repository import CaseNotFound, ImportedCase
from dispatcher.store.snapshots import case_row_to_domain, get_snapshot, iter_snapshots
from dispatcher.store.tables import (
    cases_t,
    contacts_t,
    escalations_t,
    events_t,
    holds_t,
    messages_t,
    payments_t,
)
from dispatcher.store.timeline import case_timeline
from dispatcher.store.values import cents

NOW = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)
SHANGHAI = dt.timezone(dt.timedelta(hours=8))


def make_case(case_id: str, **overrides: Any) -> ImportedCase:
    consents = {k: overrides.pop(k) for k in ("sms_consent", "email_consent", "voice_consent") if k in overrides}
    zones = overrides.pop("zones", ("Asia/Shanghai",))
    values: dict[str, Any] = {
        "case_id": case_id,
        "name": "Zhang Wei",
        "jurisdiction": "cn",
        "locale": "zh-CN",
        "currency": "CNY",
        "principal": Decimal("1000.00"),
        "interest": Decimal("20.50"),
        "penalty": Decimal("5.25"),
        "fees": Decimal("0.00"),
        "amount_due": Decimal("1025.75"),
        "due_date": dt.date(2026, 11, 7),
        "phone": "+8613812345678",
        "email": "debtor@example.com",
        "penalty_rate_daily": Decimal("0.0005"),
    }
    values.update(overrides)
    return ImportedCase(
        case=Case(**values),
        zones=zones,
        sms_consent=consents.get("sms_consent", True),
        email_consent=consents.get("email_consent", True),
        voice_consent=consents.get("voice_consent", True),
    )


def add_message(conn: Connection, case_id: str, channel: str, status: str, scheduled_at: dt.datetime,
                **extra: Any) -> int:
    values = {
        "case_id": case_id,
        "channel": channel,
        "stage": "dpd30",
        "kind": "scheduled",
        "template_id": f"{channel}/dpd30/v1",
        "status": status,
        "idempotency_key": f"{case_id}:{channel}:{scheduled_at.isoformat()}:{status}",
        "scheduled_at": scheduled_at,
        "created_at": scheduled_at,
        "attempts": 0,
        "conversation": False,
        **extra,
    }
    return int(conn.execute(insert(messages_t).values(**values)).inserted_primary_key[0])


def events_of(conn: Connection, case_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    query = select(events_t).where(events_t.c.case_id == case_id).order_by(events_t.c.id)
    if kind:
        query = query.where(events_t.c.kind == kind)
    return [{"kind": e.kind, "actor": e.actor, "message_id": e.message_id, **json.loads(e.data)}
            for e in conn.execute(query)]


def import_cases(engine: Engine, *cases: ImportedCase, now: dt.datetime = NOW) -> tuple[int, int]:
    with engine.begin() as conn:
        return repo.upsert_cases(conn, list(cases), now)


def contact(engine: Engine, case_id: str, channel: Channel) -> ContactPoint:
    snapshot = get_snapshot(engine, case_id, NOW)
    return next(c for c in snapshot.contacts if c.channel is channel)


# ------------------------------------------------------------------------------ upsert


def test_upsert_counts_inserts_and_updates(engine: Engine) -> None:
    assert import_cases(engine, make_case("A1"), make_case("A2"), make_case("A3")) == (3, 0)
    assert import_cases(engine, make_case("A2", name="Li Na"), make_case("A3"), make_case("A4")) == (1, 2)
    # the same id twice in one batch: applied once (last wins), counted as an update the second time
    assert import_cases(engine, make_case("A5", name="First"), make_case("A5", name="Second")) == (1, 1)

    assert get_snapshot(engine, "A2", NOW).case.name == "Li Na"
    assert get_snapshot(engine, "A5", NOW).case.name == "Second"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(cases_t)).scalar() == 5
        assert conn.execute(select(func.count()).select_from(contacts_t)).scalar() == 15
        assert [e["kind"] for e in events_of(conn, "A2")] == ["case_imported", "case_updated"]
        assert [e["kind"] for e in events_of(conn, "A5")] == ["case_imported", "case_updated"]
        assert events_of(conn, "A1")[0]["actor"] == "import"
    assert import_cases(engine) == (0, 0)


def test_case_round_trips_to_the_domain(engine: Engine) -> None:
    imported = make_case("RT-1", timezone="Asia/Shanghai", status=CaseStatus.ACTIVE, product=Product.LOAN)
    import_cases(engine, imported)
    snapshot = get_snapshot(engine, "RT-1", NOW)
    assert snapshot.case == imported.case
    assert snapshot.zones == ("Asia/Shanghai",)
    assert snapshot.escalated_stages == frozenset()
    assert set(snapshot.contacts) == {
        ContactPoint(Channel.SMS, "+8613812345678", True),
        ContactPoint(Channel.VOICE, "+8613812345678", True),
        ContactPoint(Channel.EMAIL, "debtor@example.com", True),
    }


def test_case_without_addresses_has_empty_contact_points(engine: Engine) -> None:
    import_cases(engine, make_case("NA-1", phone=None, email=None, email_consent=False))
    snapshot = get_snapshot(engine, "NA-1", NOW)
    assert snapshot.case.phone is None and snapshot.case.email is None
    assert {(c.channel, c.address, c.consent) for c in snapshot.contacts} == {
        (Channel.SMS, None, True),
        (Channel.VOICE, None, True),
        (Channel.EMAIL, None, False),
    }


@pytest.mark.parametrize(
    "amounts",
    [
        ("0.01", "0.01", "0.01", "0.00", "0.03"),
        ("12345678.99", "0.01", "0.00", "0.00", "12345679.00"),
        ("9999999999.99", "0.00", "0.00", "0.00", "9999999999.99"),
        ("0.10", "0.20", "0.00", "0.00", "0.30"),
    ],
)
def test_money_is_exact(engine: Engine, amounts: tuple[str, ...]) -> None:
    principal, interest, penalty, fees, due = (Decimal(a) for a in amounts)
    import_cases(
        engine,
        make_case("M-1", principal=principal, interest=interest, penalty=penalty, fees=fees, amount_due=due,
                  penalty_rate_daily=Decimal("0.00012345")),
    )
    case = get_snapshot(engine, "M-1", NOW).case
    assert (case.principal, case.interest, case.penalty, case.fees, case.amount_due) == (
        principal, interest, penalty, fees, due)
    # the same text on every backend, not just equal values
    assert [str(v) for v in (case.principal, case.interest, case.penalty, case.fees, case.amount_due)] == list(amounts)
    assert case.principal + case.interest + case.penalty + case.fees == case.amount_due
    assert str(case.penalty_rate_daily) == "0.00012345"


def test_payments_of_a_cent_add_up_exactly(engine: Engine) -> None:
    import_cases(engine, make_case("P-C", principal=Decimal("0.03"), interest=Decimal(0), penalty=Decimal(0),
                                   amount_due=Decimal("0.03")))
    outcomes = []
    for _ in range(3):
        with engine.begin() as conn:
            outcomes.append(repo.record_payment(conn, "P-C", Decimal("0.01"), "cashier", NOW))
    assert [str(o.paid_total) for o in outcomes] == ["0.01", "0.02", "0.03"]
    assert [o.closed for o in outcomes] == [False, False, True]
    with engine.connect() as conn:
        assert case_timeline(conn, "P-C")["paid_total"] == "0.03"
        amounts = conn.execute(select(payments_t.c.amount)).scalars().all()
    assert sum(amounts, Decimal(0)) == Decimal("0.03")


def test_datetimes_come_back_aware_utc(engine: Engine) -> None:
    import_cases(engine, make_case("T-1"))
    until = dt.datetime(2026, 12, 10, 21, 30, 15, 123456, tzinfo=SHANGHAI)
    with engine.begin() as conn:
        repo.place_hold(conn, "T-1", Reason.COLLECTOR_HOLD, until, "agent7", NOW)
    with engine.connect() as conn:
        (hold,) = repo.active_holds(conn, "T-1", NOW)
        placed_at = conn.execute(select(holds_t.c.placed_at)).scalar_one()
    assert hold.until == until
    assert hold.until.utcoffset() == dt.timedelta(0)
    assert hold.until.isoformat() == "2026-12-10T13:30:15.123456+00:00"
    assert placed_at == NOW and placed_at.tzinfo is not None


def test_naive_datetimes_are_refused(engine: Engine) -> None:
    with engine.connect() as conn, pytest.raises(Exception, match="naive datetime"):
        repo.upsert_cases(conn, [make_case("T-2")], dt.datetime(2026, 12, 7, 2, 0))
        conn.rollback()


# ------------------------------------------------------------------------------- holds


def test_holds_place_expire_and_release(engine: Engine) -> None:
    import_cases(engine, make_case("H-1"))
    with engine.begin() as conn:
        repo.place_hold(conn, "H-1", Reason.DISPUTE_HOLD, None, "agent", NOW, note="says not theirs")
        repo.place_hold(conn, "H-1", "payment_claimed", NOW + dt.timedelta(days=3), "sms", NOW)
        repo.place_hold(conn, "H-1", Reason.COLLECTOR_HOLD, NOW + dt.timedelta(hours=1), "agent", NOW)
    later = NOW + dt.timedelta(days=1)
    with engine.connect() as conn:
        assert repo.active_holds(conn, "H-1", NOW) == [
            Hold(Reason.DISPUTE_HOLD, None),
            Hold(Reason.PAYMENT_CLAIMED, NOW + dt.timedelta(days=3)),
            Hold(Reason.COLLECTOR_HOLD, NOW + dt.timedelta(hours=1)),
        ]
        # the collector hold has expired a day later
        assert [h.reason for h in repo.active_holds(conn, "H-1", later)] == [
            Reason.DISPUTE_HOLD, Reason.PAYMENT_CLAIMED]
    assert [h.reason for h in get_snapshot(engine, "H-1", later).holds] == [
        Reason.DISPUTE_HOLD, Reason.PAYMENT_CLAIMED]

    with engine.begin() as conn:
        assert repo.release_holds(conn, "H-1", Reason.DISPUTE_HOLD, "supervisor", later) == 1
        assert repo.release_holds(conn, "H-1", Reason.DISPUTE_HOLD, "supervisor", later) == 0
        assert [h.reason for h in repo.active_holds(conn, "H-1", later)] == [Reason.PAYMENT_CLAIMED]
        assert repo.release_holds(conn, "H-1", None, "supervisor", later) == 1
        assert repo.active_holds(conn, "H-1", later) == []
        kinds = [(e["kind"], e["reason"]) for e in events_of(conn, "H-1") if e["kind"].startswith("hold")]
    assert kinds == [
        ("hold_placed", "dispute_hold"),
        ("hold_placed", "payment_claimed"),
        ("hold_placed", "collector_hold"),
        ("hold_released", "dispute_hold"),
        ("hold_released", "payment_claimed"),
    ]
    assert get_snapshot(engine, "H-1", later).holds == ()


def test_place_hold_through_an_orm_session(engine: Engine) -> None:
    import_cases(engine, make_case("H-2"))
    with Session(engine) as session:
        repo.place_hold(session, "H-2", Reason.LEGAL_HOLD, None, "legal", NOW)
        session.commit()
    with engine.connect() as conn:
        assert repo.active_holds(conn, "H-2", NOW) == [Hold(Reason.LEGAL_HOLD)]


def test_hold_errors(engine: Engine) -> None:
    import_cases(engine, make_case("H-3"))
    with engine.connect() as conn:
        with pytest.raises(CaseNotFound, match="no such case: 'NOPE'.*import it first"):
            repo.place_hold(conn, "NOPE", Reason.COLLECTOR_HOLD, None, "agent", NOW)
        with pytest.raises(ValueError, match="not one of: cease_communication, dispute_hold"):
            repo.place_hold(conn, "H-3", "vacation", None, "agent", NOW)
        with pytest.raises(ValueError, match="not one of"):
            repo.place_hold(conn, "H-3", Reason.DUE, None, "agent", NOW)
        with pytest.raises(CaseNotFound):
            repo.release_holds(conn, "NOPE", None, "agent", NOW)
        with pytest.raises(CaseNotFound):
            repo.active_holds(conn, "NOPE", NOW)
        conn.rollback()


# ---------------------------------------------------------------------------- payments


def test_payment_closes_the_case_and_cancels_queued_messages(engine: Engine) -> None:
    import_cases(engine, make_case("P-1"), make_case("P-2"))
    with engine.begin() as conn:
        queued_sms = add_message(conn, "P-1", "sms", "queued", NOW + dt.timedelta(hours=1))
        queued_email = add_message(conn, "P-1", "email", "queued", NOW + dt.timedelta(days=1))
        in_flight = add_message(conn, "P-1", "voice", "sending", NOW)
        sent = add_message(conn, "P-1", "sms", "sent", NOW - dt.timedelta(days=5), sent_at=NOW - dt.timedelta(days=5))
        other_case = add_message(conn, "P-2", "sms", "queued", NOW + dt.timedelta(hours=1))

    with engine.begin() as conn:
        partial = repo.record_payment(conn, "P-1", Decimal("25.75"), "cashier", NOW)
    assert partial == repo.PaymentOutcome("P-1", Decimal("25.75"), Decimal("25.75"), Decimal("1025.75"),
                                          CaseStatus.ACTIVE, False, ())

    with engine.begin() as conn:
        full = repo.record_payment(conn, "P-1", Decimal("1000.00"), "cashier", NOW + dt.timedelta(minutes=5))
    assert full.closed and full.status is CaseStatus.PAID
    assert str(full.paid_total) == "1025.75"
    assert full.cancelled_message_ids == tuple(sorted((queued_sms, queued_email)))

    with engine.connect() as conn:
        statuses = dict(conn.execute(select(messages_t.c.id, messages_t.c.status)).all())
        assert statuses == {queued_sms: "cancelled", queued_email: "cancelled", in_flight: "sending",
                            sent: "sent", other_case: "queued"}
        kinds = [e["kind"] for e in events_of(conn, "P-1")]
        assert kinds == ["case_imported", "payment_recorded", "payment_recorded", "case_closed",
                         "message_cancelled", "message_cancelled"]
        cancelled_events = events_of(conn, "P-1", "message_cancelled")
        assert {e["message_id"] for e in cancelled_events} == {queued_sms, queued_email}
        assert all(e["reason"] == "case_closed" for e in cancelled_events)
    assert get_snapshot(engine, "P-1", NOW).case.status is CaseStatus.PAID

    # an overpayment on a closed case is recorded; nothing is closed twice
    with engine.begin() as conn:
        extra = repo.record_payment(conn, "P-1", Decimal("1"), "cashier", NOW + dt.timedelta(minutes=6))
    assert (extra.closed, extra.status, str(extra.paid_total), str(extra.amount)) == (
        False, CaseStatus.PAID, "1026.75", "1.00")
    with engine.connect() as conn:
        amounts = conn.execute(select(payments_t.c.amount).order_by(payments_t.c.id)).scalars().all()
    assert [str(cents(a)) for a in amounts] == ["25.75", "1000.00", "1.00"]


def test_payment_errors(engine: Engine) -> None:
    import_cases(engine, make_case("P-3"))
    with engine.connect() as conn:
        with pytest.raises(CaseNotFound):
            repo.record_payment(conn, "NOPE", Decimal("1"), "cashier", NOW)
        for bad in (Decimal("0"), Decimal("-5"), Decimal("1.001"), Decimal("NaN")):
            with pytest.raises(ValueError, match="positive amount with at most 2 decimals"):
                repo.record_payment(conn, "P-3", bad, "cashier", NOW)
        with pytest.raises(TypeError, match="Decimal"):
            repo.record_payment(conn, "P-3", 1.5, "cashier", NOW)  # type: ignore[arg-type]
        conn.rollback()


def test_reimport_preserves_paid_total_and_keeps_a_paid_case_closed(engine: Engine) -> None:
    import_cases(engine, make_case("P-4"))
    with engine.begin() as conn:
        repo.record_payment(conn, "P-4", Decimal("1025.75"), "cashier", NOW)
    # the bank's next export still says active with the same amount due
    assert import_cases(engine, make_case("P-4")) == (0, 1)
    with engine.connect() as conn:
        timeline = case_timeline(conn, "P-4")
    assert (timeline["status"], timeline["paid_total"]) == ("paid", "1025.75")
    # a larger amount due (new charges) reopens it
    import_cases(engine, make_case("P-4", penalty=Decimal("105.25"), amount_due=Decimal("1125.75")))
    with engine.connect() as conn:
        timeline = case_timeline(conn, "P-4")
    assert (timeline["status"], timeline["paid_total"]) == ("active", "1025.75")


# ----------------------------------------------------------------- opt-out and invalid


def test_opt_out_by_address_applies_to_every_case_with_it(engine: Engine) -> None:
    shared = "+8613900000001"
    import_cases(engine, make_case("O-1", phone=shared), make_case("O-2", phone=shared), make_case("O-3"))
    with engine.begin() as conn:
        assert repo.set_opt_out(conn, Channel.SMS, shared, True, NOW, "inbound_sms") == ["O-1", "O-2"]
        # repeating it is harmless and records nothing new
        assert repo.set_opt_out(conn, "sms", shared, True, NOW, "inbound_sms") == ["O-1", "O-2"]
        assert [e["source"] for e in events_of(conn, "O-1", "opted_out")] == ["inbound_sms"]
        assert events_of(conn, "O-1", "opted_out")[0]["channel"] == "sms"
    for case_id in ("O-1", "O-2"):
        assert contact(engine, case_id, Channel.SMS).opted_out
        assert not contact(engine, case_id, Channel.VOICE).opted_out  # sms only
    assert not contact(engine, "O-3", Channel.SMS).opted_out
    with engine.begin() as conn:
        assert repo.set_opt_out(conn, Channel.SMS, "+10000000000", True, NOW, "inbound_sms") == []
        assert repo.set_opt_out(conn, Channel.SMS, shared, False, NOW, "inbound_sms") == ["O-1", "O-2"]
        assert len(events_of(conn, "O-2", "opted_in")) == 1
    assert not contact(engine, "O-1", Channel.SMS).opted_out


def test_email_opt_out_matches_case_insensitively(engine: Engine) -> None:
    import_cases(engine, make_case("O-4", email="debtor@example.com"))
    with engine.begin() as conn:
        assert repo.set_opt_out(conn, Channel.EMAIL, " Debtor@Example.COM ", True, NOW, "unsubscribe") == ["O-4"]
    assert contact(engine, "O-4", Channel.EMAIL).opted_out


def test_reimport_keeps_flags_of_an_unchanged_address_and_resets_a_changed_one(engine: Engine) -> None:
    import_cases(engine, make_case("F-1", phone="+8613900000002", email="a@example.com"))
    with engine.begin() as conn:
        repo.set_opt_out(conn, Channel.SMS, "+8613900000002", True, NOW, "inbound_sms")
        assert repo.mark_address_invalid(conn, Channel.EMAIL, "a@example.com", NOW) == ["F-1"]
        assert repo.mark_address_invalid(conn, "email", "a@example.com", NOW) == []  # already invalid
        assert len(events_of(conn, "F-1", "address_invalid")) == 1

    # same addresses: flags stay (even with the consent changed)
    import_cases(engine, make_case("F-1", phone="+8613900000002", email="a@example.com", sms_consent=False))
    sms, email = contact(engine, "F-1", Channel.SMS), contact(engine, "F-1", Channel.EMAIL)
    assert (sms.opted_out, sms.consent, email.invalid) == (True, False, True)

    # new addresses: both flags reset
    import_cases(engine, make_case("F-1", phone="+8613900000003", email="b@example.com"))
    sms, email = contact(engine, "F-1", Channel.SMS), contact(engine, "F-1", Channel.EMAIL)
    assert (sms.address, sms.opted_out, email.address, email.invalid) == (
        "+8613900000003", False, "b@example.com", False)


def test_an_address_opted_out_elsewhere_stays_opted_out_on_import(engine: Engine) -> None:
    import_cases(engine, make_case("F-2", phone="+8613900000004"))
    with engine.begin() as conn:
        repo.set_opt_out(conn, Channel.SMS, "+8613900000004", True, NOW, "inbound_sms")
    # a new case with that number, and an old one moving to it
    import_cases(engine, make_case("F-3", phone="+8613900000004"), make_case("F-4"))
    import_cases(engine, make_case("F-4", phone="+8613900000004"))
    for case_id in ("F-3", "F-4"):
        assert contact(engine, case_id, Channel.SMS).opted_out
        assert not contact(engine, case_id, Channel.VOICE).opted_out


# -------------------------------------------------------------------------- escalation


def test_escalation_is_idempotent_and_survives_reimport(engine: Engine) -> None:
    import_cases(engine, make_case("E-1"))
    with engine.begin() as conn:
        assert repo.mark_escalated(conn, "E-1", "dpd90", NOW) is True
    with engine.begin() as conn:
        assert repo.mark_escalated(conn, "E-1", "dpd90", NOW + dt.timedelta(days=1)) is False
        assert repo.mark_escalated(conn, "E-1", "dpd120", NOW) is True
    with engine.begin() as conn:
        with pytest.raises(CaseNotFound):
            repo.mark_escalated(conn, "NOPE", "dpd90", NOW)
        assert [e["stage"] for e in events_of(conn, "E-1", "escalated")] == ["dpd90", "dpd120"]
        assert conn.execute(select(func.count()).select_from(escalations_t)).scalar() == 2
    assert get_snapshot(engine, "E-1", NOW).escalated_stages == {"dpd90", "dpd120"}
    import_cases(engine, make_case("E-1", name="Renamed"))
    snapshot = get_snapshot(engine, "E-1", NOW)
    assert snapshot.escalated_stages == {"dpd90", "dpd120"}
    assert snapshot.case.name == "Renamed"


# --------------------------------------------------------------------------- snapshots


def test_iter_snapshots_streams_every_case_in_batches_with_history(engine: Engine) -> None:
    n = 53
    import_cases(engine, *(make_case(f"S-{i:03d}", zones=("Asia/Shanghai", "Asia/Urumqi")) for i in range(n)))
    with engine.begin() as conn:
        for i in range(0, n, 5):
            case_id = f"S-{i:03d}"
            add_message(conn, case_id, "sms", "delivered", NOW - dt.timedelta(days=90),
                        sent_at=NOW - dt.timedelta(days=90))  # outside the 60-day window
            add_message(conn, case_id, "sms", "delivered", NOW - dt.timedelta(days=10),
                        sent_at=NOW - dt.timedelta(days=9, hours=23))
            add_message(conn, case_id, "voice", "completed", NOW - dt.timedelta(days=2),
                        sent_at=NOW - dt.timedelta(days=2), conversation=True, answered_by="human")
            add_message(conn, case_id, "email", "queued", NOW + dt.timedelta(days=1))
        repo.place_hold(conn, "S-007", Reason.PROMISE_TO_PAY, NOW + dt.timedelta(days=7), "ivr", NOW)
        repo.place_hold(conn, "S-008", Reason.COLLECTOR_HOLD, NOW - dt.timedelta(days=1), "agent",
                        NOW - dt.timedelta(days=2))  # expired
        repo.mark_escalated(conn, "S-052", "dpd90", NOW)

    snapshots = list(iter_snapshots(engine, batch_size=7, now=NOW))
    assert [s.case.case_id for s in snapshots] == [f"S-{i:03d}" for i in range(n)]
    by_id = {s.case.case_id: s for s in snapshots}
    s0 = by_id["S-000"]
    assert [(m.channel, m.status, m.at) for m in s0.history] == [
        (Channel.SMS, MessageStatus.DELIVERED, NOW - dt.timedelta(days=9, hours=23)),
        (Channel.VOICE, MessageStatus.COMPLETED, NOW - dt.timedelta(days=2)),
        (Channel.EMAIL, MessageStatus.QUEUED, NOW + dt.timedelta(days=1)),
    ]
    assert s0.history[1].conversation and not s0.history[0].conversation
    # the call's AnsweredBy reaches the policy (connected_per_day counts calls a person answered)
    assert [m.answered_by for m in s0.history] == [None, "human", None]
    assert s0.history[0].template == "sms/dpd30/v1" and s0.history[0].stage == "dpd30"
    assert all(m.message_id is not None for m in s0.history)
    assert all(m.at.tzinfo is not None for m in s0.history)
    assert by_id["S-001"].history == ()
    assert by_id["S-007"].holds == (Hold(Reason.PROMISE_TO_PAY, NOW + dt.timedelta(days=7)),)
    assert by_id["S-008"].holds == ()
    assert by_id["S-052"].escalated_stages == {"dpd90"}
    assert all(s.zones == ("Asia/Shanghai", "Asia/Urumqi") for s in snapshots)
    assert all(len(s.contacts) == 3 for s in snapshots)
    # a shorter history window
    short = next(iter_snapshots(engine, case_ids=["S-000"], history_days=5, now=NOW))
    assert [m.channel for m in short.history] == [Channel.VOICE, Channel.EMAIL]


def test_iter_snapshots_named_cases(engine: Engine) -> None:
    import_cases(engine, *(make_case(f"N-{i}") for i in range(10)))
    got = [s.case.case_id for s in iter_snapshots(engine, case_ids=["N-7", "N-2", "N-7", "MISSING", "N-9"],
                                                        batch_size=2, now=NOW)]
    assert got == ["N-2", "N-7", "N-9"]
    with engine.connect() as conn:
        assert repo.missing_case_ids(conn, ["N-1", "MISSING", "N-3", "ALSO"]) == ["MISSING", "ALSO"]
    with pytest.raises(CaseNotFound, match="MISSING"):
        get_snapshot(engine, "MISSING", NOW)
    assert list(iter_snapshots(engine, case_ids=[], now=NOW)) == []


def test_iter_snapshots_on_an_empty_store(engine: Engine) -> None:
    assert list(iter_snapshots(engine, now=NOW)) == []


def test_iter_snapshots_holds_one_batch_at_a_time(engine: Engine) -> None:
    """Consuming lazily: the generator has read only the first batch when the first
    snapshot arrives, so cases imported meanwhile behind it still show up."""
    import_cases(engine, *(make_case(f"L-{i:02d}") for i in range(10)))
    stream = iter_snapshots(engine, batch_size=4, now=NOW)
    try:
        assert next(stream).case.case_id == "L-00"
        import_cases(engine, make_case("L-99"))
        rest = [s.case.case_id for s in stream]
    finally:
        stream.close()
    assert rest[-1] == "L-99" and len(rest) == 10


# ---------------------------------------------------------------------------- timeline


def test_case_timeline_shape(engine: Engine) -> None:
    import_cases(engine, make_case("TL-1"))
    with engine.begin() as conn:
        sent = add_message(conn, "TL-1", "sms", "delivered", NOW - dt.timedelta(days=1),
                           sent_at=NOW - dt.timedelta(days=1), provider_id="SM123", body="Please pay 1025.75")
        queued = add_message(conn, "TL-1", "email", "queued", NOW + dt.timedelta(hours=2))
        repo.place_hold(conn, "TL-1", Reason.PAYMENT_CLAIMED, NOW + dt.timedelta(days=3), "sms", NOW)
        repo.place_hold(conn, "TL-1", Reason.COLLECTOR_HOLD, NOW - dt.timedelta(hours=1), "agent",
                        NOW - dt.timedelta(days=1))
        repo.record_payment(conn, "TL-1", Decimal("25.75"), "cashier", NOW + dt.timedelta(minutes=1))
    with engine.connect() as conn:
        timeline = case_timeline(conn, "TL-1", now=NOW)
        everything = case_timeline(conn, "TL-1")
        with pytest.raises(CaseNotFound):
            case_timeline(conn, "NOPE")
    json.dumps(timeline)  # serialisable as is
    assert timeline["case_id"] == "TL-1" and timeline["status"] == "active"
    assert timeline["holds"][0]["reason"] == "payment_claimed"
    assert timeline["holds"][0]["until"] == (NOW + dt.timedelta(days=3)).isoformat()
    assert [h["reason"] for h in timeline["holds"]] == ["payment_claimed"]  # the expired one is gone
    assert [h["reason"] for h in everything["holds"]] == ["collector_hold", "payment_claimed"]
    assert [{k: m[k] for k in ("id", "channel", "template", "status", "provider_id", "body")}
            for m in timeline["messages"]] == [
        {"id": sent, "channel": "sms", "template": "sms/dpd30/v1", "status": "delivered", "provider_id": "SM123",
         "body": "Please pay 1025.75"},
        {"id": queued, "channel": "email", "template": "email/dpd30/v1", "status": "queued", "provider_id": None,
         "body": None},
    ]
    kinds = [e["kind"] for e in timeline["events"]]
    # oldest first: the collector hold was placed a day before everything else
    assert kinds == ["hold_placed", "case_imported", "hold_placed", "payment_recorded"]
    ats = [e["at"] for e in timeline["events"]]
    assert ats == sorted(ats, key=dt.datetime.fromisoformat)
    payment = timeline["events"][-1]
    assert (payment["amount"], payment["paid_total"], payment["actor"]) == ("25.75", "25.75", "cashier")


def test_case_is_frozen_domain_object(engine: Engine) -> None:
    import_cases(engine, make_case("FZ-1"))
    case = get_snapshot(engine, "FZ-1", NOW).case
    with pytest.raises(dataclasses.FrozenInstanceError):
        case.name = "x"  # type: ignore[misc]
    with engine.connect() as conn:
        row = conn.execute(select(cases_t).where(cases_t.c.case_id == "FZ-1")).one()
    assert case_row_to_domain(row, phone="+8613812345678", email="debtor@example.com") == case


def test_iter_snapshots_many_named_cases(engine: Engine) -> None:
    """Named ids are read in chunks (the list is bound once per joined table)."""
    n = 2500
    import_cases(engine, *(make_case(f"K-{i:05d}", phone=None, email=None) for i in range(n)))
    wanted = [f"K-{i:05d}" for i in range(n)] + ["K-missing"]
    got = [s.case.case_id for s in iter_snapshots(engine, case_ids=wanted, batch_size=20_000, now=NOW)]
    assert got == sorted(wanted[:-1])
