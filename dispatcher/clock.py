"""The one way to read time. Every component receives a `Clock`; nothing calls
`datetime.now()` directly."""

from __future__ import annotations

import datetime as dt
import mmap
import os
import struct
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


class SharedClock:
    """A `FakeClock` that several processes of one simulation read (the demo runs the
    sandbox and the webhook server in processes of their own, on the driver's clock).

    The instant lives in a small file mapped into each process's memory, as
    microseconds since the epoch in one aligned 8-byte word: a write is one store, so a
    reader sees the old instant or the new one, never a mix. Pickles as its file path,
    so it can be handed to a spawned process."""

    _EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

    def __init__(self, path: str | os.PathLike[str], start: dt.datetime | None = None) -> None:
        self.path = os.fspath(path)
        if start is not None:
            _require_aware(start)
            with open(self.path, "wb") as f:
                f.write(bytes(8))
        with open(self.path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), 8)
        if start is not None:
            self.set(start)

    def __reduce__(self) -> tuple[type[SharedClock], tuple[str]]:
        return (SharedClock, (self.path,))

    def now(self) -> dt.datetime:
        (micros,) = struct.unpack_from("<q", self._map)
        return self._EPOCH + dt.timedelta(microseconds=micros)

    def set(self, instant: dt.datetime) -> None:
        _require_aware(instant)
        delta = instant - self._EPOCH
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        struct.pack_into("<q", self._map, 0, micros)

    def advance(self, delta: dt.timedelta | None = None, **kwargs: float) -> dt.datetime:
        instant = self.now() + (delta or dt.timedelta(**kwargs))
        self.set(instant)
        return instant

    def close(self) -> None:
        self._map.close()


def parse_instant(text: str) -> dt.datetime:
    """Parse an ISO 8601 instant; it must carry an offset (`2026-11-24T10:00:00+08:00`)."""
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not an ISO 8601 instant; write e.g. 2026-11-24T10:00:00+08:00"
        ) from exc
    if value.tzinfo is None:
        # the suggestion is itself a valid instant (a bare date gets its midnight)
        example = value.isoformat(timespec="seconds")
        raise ValueError(f"{text!r} has no UTC offset; add one, e.g. {example}+08:00 or {example}Z")
    return value


def _require_aware(value: dt.datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("clock instants must be timezone-aware")
