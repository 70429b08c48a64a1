"""The compliance gate: (case snapshot, config, approved templates, now) -> decisions.

Reason precedence (SPEC section 4; the first that applies wins):

1. case: `case_closed`, then the active holds in the order `cease_communication`,
   `dispute_hold`, `legal_hold`, `collector_hold`, `payment_claimed`, `promise_to_pay`
   (a hold of any other reason still suppresses, after those), then `repayment_plan`
   while the case's plan is kept (`policy.plans`). Every channel line gets the case
   reason (action `skip`), and no escalation is emitted. A kept plan adds the lines of
   its instalment reminders on the days they are due (stage `plan`, templates
   `<channel>/plan/...`, checked like any stage's: channel, time, caps); a broken plan
   is no reason at all: collection resumes at the case's own stage.
2. stage: `not_overdue` (one line, channel null).
3. channel: `no_contact`, `invalid_address`, `no_consent`, `opted_out`.
4. cadence: `not_due` (skip) — see `policy.stages`.
5. time (`defer`): `non_working_day` if the instant falls on a non-working day in any
   of the case's zones, else `outside_hours`.
6. caps (`defer`): `frequency_cap` / `rest_period` — see `policy.caps`.
7. `send`/`due`; plus one `escalate`/`legal_handoff` line (channel null) the first time
   the case is in a stage marked `escalate = true`.

A `send` or `defer` needs an approved template for (channel, stage, case locale), else
the profile's default locale; with neither the line becomes `skip` with the extension
reason `no_approved_template`.

`not_before` (for `defer`) is the earliest instant after now that is inside the window
in every zone, on a working day, and on a primary-zone day the caps allow given the
history known now; it is expressed in the primary zone.

The snapshot's history must not contain the message being re-checked (the sender
removes it), otherwise that message counts against its own caps.

`Gate(config)` is the gate for one configuration. It owns the caches that make a plan
run cheap: everything that depends only on (profile, zone, date) or on (profile, zones,
now), the stage per days past due, the formatted instants that many cases share; so a
run over many cases at one `now` costs a few dict lookups per case for the time rules.
Build one per configuration and keep it (the planner, the sender and the one-off path
each receive theirs); a configuration is immutable once loaded, so a gate never goes
stale. Its caches only memoise pure functions, each entry written whole, so threads may
share a gate.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from dispatcher.config import ChannelCadence, Config, Jurisdiction, Stage
from dispatcher.domain import (
    ADDRESS_KIND,
    CLOSED_STATUSES,
    HOLD_REASONS,
    PLAN_CHANNELS,
    PLAN_STAGE,
    Action,
    CaseSnapshot,
    Channel,
    ContactPoint,
    Decision,
    Reason,
)
from dispatcher.policy.calendar import WorkingCalendar
from dispatcher.policy.caps import NOT_COUNTED, ChannelCapRules, ChannelUsage, is_connected
from dispatcher.policy.instants import TIME_CACHE_LIMIT as _TIME_CACHE_LIMIT
from dispatcher.policy.instants import Instants
from dispatcher.policy.plans import PlanStanding, PlanStatus, plan_standing, reminder_due
from dispatcher.policy.rotation import rotate
from dispatcher.policy.time_verdict import TimeVerdict, time_verdict
from dispatcher.policy.window import ContactWindow, find_legal_ts, windows_for
from dispatcher.policy.zones import resolve_zones

TemplateCatalog = Mapping[tuple[Channel, str, str], Sequence[str]]

_HOLD_RANK = {reason: i for i, reason in enumerate(HOLD_REASONS)}
#: Holds that stop reminders but not a link the debtor asks for (`Gate.decide_requested`):
#: they record that the debtor means to pay, which the link helps them do.
REQUESTED_DESPITE = frozenset({Reason.PROMISE_TO_PAY, Reason.PAYMENT_CLAIMED})
_ADDRESS_WORD = {"phone": "phone number", "email": "e-mail address"}
_UTC = dt.UTC
_CH = {ch: ch.value for ch in Channel}
_SEND, _DEFER, _SKIP, _ESCALATE = Action.SEND, Action.DEFER, Action.SKIP, Action.ESCALATE


# -- per-profile caches ----------------------------------------------------------------


class _Profile:
    """A profile with its calendar, caps and per-zones caches."""

    __slots__ = ("profile", "calendar", "caps", "shared", "windows", "times", "instants", "cite")

    def __init__(self, profile: Jurisdiction, instants: Instants, name: str = "") -> None:
        self.profile = profile
        #: the profile's rule, quoted after a time or cap verdict: " (us-wa: Washington RCW 19.16.250)"
        self.cite = f" ({name}: {profile.source})" if profile.source else ""
        self.calendar = WorkingCalendar.for_profile(profile)
        self.caps = {ch: ChannelCapRules(profile, ch) for ch in Channel}
        #: caps across channels: the lines of one decision count each other's sends
        self.shared = bool(profile.shared_caps)
        self.windows: dict[tuple[str, ...], tuple[ContactWindow, ...]] = {}
        self.times: dict[tuple[tuple[str, ...], float], TimeVerdict] = {}
        self.instants = instants

    def windows_for(self, zones: tuple[str, ...]) -> tuple[ContactWindow, ...]:
        windows = self.windows.get(zones)
        if windows is None:
            windows = self.windows[zones] = windows_for(zones, self.profile, self.calendar)
        return windows

    def time_at(self, zones: tuple[str, ...], ts: float) -> TimeVerdict:
        key = (zones, ts)
        verdict = self.times.get(key)
        if verdict is None:
            if len(self.times) >= _TIME_CACHE_LIMIT:
                self.times.clear()
            verdict = self.times[key] = time_verdict(self.windows_for(tuple(zones)), ts, self.instants, self.cite)
        return verdict


_Head = tuple[int, "tuple[Stage, tuple[tuple[Channel, int], ...]] | None", str]


# -- history ---------------------------------------------------------------------------


class _ChannelHistory:
    """One channel's counted history, seen from the primary zone and the current stage."""

    __slots__ = ("usage", "stage_last_at", "stage_last_day", "template_at", "template")

    def __init__(self) -> None:
        self.usage = ChannelUsage()
        self.stage_last_at: dt.datetime | None = None
        self.stage_last_day: int | None = None
        self.template_at: dt.datetime | None = None
        self.template: str | None = None


