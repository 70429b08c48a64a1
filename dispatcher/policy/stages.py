"""Delinquency stages and the cadence rule.

Days past due (DPD) = local date of "now" in the case's primary zone - `due_date`.

Cadence: a channel is `not_due` while the case's last counted message on it *in the
current stage* (sent or queued, one-off messages included; a message whose stage is
unknown counts as current) is dated local day d and today < d + `every_days`.

Design note: entering a new stage makes its first message due at once. SPEC section 2
asks for the first reminder within 24 h of going overdue, and each stage brings new
content (overdue amount, consequences, formal notice) that must not wait for the
previous stage's rhythm; a message from the previous stage therefore does not delay
it. The frequency caps (section `policy.caps`) still apply across stages, so a stage
change can never produce a burst beyond them.
"""

from __future__ import annotations

import datetime as dt

from dispatcher.config import Config, Stage


def days_past_due(due_date: dt.date, today: dt.date) -> int:
    """DPD for a local `today`."""
    return today.toordinal() - due_date.toordinal()


def stage_for(config: Config, dpd: int) -> Stage | None:
    """The stage whose DPD range contains `dpd`, if any."""
    return config.stage_for(dpd)


def next_due_ordinal(last_ordinal: int | None, every_days: int) -> int | None:
    """The first local day (ordinal) a channel is due again, None if nothing was sent."""
    return None if last_ordinal is None else last_ordinal + every_days
