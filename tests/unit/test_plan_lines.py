"""`planner.decision_line`: the hand-built JSON line of `dispatcher plan --format jsonl`
writes exactly what `json.dumps(Decision.as_json())` writes, and falls back to it, with
a warning and a count, the day the two disagree."""

from __future__ import annotations

import datetime as dt
import json
import logging
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.domain import Action, Channel, Decision, Reason
from dispatcher.services import planner


def _generic(decision: Decision) -> str:
    return json.dumps(decision.as_json(), ensure_ascii=False) + "\n"


SAMPLE = Decision("C-9", "dpd30", Channel.EMAIL, Action.DEFER, Reason.NON_WORKING_DAY, "email/dpd30/v2",
                  dt.datetime(2026, 10, 8, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai")), "National Day; 张 \"q\"")


def test_the_fast_line_is_in_use_and_counts_nothing() -> None:
    before = planner.fallback_lines
    assert planner.decision_line(SAMPLE) == _generic(SAMPLE)
    assert planner.choose_decision_line() is planner.decision_line
    assert planner.fallback_lines == before


@given(
    case_id=st.text(max_size=12),
    stage=st.none() | st.sampled_from(["pre_due", "dpd30"]),
    channel=st.none() | st.sampled_from(list(Channel)),
    action=st.sampled_from(list(Action)),
    reason=st.sampled_from(list(Reason)),
    template=st.none() | st.text(max_size=20),
    minutes=st.none() | st.integers(-10**6, 10**6),
    detail=st.text(max_size=40),
)
def test_the_fast_line_writes_the_generic_text(case_id: str, stage: str | None, channel: Channel | None,
                                               action: Action, reason: Reason, template: str | None,
                                               minutes: int | None, detail: str) -> None:
    not_before = None if minutes is None else (
        dt.datetime(2026, 12, 7, tzinfo=ZoneInfo("America/New_York")) + dt.timedelta(minutes=minutes))
    d = Decision(case_id, stage, channel, action, reason, template, not_before, detail)
    assert planner.decision_line(d) == _generic(d)


def test_a_changed_decision_shape_falls_back_to_the_generic_encoder_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    shape = Decision.as_json
    monkeypatch.setattr(Decision, "as_json", lambda self: {**shape(self), "channel_group": "text"})
    with caplog.at_level(logging.WARNING, logger="dispatcher.planner"):
        line = planner.choose_decision_line()
    [record] = [r for r in caplog.records if r.name == "dispatcher.planner"]
    assert record.levelno == logging.WARNING
    assert "no longer matches Decision.as_json" in record.getMessage()

    before = planner.fallback_lines
    text = line(SAMPLE)
    assert text == _generic(SAMPLE)  # the new shape, written in full
    assert json.loads(text)["channel_group"] == "text"
    line(SAMPLE)
    assert planner.fallback_lines == before + 2
