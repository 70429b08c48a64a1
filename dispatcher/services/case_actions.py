"""What a collector does to a case (SPEC section 14): record a payment, place and release
holds, take a promise to pay, write a note. Shared by the HTTP API and the console.

Each action is one transaction and at least one event on the case with `by` = the
person (`payment_recorded`, `hold_placed`, `hold_released`, `note_added`). Dates a person
gives are days in the debtor's primary zone (SPEC 11): a hold "until 2026-12-20" and a
promise "by 2026-12-20" end at 00:00 local time of that date. Who may do what is the
caller's check (`web.auth`); `release_needs` tells it what releasing a hold needs.

The answers are plain JSON-able dicts: the API returns them as they are.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy.engine import Connection, Engine

from dispatcher.clock import Clock
from dispatcher.config import Config
from dispatcher.domain import Reason
from dispatcher.policy.zones import (
    PersonDateError,
    local_date,
    parse_person_date,
    primary_zone,
    promise_hold_until,
    promise_window,
)
from dispatcher.roles import Permission, release_permission
from dispatcher.store import repository
from dispatcher.store.events import EventKind, record_event

#: The hold reasons a person places by hand (a promise has its own action; a payment
#: claim comes from the debtor's PAID reply).
PLACEABLE_HOLDS = (Reason.COLLECTOR_HOLD, Reason.LEGAL_HOLD, Reason.DISPUTE_HOLD, Reason.CEASE_COMMUNICATION)
NOTE_MAX = 4000
HOLD_NOTE_MAX = 500


class ActionRefused(ValueError):
    """The action cannot be done as asked; the message says what to send instead."""


def clean_text(text: str, field: str) -> str:
    """Free text a person wrote (a note), trimmed; control characters other than line
    breaks and tabs are refused (PostgreSQL cannot store NUL, and none belongs in a note)."""
    text = text.strip()
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\r\t" for ch in text):
        raise ActionRefused(f"{field} contains control characters; send plain text")
    return text


def _zone(conn: Connection, config: Config, case_id: str) -> str:
    jurisdiction, zones = repository.case_zones(conn, case_id)
    return primary_zone(zones, config.jurisdictions.get(jurisdiction))


def parse_amount(value: object) -> Decimal:
    """An amount from JSON: a string or a number, positive, at most 2 decimals."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ActionRefused('send {"amount": "120.50"}: a positive amount with at most 2 decimals')
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ActionRefused(f"amount {value!r} is not a number; send e.g. \"120.50\"") from None
    if not amount.is_finite() or amount <= 0 or amount != amount.quantize(Decimal("0.01")):
        raise ActionRefused(f"amount {value} must be positive with at most 2 decimals, e.g. \"120.50\"")
    return amount


class CaseActions:
    """Thread-safe (each call uses its own connection)."""

    def __init__(self, engine: Engine, config: Config, clock: Clock) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock

    def payment(self, case_id: str, amount: Decimal, by: str) -> dict[str, Any]:
        """Record a payment (a fully paid case closes, its queued messages are cancelled)."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            out = repository.record_payment(conn, case_id, amount, by, now)
        return {"case_id": case_id, "amount": str(out.amount), "paid_total": str(out.paid_total),
                "outstanding": str(max(out.amount_due - out.paid_total, Decimal("0.00"))),
                "status": out.status.value, "closed": out.closed,
                "cancelled_message_ids": list(out.cancelled_message_ids)}

    def hold(self, case_id: str, reason: str, until: str | None, note: str | None, by: str) -> dict[str, Any]:
        """Place a hold until released, or until 00:00 of `until` in the debtor's zone."""
        if until is not None:
            until = clean_text(until, "until")
        if reason not in {r.value for r in PLACEABLE_HOLDS}:
            allowed = ", ".join(r.value for r in PLACEABLE_HOLDS)
            raise ActionRefused(f"hold reason {reason!r}: use one of {allowed} (a promise: POST .../promises)")
        note = clean_text(note or "", "note")[:HOLD_NOTE_MAX] or None
        now = self.clock.now()
        with self.engine.begin() as conn:
            zone = _zone(conn, self.config, case_id)
            when = None
            if until:
                try:
                    when = parse_person_date(until, zone)
                except PersonDateError as exc:
                    raise ActionRefused(f"until: {exc}") from None
                if when <= now:
                    raise ActionRefused(f"until {until} is not in the future (today is {local_date(now, zone)}"
                                        f" in the debtor's zone {zone})")
            hold_id = repository.place_hold(conn, case_id, Reason(reason), when, by, now, note=note)
        return {"case_id": case_id, "hold_id": hold_id, "reason": reason,
                "until": None if when is None else when.isoformat(), "note": note}

    def release_needs(self, case_id: str, hold_id: int) -> Permission:
        """The permission releasing this hold needs (`repository.HoldNotFound`)."""
        with self.engine.connect() as conn:
            reason, _ = repository.hold_reason(conn, case_id, hold_id)
        return release_permission(reason)

    def release(self, case_id: str, hold_id: int, by: str) -> dict[str, Any]:
        """Release one hold; `released` is False when it had been released already."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            reason, _ = repository.hold_reason(conn, case_id, hold_id)
            released = repository.release_hold(conn, case_id, hold_id, by, now)
        return {"case_id": case_id, "hold_id": hold_id, "reason": reason, "released": released}

    def promise(self, case_id: str, date: str, by: str) -> dict[str, Any]:
        """A promise to pay by `date` (a date in the debtor's zone, from tomorrow to the
        promise window `[replies] promise_to_pay_days` ahead): a `promise_to_pay` hold
        until the end of that day (00:00 of the next, debtor's zone — "by Friday" includes
        Friday, as on a call); a payment by then keeps it, else it is a broken promise."""
        now = self.clock.now()
        window = self.config.replies.promise_to_pay_days
        with self.engine.begin() as conn:
            zone = _zone(conn, self.config, case_id)
            today = local_date(now, zone)
            try:
                day = dt.date.fromisoformat(clean_text(date, "date"))
            except ValueError:
                raise ActionRefused(f"date {date!r}: send a date like {today + dt.timedelta(days=3)}"
                                    " (a day in the debtor's time zone)") from None
            first, last = promise_window(today, window)
            if not first <= day <= last:
                raise ActionRefused(f"a promise date is from {first} to {last} (within {window} days, debtor's"
                                    f" zone {zone}); {day} is not")
            until = promise_hold_until(day, zone)
            hold_id = repository.place_hold(conn, case_id, Reason.PROMISE_TO_PAY, until, by, now,
                                            note=f"promised by {day.isoformat()}")
        return {"case_id": case_id, "hold_id": hold_id, "date": day.isoformat(), "until": until.isoformat()}

    def note(self, case_id: str, text: str, by: str) -> dict[str, Any]:
        """A note on the case's timeline (a contact's outcome, the follow-up plan)."""
        text = clean_text(text, "text")
        if not text:
            raise ActionRefused('send {"text": "..."}: a note cannot be empty')
        if len(text) > NOTE_MAX:
            raise ActionRefused(f"a note has at most {NOTE_MAX} characters")
        now = self.clock.now()
        with self.engine.begin() as conn:
            repository.case_zones(conn, case_id)  # CaseNotFound
            record_event(conn, EventKind.NOTE_ADDED, now, case_id=case_id, actor=by, text=text)
        return {"case_id": case_id, "at": now.isoformat(), "by": by, "text": text}