def _histories(snapshot: CaseSnapshot, window: ContactWindow, stage: str | None) -> dict[Channel, _ChannelHistory]:
    out: dict[Channel, _ChannelHistory] = {}
    tz = window.tz
    for message in snapshot.history:
        if message.status in NOT_COUNTED:
            continue
        h = out.get(message.channel)
        if h is None:
            h = out[message.channel] = _ChannelHistory()
        # UTC datetimes compare exactly and cheaply (same tzinfo object)
        at = message.at
        if at.tzinfo is not _UTC:
            if at.tzinfo is None:
                raise ValueError(f"case {snapshot.case.case_id}: history entry at {at} has no time zone")
            at = at.astimezone(_UTC)
        ordinal = at.astimezone(tz).toordinal()
        h.usage.add(ordinal, message.conversation, message.channel is Channel.VOICE and is_connected(message))
        if (message.stage is None or message.stage == stage) and (
            h.stage_last_at is None or at > h.stage_last_at
        ):
            h.stage_last_at = at
            h.stage_last_day = ordinal
        if message.template is not None and (h.template_at is None or at > h.template_at):
            h.template_at = at
            h.template = message.template
    return out


_EMPTY_HISTORY = _ChannelHistory()


# -- the gate --------------------------------------------------------------------------


def _case_reason(snapshot: CaseSnapshot, now: dt.datetime,
                 ignore: frozenset[Reason] = frozenset()) -> tuple[Reason, str] | None:
    case = snapshot.case
    if case.status in CLOSED_STATUSES:
        return Reason.CASE_CLOSED, f"case status is {case.status.value}: no further contact"
    best = None
    best_rank = 1 << 30
    for hold in snapshot.holds:
        if hold.active_at(now) and hold.reason not in ignore:
            rank = _HOLD_RANK.get(hold.reason, len(_HOLD_RANK))
            if rank < best_rank:
                best, best_rank = hold, rank
    if best is None:
        return None
    if best.until is None:
        return best.reason, f"{best.reason.value} hold active until released"
    return best.reason, f"{best.reason.value} hold active until {best.until.isoformat()}"


