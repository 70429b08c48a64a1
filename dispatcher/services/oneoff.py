"""One-off messages from collectors (CLI, API, web page): the same compliance gate as
scheduled messages, without the cadence rule (SPEC section 4)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import col

from dispatcher.domain import Action, Channel, Decision, MessageKind
from dispatcher.policy import Gate
from dispatcher.services.planner import enqueue_decisions
from dispatcher.store.repository import CaseNotFound
from dispatcher.store.snapshots import iter_snapshots
from dispatcher.store.tables import MessageRow


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
