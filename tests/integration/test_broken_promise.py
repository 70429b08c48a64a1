"""A promise to pay that passes without a payment resumes contact with firmer wording,
until the debtor pays (store + receipts + policy, on SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy.engine import Engine
from test_store_contract import NOW, import_cases, make_case

from dispatcher.config import Config
from dispatcher.domain import Channel, Reason
from dispatcher.policy import Gate
from dispatcher.services.receipts import resume_broken_promises
from dispatcher.store import repository as repo
from dispatcher.store.snapshots import get_snapshot

CATALOG = {(ch, stage, "zh-CN"): (f"{ch.value}/{stage}/v1", f"{ch.value}/{stage}/v2")
           for ch in Channel for stage in ("pre_due", "early", "dpd30", "dpd60", "dpd90")}


def test_broken_promise_gives_firmer_wording_until_a_payment(engine: Engine, config: Config) -> None:
    gate = Gate(config)
    import_cases(engine, make_case("P1"), make_case("K1"))
    promised_until = NOW + dt.timedelta(days=2)
    with engine.begin() as conn:
        repo.place_hold(conn, "P1", Reason.PROMISE_TO_PAY, promised_until, "ivr", NOW)
        repo.place_hold(conn, "K1", Reason.PROMISE_TO_PAY, promised_until, "ivr", NOW)
        repo.record_payment(conn, "K1", Decimal("100.00"), "bank-feed", NOW + dt.timedelta(days=1))

    during = NOW + dt.timedelta(days=1)
    assert [d.reason for d in gate.decide_case(get_snapshot(engine, "P1", during), CATALOG, during)
            if d.channel] == [Reason.PROMISE_TO_PAY, Reason.PROMISE_TO_PAY]

    later = NOW + dt.timedelta(days=3)
    assert resume_broken_promises(engine, later) == 1  # K1 paid: its promise was kept
    broken = get_snapshot(engine, "P1", later)
    kept = get_snapshot(engine, "K1", later)
    assert broken.promise_broken and not broken.holds
    assert not kept.promise_broken and not kept.holds
    firm = {d.channel: d for d in gate.decide_case(broken, CATALOG, later) if d.channel}
    assert firm[Channel.SMS].stage == "dpd30" and firm[Channel.SMS].template.startswith("sms/dpd60/")
    plain = {d.channel: d for d in gate.decide_case(kept, CATALOG, later) if d.channel}
    assert plain[Channel.SMS].template.startswith("sms/dpd30/")

    with engine.begin() as conn:
        repo.record_payment(conn, "P1", Decimal("50.00"), "bank-feed", later + dt.timedelta(hours=1))
    assert not get_snapshot(engine, "P1", later + dt.timedelta(hours=2)).promise_broken