class _Case:
    """Everything about one case at one instant that all its channel lines share."""

    __slots__ = (
        "snapshot", "case_id", "gate", "prof", "zones", "windows", "time", "now_ts",
        "dpd", "stage", "stage_name", "channels", "prefix", "case_reason", "_histories", "_usages", "plan",
    )

    def __init__(self, snapshot: CaseSnapshot, gate: Gate, now: dt.datetime) -> None:
        case = snapshot.case
        self.snapshot = snapshot
        self.case_id = case.case_id
        self.gate = gate
        try:
            prof = self.prof = gate.profiles[case.jurisdiction]
        except KeyError:
            raise ValueError(
                f"case {case.case_id}: jurisdiction {case.jurisdiction!r} is not a profile in the"
                f" configuration (known: {', '.join(sorted(gate.profiles))})"
            ) from None
        zones = self.zones = snapshot.zones or resolve_zones(case, prof.profile)
        self.now_ts = gate.timestamp(now)
        time = self.time = prof.time_at(zones, self.now_ts)
        self.windows = time.windows
        self.dpd, entry, self.prefix = gate.head(time.today, case.due_date)
        self.stage: Stage | None = None
        self.stage_name: str | None = None
        self.channels: tuple[tuple[Channel, int], ...] = ()
        if entry is not None:
            self.stage, self.channels = entry
            self.stage_name = self.stage.name
        self.case_reason = (
            _case_reason(snapshot, now) if snapshot.holds or case.status in CLOSED_STATUSES else None
        )
        self._histories: dict[Channel, _ChannelHistory] | None = None
        self._usages: dict[Channel, ChannelUsage] | None = None
        self.plan: PlanStanding | None = None
        if self.case_reason is None and snapshot.plan is not None:
            ss = gate.config.self_service
            self.plan = plan_standing(snapshot.plan, case.paid_total, dt.date.fromordinal(time.today),
                                      ss.plan_grace_days)
            if self.plan.status is PlanStatus.BROKEN:
                self.plan = None  # collection resumes at the case's own stage
            else:
                self.case_reason = Reason.REPAYMENT_PLAN, _plan_detail(snapshot, self.plan)

    def as_plan(self) -> _Case:
        """This case seen from its plan's reminder stage (cadence: once a day)."""
        other = object.__new__(_Case)
        for name in _Case.__slots__:
            setattr(other, name, getattr(self, name))
        stage = self.gate.plan_stage
        other.stage, other.stage_name, other._histories = stage, stage.name, None
        other.prefix = f"{self.prefix}; instalment reminder"
        return other

    def history(self, channel: Channel) -> _ChannelHistory:
        if self._histories is None:
            self._histories = _histories(self.snapshot, self.windows[0], self.stage_name)
        return self._histories.get(channel, _EMPTY_HISTORY)

    def usages(self) -> dict[Channel, ChannelUsage]:
        """Every channel's counted history (what the caps look at), with the messages
        this decision already plans (`plan_message`)."""
        if self._usages is None:
            self.history(Channel.SMS)
            assert self._histories is not None
            self._usages = {ch: h.usage for ch, h in self._histories.items()}
        return self._usages

    def plan_message(self, decision: Decision) -> None:
        """Count a `send` (now) or `defer` (at `not_before`) line for the lines decided
        after it: a shared cap must not be overrun by two channels due at once."""
        channel = decision.channel
        if channel is None or decision.action not in (_SEND, _DEFER):
            return
        at = self.now_ts if decision.not_before is None else decision.not_before.timestamp()
        usages = self.usages()
        usage = usages[channel] = usages[channel].copy() if channel in usages else ChannelUsage()
        usage.add(self.windows[0].ordinal(at))

    def decision(
        self, channel: Channel | None, action: Action, reason: Reason, detail: str,
        template: str | None = None, not_before: dt.datetime | None = None,
    ) -> Decision:
        return Decision(
            self.case_id, self.stage_name, channel, action, reason, template, not_before,
            f"{self.prefix}; {detail}",
        )


def _plan_detail(snapshot: CaseSnapshot, standing: PlanStanding) -> str:
    plan = snapshot.plan
    assert plan is not None
    nxt = standing.next_unpaid
    if nxt is None:
        return f"repayment plan {plan.offer} (#{plan.plan_id}) completed: every instalment paid"
    return (f"repayment plan {plan.offer} (#{plan.plan_id}) kept: instalment {nxt.instalment.number} of"
            f" {len(plan.instalments)}, {nxt.remaining} due {nxt.instalment.due.isoformat()}")


def _contact(snapshot: CaseSnapshot, channel: Channel) -> ContactPoint | None:
    for contact in snapshot.contacts:
        if contact.channel == channel:
            return contact
    return None


