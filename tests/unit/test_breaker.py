"""The circuit breaker's state machine (pure): examples and a hypothesis property."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.channels.breaker import Breaker, BreakerSettings, CircuitState

S = BreakerSettings(failures_to_open=3, probe_seconds=10.0)


def test_consecutive_failures_open_it_and_a_success_in_between_resets_the_count() -> None:
    b = Breaker(S)
    b = b.failure(0).failure(1)
    assert b.allows_calls()
    b = b.success(2).failure(3).failure(4)
    assert b.allows_calls(), "a success in between starts the count again"
    b = b.failure(5)
    assert b.state is CircuitState.OPEN and not b.allows_calls()
    assert b.opened_at == 5 and b.seconds_to_probe(7) == pytest.approx(8)


def test_one_probe_per_interval_and_its_success_closes_it() -> None:
    b = Breaker(S).failure(0).failure(0).failure(0)
    assert not b.probe_due(9.99)
    with pytest.raises(ValueError):
        b.start_probe(5)
    b = b.start_probe(10)
    assert b.state is CircuitState.PROBING and not b.allows_calls()
    assert not b.probe_due(15), "one probe at a time"
    b = b.success(11)
    assert b.closed and b.allows_calls() and b.failures == 0


def test_a_failed_probe_waits_a_whole_interval_again() -> None:
    b = Breaker(S).failure(0).failure(0).failure(0).start_probe(10)
    b = b.failure(14)
    assert b.state is CircuitState.OPEN
    assert not b.probe_due(23.9) and b.probe_due(24)


def test_a_probe_that_never_reports_lets_another_start_after_the_interval() -> None:
    b = Breaker(S).failure(0).failure(0).failure(0).start_probe(10)
    assert not b.probe_due(19.9) and b.probe_due(20)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        BreakerSettings(failures_to_open=0)
    with pytest.raises(ValueError):
        BreakerSettings(probe_seconds=0)


def test_gauge_values() -> None:
    assert [s.gauge for s in CircuitState] == [0, 1, 2]


EVENTS = st.lists(st.tuples(st.sampled_from(["ok", "fail", "probe", "call"]), st.floats(0, 25)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(events=EVENTS, failures_to_open=st.integers(1, 6), probe_seconds=st.floats(0.5, 20))
def test_properties_over_any_sequence(events: list[tuple[str, float]], failures_to_open: int,
                                      probe_seconds: float) -> None:
    """Over any sequence of events: calls go through only while closed; probes start at
    least `probe_seconds` apart; it opens only after `failures_to_open` consecutive
    failures; a success always closes it."""
    cfg = BreakerSettings(failures_to_open, probe_seconds)
    b = Breaker(cfg)
    now = 0.0
    run = 0  # consecutive failures since the last success
    last_probe: float | None = None
    for kind, step in events:
        now += step
        if kind == "ok":
            b = b.success(now)
            run = 0
            assert b.closed and b.allows_calls()
        elif kind == "fail":
            was_closed = b.closed
            b = b.failure(now)
            run += 1
            if was_closed:
                assert b.closed == (run < failures_to_open)
            else:
                assert not b.closed, "a failure never closes it"
        elif kind == "probe":
            if b.probe_due(now):
                if last_probe is not None:
                    assert now - last_probe >= probe_seconds - 1e-9
                b = b.start_probe(now)
                last_probe = now
        else:
            assert b.allows_calls() == (b.state is CircuitState.CLOSED)
        if b.closed:
            assert not b.probe_due(now)
            last_probe = None if run == 0 else last_probe
        else:
            assert not b.allows_calls()
