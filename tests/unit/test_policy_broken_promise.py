"""A broken promise to pay moves the case to the next stage's, firmer wording (SPEC
section 6, issue 5); cadence, caps and the stage itself stay as they were."""

from __future__ import annotations

import dataclasses
import datetime as dt

from test_policy_decide import CATALOG, GATE, make_case, sh, snap

from dispatcher.domain import Action, Channel, Reason


def test_broken_promise_uses_the_next_stages_wording() -> None:
    now = sh(2026, 12, 7)  # Monday 10:00
    case = make_case(dt.date(2026, 11, 7))  # DPD 30: stage dpd30
    plain = {d.channel: d for d in GATE.decide_case(snap(case), CATALOG, now)}
    firm = {d.channel: d for d in GATE.decide_case(dataclasses.replace(snap(case), promise_broken=True),
                                                   CATALOG, now)}
    for channel in (Channel.SMS, Channel.EMAIL):
        assert plain[channel].template.startswith(f"{channel.value}/dpd30/")
        assert firm[channel].template.startswith(f"{channel.value}/dpd60/")
        assert (firm[channel].action, firm[channel].reason, firm[channel].stage) == (Action.SEND, Reason.DUE, "dpd30")
        assert "promise to pay broken" in firm[channel].detail


def test_last_stage_keeps_its_own_wording_and_missing_firmer_templates_fall_back() -> None:
    now = sh(2026, 12, 7)
    late = make_case(dt.date(2026, 8, 1))  # DPD 128: dpd90, the firmest stage
    for d in GATE.decide_case(dataclasses.replace(snap(late), promise_broken=True), CATALOG, now):
        if d.channel is not None:
            assert d.template.startswith(f"{d.channel.value}/dpd90/")
    # no approved firmer variant for this channel: the stage's own wording, still sent
    catalog = {k: v for k, v in CATALOG.items() if k[1] != "dpd60"}
    d = GATE.decide_channel(dataclasses.replace(snap(make_case(dt.date(2026, 11, 7))), promise_broken=True),
                            catalog, now, Channel.SMS)
    assert d.action is Action.SEND and d.template.startswith("sms/dpd30/")