def _channel_block(snapshot: CaseSnapshot, channel: Channel, profile: Jurisdiction) -> tuple[Reason, str] | None:
    contact = _contact(snapshot, channel)
    if contact is not None and contact.address and contact.consent and not (contact.invalid or contact.opted_out):
        return None
    word = _ADDRESS_WORD[ADDRESS_KIND[channel]]
    ch = _CH[channel]
    if contact is None or not contact.address:
        return Reason.NO_CONTACT, f"no {word} on file for {ch}"
    if contact.invalid:
        return Reason.INVALID_ADDRESS, f"the {word} for {ch} is marked invalid"
    if not contact.consent:
        if profile.consent_default.for_channel(channel):
            return Reason.NO_CONSENT, f"no consent to contact by {ch}"
        rule = f" ({profile.source})" if profile.source else ""
        return Reason.NO_CONSENT, (
            f"no recorded consent to contact by {ch}: profile {snapshot.case.jurisdiction} needs the debtor's"
            f" prior consent for {ch}{rule}"
        )
    return Reason.OPTED_OUT, f"the debtor opted out of {ch}"


def _override_approved(
    templates: TemplateCatalog, channel: Channel, template: str, locales: tuple[str, ...]
) -> bool:
    return any(
        key[0] == channel and key[2] in locales and template in ids for key, ids in templates.items()
    )


def _line(
    c: _Case,
    templates: TemplateCatalog,
    channel: Channel,
    every_days: int | None,
    *,
    apply_cadence: bool,
    template: str | None,
    requested: bool = False,
) -> Decision:
    """One channel line for a case with a stage and no case-level reason (`requested`:
    a system reply the debtor asked for, approved on its own, with or without a stage)."""
    snapshot = c.snapshot
    block = _channel_block(snapshot, channel, c.prof.profile)
    if block is not None:
        return c.decision(channel, _SKIP, block[0], block[1])
    h = c.history(channel)
    ch = _CH[channel]
    gate = c.gate
    iso = gate.instants.iso
    today = c.time.today
    last_day = h.stage_last_day
    if apply_cadence and every_days is not None:
        if last_day is not None and today < last_day + every_days:
            return c.decision(
                channel, _SKIP, Reason.NOT_DUE,
                f"last {ch} {iso(last_day)}, every {every_days} days: next on {iso(last_day + every_days)}",
            )
        if last_day is None:
            cadence = f"no {ch} yet in this stage"
        else:
            cadence = f"last {ch} {iso(last_day)}, every {every_days} days: due since {iso(last_day + every_days)}"
    elif apply_cadence:
        cadence = f"{ch} is not a channel of this stage; cadence not applied"
    else:
        cadence = "asked for by the debtor" if requested else "cadence not applied (one-off or send-time re-check)"

    # the template is needed for send and defer alike
    stage_name = c.stage_name
    profile = c.prof.profile
    case = snapshot.case
    if requested:
        chosen: str | None = template
    elif template is not None:
        if not _override_approved(templates, channel, template, (case.locale, profile.default_locale)):
            return c.decision(
                channel, _SKIP, Reason.NO_APPROVED_TEMPLATE,
                f"template {template} is not an approved {ch} template in {case.locale}"
                f" or {profile.default_locale}",
            )
        chosen = template
    else:
        assert stage_name is not None  # only a requested message goes without a stage
        wording = stage_name
        if snapshot.promise_broken:
            # A broken promise to pay moves the case to the next stage's, firmer wording
            # (the last stage is already the firmest); cadence and caps stay the stage's.
            firmer = gate.firmer.get(stage_name)
            if firmer and gate.candidates(templates, channel, firmer, case.locale, profile.default_locale):
                wording = firmer
                cadence += f"; promise to pay broken: firmer {firmer} wording"
        chosen = rotate(
            gate.candidates(templates, channel, wording, case.locale, profile.default_locale),
            h.template, c.case_id, ch, wording,
        )
        if chosen is None:
            return c.decision(
                channel, _SKIP, Reason.NO_APPROVED_TEMPLATE,
                f"no approved {ch} template for stage {stage_name} in {case.locale}"
                f" or the profile default {profile.default_locale}",
            )

    time = c.time
    cap = c.prof.caps[channel]
    usage = c.usages() if c.prof.shared else {channel: h.usage}
    if time.legal:
        cap_block = None if requested else cap.check(usage, today)
        if cap_block is None:
            caps = "caps limit what we send, not what the debtor asks for" if requested else "caps allow"
            return c.decision(channel, _SEND, Reason.DUE, f"{cadence}; {time.why}; {caps}; template {chosen}",
                              template=chosen)
        reason, why = cap_block.reason, cap_block.detail
        if not why.startswith("shared cap"):  # a shared cap names its own source
            why += c.prof.cite
    else:
        reason, why = time.reason, time.why  # type: ignore[assignment]

    windows = c.windows
    next_ts = time.next_ts
    if not requested and cap.active(usage):
        first_day = gate.instants.local(next_ts, windows[0]).toordinal()
        later = cap.check(usage, first_day)
        if later is not None:
            next_ts = find_legal_ts(next_ts, windows, lambda o: cap.check(usage, o) is None)
            if not time.legal:
                why += f"; then {later.detail}"
    not_before = gate.instants.local(next_ts, windows[0])
    return c.decision(
        channel, _DEFER, reason,
        f"{why}; next legal moment {gate.instants.text(next_ts, windows[0])}; template {chosen}",
        template=chosen, not_before=not_before,
    )


