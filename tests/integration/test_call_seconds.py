"""A call's duration arrives with its final status callback and is kept on the message
(what the provider bills by the started minute; the report's cost reads it there)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.domain import Channel
from dispatcher.services.receipts.status import StatusReceipts, call_seconds
from dispatcher.store.tables import cases_t, messages_t

NOW = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(("given", "seconds"), [
    ("61", 61), ("0", 0), (None, None), ("", None), ("12s", None), ("-3", None), ("1.5", None),
    ("١٢", None),  # Arabic-Indic digits are digits to str.isdigit, not to a provider
    ("1234567890", None),
])
def test_a_duration_is_plain_digits(given: str | None, seconds: int | None) -> None:
    assert call_seconds(given) == seconds


def _calls(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(cases_t), [{
            "case_id": "V1", "name": "Call Duration", "jurisdiction": "us", "locale": "en-US", "currency": "USD",
            "principal": Decimal("100.00"), "interest": Decimal("0.00"), "penalty": Decimal("0.00"),
            "fees": Decimal("0.00"), "amount_due": Decimal("100.00"), "paid_total": Decimal("0.00"),
            "due_date": dt.date(2026, 10, 1), "status": "active", "product": "other", "zones": "America/New_York",
            "escalated_stages": "", "created_at": NOW, "updated_at": NOW}])
        conn.execute(insert(messages_t), [
            {"case_id": "V1", "channel": channel, "kind": "scheduled", "status": "sent", "provider_id": sid,
             "idempotency_key": sid, "scheduled_at": NOW, "created_at": NOW, "sent_at": NOW,
             "to_address": "+12025550100"}
            for channel, sid in (("voice", "CA1"), ("voice", "CA2"), ("sms", "SM1"))])


def _seconds(engine: Engine) -> dict[str, int | None]:
    with engine.connect() as conn:
        return dict(conn.execute(select(messages_t.c.provider_id, messages_t.c.call_seconds)).all())


def test_the_final_status_keeps_the_calls_duration(engine: Engine) -> None:
    _calls(engine)
    receipts = StatusReceipts(engine, FakeClock(NOW))
    try:
        receipts.apply(Channel.VOICE, "CA1", "in-progress")
        assert _seconds(engine)["CA1"] is None
        outcome = receipts.apply(Channel.VOICE, "CA1", "completed", answered_by="human", duration="61")
        assert outcome.result == "applied"
        # a duplicate of the final callback changes nothing (it is not applied again)
        assert receipts.apply(Channel.VOICE, "CA1", "completed", duration="5").result == "stale"
        receipts.apply(Channel.VOICE, "CA2", "no-answer", duration="0")
        receipts.apply(Channel.SMS, "SM1", "delivered", duration="30")  # an SMS has no duration
        assert _seconds(engine) == {"CA1": 61, "CA2": 0, "SM1": None}
    finally:
        receipts.sql.close()


async def test_the_event_loop_path_keeps_it_too(engine: Engine) -> None:
    _calls(engine)
    receipts = StatusReceipts(engine, FakeClock(NOW))
    try:
        await receipts.apply_async(Channel.VOICE, "CA1", "ringing")
        await receipts.apply_async(Channel.VOICE, "CA1", "completed", answered_by="human", duration="125")
        await receipts.apply_async(Channel.VOICE, "CA2", "completed", duration="junk")
        assert _seconds(engine) == {"CA1": 125, "CA2": None, "SM1": None}
    finally:
        await receipts.sql.aclose()
