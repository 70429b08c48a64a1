"""Instants as the decisions show them, converted and formatted once per (instant, zone)."""

from __future__ import annotations

import datetime as dt

from dispatcher.policy.calendar import format_day
from dispatcher.policy.window import ContactWindow

#: Entries a cache of the gate holds before it starts over.
TIME_CACHE_LIMIT = 20_000


class Instants:
    """Instants as the decisions show them: many cases share a `not_before`, so each is
    converted and formatted once (datetimes are immutable: one object serves them all)."""

    __slots__ = ("_local", "_text", "_iso")

    def __init__(self) -> None:
        self._local: dict[tuple[float, str], dt.datetime] = {}
        self._text: dict[tuple[float, str], str] = {}
        self._iso: dict[int, str] = {}

    def local(self, ts: float, window: ContactWindow) -> dt.datetime:
        """POSIX instant `ts` as an aware datetime in the window's zone."""
        key = (ts, window.zone)
        local = self._local.get(key)
        if local is None:
            if len(self._local) >= TIME_CACHE_LIMIT:
                self._local.clear()
            local = self._local[key] = dt.datetime.fromtimestamp(ts, window.tz)
        return local

    def text(self, ts: float, window: ContactWindow) -> str:
        """`Wed 2026-05-06 09:00 Asia/Shanghai`."""
        key = (ts, window.zone)
        text = self._text.get(key)
        if text is None:
            if len(self._text) >= TIME_CACHE_LIMIT:
                self._text.clear()
            local = self.local(ts, window)
            text = self._text[key] = f"{format_day(local.date())} {local:%H:%M} {window.zone}"
        return text

    def iso(self, ordinal: int) -> str:
        """The ISO date of a proleptic ordinal."""
        text = self._iso.get(ordinal)
        if text is None:
            if len(self._iso) >= TIME_CACHE_LIMIT:
                self._iso.clear()
            text = self._iso[ordinal] = dt.date.fromordinal(ordinal).isoformat()
        return text