class Gate:
    """The compliance gate for one configuration: (case snapshot, approved templates,
    now) -> decisions. Owns its caches (see the module docstring); build one per
    configuration and keep it."""

    __slots__ = ("config", "profiles", "firmer", "instants", "plan_stage", "_stages", "_heads", "_ordered", "_now")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.instants = Instants()
        self.profiles = {name: _Profile(p, self.instants, name) for name, p in config.jurisdictions.items()}
        ordered = sorted(config.stages, key=lambda s: s.dpd_min)
        #: the stage whose (firmer) wording a case uses after a broken promise to pay
        self.firmer: dict[str, str] = {a.name: b.name for a, b in zip(ordered, ordered[1:], strict=False)}
        #: instalment reminders, checked like a stage's messages (at most one a day per channel)
        self.plan_stage = Stage(name=PLAN_STAGE, dpd=(-(10**6),),
                                channels={ch: ChannelCadence(every_days=1) for ch in PLAN_CHANNELS})
        self._stages: dict[int, tuple[Stage, tuple[tuple[Channel, int], ...]] | None] = {}
        self._heads: dict[tuple[int, dt.date], _Head] = {}
        #: sorted, de-duplicated candidates per catalog value; only immutable (tuple)
        #: values are remembered, so a changed catalog can never be answered from here
        self._ordered: dict[tuple[str, ...], tuple[str, ...]] = {}
        #: the last `now` and its timestamp, as one tuple: threads sharing the gate never
        #: see one's instant with another's timestamp
        self._now: tuple[dt.datetime | None, float] = (None, 0.0)

    def decide_case(self, snapshot: CaseSnapshot, templates: TemplateCatalog, now: dt.datetime) -> list[Decision]:
        """The decisions for one case at `now`: one per channel of its stage (stage order),
        or one `channel = null` line without a stage, plus an escalation line if due."""
        c = _Case(snapshot, self, now)
        stage = c.stage
        if c.case_reason is not None:
            reason, detail = c.case_reason
            if stage is None:
                lines = [c.decision(None, _SKIP, reason, detail)]
            else:
                lines = [c.decision(ch, _SKIP, reason, detail) for ch, _ in c.channels]
            if c.plan is not None and reminder_due(
                c.plan, dt.date.fromordinal(c.time.today), self.config.self_service.plan_reminder_days
            ):
                p = c.as_plan()
                for ch in PLAN_CHANNELS:
                    line = _line(p, templates, ch, 1, apply_cadence=True, template=None)
                    if p.prof.shared:
                        p.plan_message(line)
                    lines.append(line)
            return lines
        if stage is None:
            return [c.decision(None, _SKIP, Reason.NOT_OVERDUE, "no stage covers this DPD")]
        out = []
        for ch, every in c.channels:
            line = _line(c, templates, ch, every, apply_cadence=True, template=None)
            if c.prof.shared:
                c.plan_message(line)
            out.append(line)
        if stage.escalate and stage.name not in snapshot.escalated_stages:
            out.append(
                c.decision(
                    None, _ESCALATE, Reason.LEGAL_HANDOFF,
                    f"stage {stage.name} is marked escalate: hand the case to the legal department",
                )
            )
        return out

    def decide_channel(
        self,
        snapshot: CaseSnapshot,
        templates: TemplateCatalog,
        now: dt.datetime,
        channel: Channel,
        *,
        apply_cadence: bool = True,
        template: str | None = None,
        plan_reminder: bool = False,
    ) -> Decision:
        """The gate for one channel: one-off sends (`apply_cadence=False`, optionally a
        chosen `template`, which must be approved for the channel in any stage) and the
        sender's last-moment re-check. The channel need not belong to the current stage.
        `plan_reminder`: the message is an instalment reminder (stage `plan`), allowed
        only while the case's plan is kept."""
        channel = Channel(channel)
        c = _Case(snapshot, self, now)
        if plan_reminder:
            if c.plan is not None and c.plan.status is PlanStatus.KEPT:  # the case reason is the plan
                return _line(c.as_plan(), templates, channel, 1, apply_cadence=apply_cadence, template=template)
            if c.case_reason is None:
                return c.decision(channel, _SKIP, Reason.NOT_DUE, "no repayment plan in force: no instalment reminder")
        if c.case_reason is not None:
            reason, detail = c.case_reason
            return c.decision(channel, _SKIP, reason, detail)
        if c.stage is None:
            return c.decision(channel, _SKIP, Reason.NOT_OVERDUE, "no stage covers this DPD")
        every = dict(c.channels).get(channel)
        return _line(c, templates, channel, every, apply_cadence=apply_cadence, template=template)

    def decide_requested(self, snapshot: CaseSnapshot, now: dt.datetime, channel: Channel,
                         template: str) -> Decision:
        """A message the debtor asked for during a contact (an IVR keypress; `template`, a
        system reply, is approved on its own): a one-off's gate without stage or cadence.
        The case closed, its holds (but those in `REQUESTED_DESPITE`), the contact and the
        contact window apply; the caps do not (they limit the contacts we start, and such a
        reply counts for none). `send`, or `skip`/`defer` with the reason."""
        c = _Case(snapshot, self, now)
        closed = snapshot.case.status in CLOSED_STATUSES
        reason = _case_reason(snapshot, now, REQUESTED_DESPITE) if snapshot.holds or closed else None
        if reason is not None:
            return c.decision(channel, _SKIP, *reason)
        return _line(c, {}, channel, None, apply_cadence=False, template=template, requested=True)

    # -- caches --------------------------------------------------------------------

    def timestamp(self, now: dt.datetime) -> float:
        """`now.timestamp()`, remembered for the one `now` a whole plan run shares."""
        last, ts = self._now
        if last is not now:
            if now.tzinfo is None or now.utcoffset() is None:
                raise ValueError("now must be timezone-aware")
            ts = now.timestamp()
            self._now = (now, ts)
        return ts

    def head(self, today: int, due_date: dt.date) -> _Head:
        """Days past due, stage and detail prefix of a case due on `due_date`, seen on
        local date `today` (an ordinal): the same for every case due that day."""
        key = (today, due_date)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) >= _TIME_CACHE_LIMIT:
                self._heads.clear()
            dpd = today - due_date.toordinal()
            entry = self.stage(dpd)
            stage_name = None if entry is None else entry[0].name
            prefix = f"DPD {dpd} (due {due_date.isoformat()}), stage {stage_name or 'none'}"
            head = self._heads[key] = (dpd, entry, prefix)
        return head

    def stage(self, dpd: int) -> tuple[Stage, tuple[tuple[Channel, int], ...]] | None:
        """The stage covering `dpd` with its (channel, every_days) pairs, or None."""
        try:
            return self._stages[dpd]
        except KeyError:
            stage = self.config.stage_for(dpd)
            value = None
            if stage is not None:
                value = (stage, tuple((ch, c.every_days) for ch, c in stage.channels.items()))
            self._stages[dpd] = value
            return value

    def candidates(
        self, templates: TemplateCatalog, channel: Channel, stage: str, locale: str, default_locale: str
    ) -> Sequence[str]:
        """The approved templates for (channel, stage) in `locale`, else in the profile's
        default locale: sorted, without duplicates."""
        found = templates.get((channel, stage, locale))
        if not found and default_locale != locale:
            found = templates.get((channel, stage, default_locale))
        if not found:
            return ()
        if type(found) is not tuple:
            return sorted(set(found))
        ordered = self._ordered.get(found)
        if ordered is None:
            if len(self._ordered) >= _TIME_CACHE_LIMIT:
                self._ordered.clear()
            ordered = self._ordered[found] = tuple(sorted(set(found)))
        return ordered
