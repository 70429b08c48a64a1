"""The next instant at which a case's planner outcome can change without an event.

The planner enqueues a message when a channel's decision is `send` or `defer`, and
records an escalation on `escalate`. Between events (every write to a case records one,
see `store.plan_state`), what the planner would do for a case changes only when time
crosses one of these, all computed from the snapshot the decisions were made from:

- a hold's end (`until`): the case reason goes away (or gives way to another);
- the next stage boundary: the local midnight, in the case's primary zone, of the first
  day whose days past due fall in another stage (or in none); the stage decides the
  channels, cadence and escalation;
- each channel's next cadence date: the local midnight of the day its last counted
  message in this stage plus `every_days` falls on (`not_due` ends);
- a history message leaving the planner's history window (`history_days` after it),
  which can make a channel due again or lift a cap;
- for a case with a repayment plan, the next local midnight: an instalment's reminder
  days and its grace end are local days, and plans are few, so such a case is simply
  looked at once a day while it has one.

A case whose decisions still contain a `send`, `defer` or `escalate` *after* the planner
recorded what it queued (the key of that day already existed, e.g. a failed message)
is looked at again at the next run, as a full plan would. A closed case changes only
with an event (`None`: never). Everything else that the decisions depend on — the time
of day, the contact window, caps — matters only on a day a channel is due, and a due
channel is queued (or deferred to its `not_before`) at once, so the instant of that day
is already among the above.
"""

from __future__ import annotations

import datetime as dt

from dispatcher.config import Config
from dispatcher.domain import CLOSED_STATUSES, Action, CaseSnapshot, Channel, Decision
from dispatcher.policy.caps import NOT_COUNTED
from dispatcher.policy.evaluate import Gate
from dispatcher.policy.zones import resolve_zones, zone_info

#: The smallest step after an instant: "at the next run".
TICK = dt.timedelta(microseconds=1)
_ACTING = (Action.SEND, Action.DEFER, Action.ESCALATE)


_BOUNDARIES: dict[int, tuple[Config, tuple[int, ...]]] = {}


def _boundaries(config: Config) -> tuple[int, ...]:
    """Every DPD at which some stage starts or the one before it ends, sorted (kept per
    configuration object: a configuration is immutable once loaded)."""
    known = _BOUNDARIES.get(id(config))
    if known is not None and known[0] is config:
        return known[1]
    out = set()
    for stage in config.stages:
        out.add(stage.dpd_min)
        if stage.dpd_max is not None:
            out.add(stage.dpd_max + 1)
    if len(_BOUNDARIES) > 64:
        _BOUNDARIES.clear()
    _BOUNDARIES[id(config)] = (config, tuple(sorted(out)))
    return _BOUNDARIES[id(config)][1]


def _midnight(ordinal: int, tz: dt.tzinfo) -> dt.datetime:
    """The first instant of local day `ordinal` in `tz` (a midnight that does not exist,
    at a DST change, is the transition instant)."""
    return dt.datetime.combine(dt.date.fromordinal(ordinal), dt.time(0), tzinfo=tz).astimezone(dt.UTC)


def next_check(
    gate: Gate, snapshot: CaseSnapshot, decisions: list[Decision], now: dt.datetime, *, history_days: int = 60
) -> dt.datetime | None:
    """The next instant at which the planner must look at this case again (see the module
    docstring); None when only an event can change its outcome."""
    case = snapshot.case
    if case.status in CLOSED_STATUSES:
        return None
    if any(d.action in _ACTING for d in decisions):
        return now + TICK
    profile = gate.profiles[case.jurisdiction].profile
    zones = snapshot.zones or resolve_zones(case, profile)
    tz = zone_info(zones[0])
    today = now.astimezone(tz).toordinal()
    candidates: list[dt.datetime] = [h.until for h in snapshot.holds if h.until is not None and h.until > now]

    due = case.due_date.toordinal()
    dpd = today - due
    for boundary in _boundaries(gate.config):
        if boundary > dpd:
            candidates.append(_midnight(due + boundary, tz))
            break

    entry = gate.stage(dpd)
    every = dict(entry[1]) if entry is not None else {}
    stage_name = entry[0].name if entry is not None else None
    last_day: dict[Channel, int] = {}
    window = dt.timedelta(days=history_days)
    for message in snapshot.history:
        leaves = message.at + window + TICK
        if leaves > now:
            candidates.append(leaves)
        if message.status in NOT_COUNTED or message.channel not in every:
            continue
        if message.stage is None or message.stage == stage_name:
            day = message.at.astimezone(tz).toordinal()
            if day > last_day.get(message.channel, -1):
                last_day[message.channel] = day
    for channel, day in last_day.items():
        next_day = day + every[channel]
        if next_day > today:
            candidates.append(_midnight(next_day, tz))
    if snapshot.plan is not None:
        candidates.append(_midnight(today + 1, tz))
    return min(candidates) if candidates else None
