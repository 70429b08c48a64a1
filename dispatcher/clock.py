"""The one way to read time. Every component receives a `Clock`; nothing calls
`datetime.now()` directly."""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol

UTC = dt.UTC


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current instant, timezone-aware."""
        ...


class SystemClock:
    """Wall-clock time in UTC."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(UTC)


class StartedClock:
    """Starts at a given instant and then advances in real time (`run --now`)."""

    def __init__(self, start: dt.datetime) -> None:
        _require_aware(start)
        self._start = start
        self._mono0 = time.monotonic()

    def now(self) -> dt.datetime:
        return self._start + dt.timedelta(seconds=time.monotonic() - self._mono0)


class FakeClock:
    """A clock that only moves when told to (tests, the demo's simulated weeks)."""

    def __init__(self, start: dt.datetime) -> None:
        _require_aware(start)
        self._now = start

    def now(self) -> dt.datetime:
        return self._now

    def set(self, instant: dt.datetime) -> None:
        _require_aware(instant)
        self._now = instant

    def advance(self, delta: dt.timedelta | None = None, **kwargs: float) -> dt.datetime:
        self._now = self._now + (delta or dt.timedelta(**kwargs))
        return self._now


def parse_instant(text: str) -> dt.datetime:
    """Parse an ISO 8601 instant; it must carry an offset (`2026-11-24T10:00:00+08:00`)."""
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not an ISO 8601 instant; write e.g. 2026-11-24T10:00:00+08:00"
        ) from exc
    if value.tzinfo is None:
        raise ValueError(
            f"{text!r} has no UTC offset; add one, e.g. {text}+08:00 or {text}Z"
        )
    return value


def _require_aware(value: dt.datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("clock instants must be timezone-aware")
