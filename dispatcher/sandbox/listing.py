"""How the sandbox's list resources filter, order and page, as Twilio's do.

- **Order.** Messages are sorted by DateSent, newest first (Twilio's API reference says
  so); calls by StartTime, newest first. A record without that date (a message not yet
  sent, a call not yet dialled) has no place in that order, and Twilio does not say
  where it shows it: the sandbox puts such records first (`undated_first=True`, the
  default) or last, so that tests can run a client against both. Ties: the later
  created first.
- **Date filters** (`DateSent`, `DateSent<`, `DateSent>`, likewise `StartTime`,
  `EndTime`) compare *dates* in UTC, as Twilio documents (`YYYY-MM-DD`; `<` means on or
  before, `>` on or after). An instant is accepted and cut to its date, which is what
  the SDK's `date_sent_after=<datetime>` sends and what Twilio does with it. A record
  without the date never matches a date filter.
- **Paging.** `PageSize` (default 50, at most 1000), `Page`, `PageToken`; the answer's
  `next_page_uri` carries `PageToken=PA<sid of the page's last record>` and the same
  filters, as Twilio's does; a page continues after that record's current place. A
  record that changes place between two pages (a message getting its DateSent) can be
  skipped or seen twice, as with Twilio.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

from dispatcher.sandbox.provider import TwilioError

T = TypeVar("T")

DateFilter = tuple[str, dt.date]

_SUFFIXES = (("", "="), ("<", "<="), ("<=", "<="), (">", ">="), (">=", ">="))
PAGING_PARAMS = ("Page", "PageSize", "PageToken")


def _date_of(text: str) -> dt.date:
    text = text.strip()
    if len(text) == 10:
        return dt.date.fromisoformat(text)
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).date()


def date_filters(query: Mapping[str, str], name: str) -> list[DateFilter]:
    """The comparisons asked for `Name`, `Name<`, `Name>` (and `<=`, `>=`), as dates."""
    out: list[DateFilter] = []
    for suffix, op in _SUFFIXES:
        raw = query.get(name + suffix)
        if raw:
            try:
                out.append((op, _date_of(raw)))
            except ValueError:
                raise TwilioError(400, 20001, f"Invalid {name}{suffix} value {raw!r}") from None
    return out


def matches_dates(value: dt.datetime | None, filters: Iterable[DateFilter]) -> bool:
    """Whether a record's date passes every filter (no date: passes none)."""
    for op, bound in filters:
        if value is None:
            return False
        day = value.astimezone(dt.UTC).date()
        if (op == "=" and day != bound) or (op == "<=" and day > bound) or (op == ">=" and day < bound):
            return False
    return True


def ordered(records: Iterable[T], date_of: Callable[[T], dt.datetime | None], created_of: Callable[[T], Any],
            *, undated_first: bool) -> list[T]:
    """Newest first by `date_of`; records without it first or last (see the module docstring)."""
    items = list(records)
    dated = sorted((r for r in items if date_of(r) is not None),
                   key=lambda r: (date_of(r), created_of(r)), reverse=True)
    undated = sorted((r for r in items if date_of(r) is None), key=created_of, reverse=True)
    return [*undated, *dated] if undated_first else [*dated, *undated]


def page(query: Mapping[str, str], filters: Sequence[tuple[str, str]], path: str, key: str,
         records: Sequence[T], sid_of: Callable[[T], str], render: Callable[[Sequence[T]], list[dict[str, Any]]]
         ) -> dict[str, Any]:
    """One page of `records` (already filtered and ordered) as Twilio's list JSON."""
    try:
        page_size = max(1, min(1000, int(query.get("PageSize") or 50)))
        number = max(0, int(query.get("Page") or 0))
    except ValueError:
        raise TwilioError(400, 20001, "Invalid paging parameter") from None
    token = query.get("PageToken") or ""
    start_at = 0
    if token:
        if not token.startswith("PA"):
            raise TwilioError(400, 20001, f"Invalid PageToken {token!r}")
        after = token[2:]
        position = next((i for i, r in enumerate(records) if sid_of(r) == after), None)
        start_at = 0 if position is None else position + 1
    items = list(records[start_at:start_at + page_size])

    def uri(extra: list[tuple[str, str]]) -> str:
        return f"{path}?{urlencode([*filters, *extra])}"

    next_uri = None
    if start_at + page_size < len(records) and items:
        next_uri = uri([("PageSize", str(page_size)), ("Page", str(number + 1)),
                        ("PageToken", f"PA{sid_of(items[-1])}")])
    start = number * page_size
    return {
        key: render(items),
        "end": start + max(len(items), 1) - 1,
        "first_page_uri": uri([("PageSize", str(page_size)), ("Page", "0")]),
        "next_page_uri": next_uri,
        "page": number,
        "page_size": page_size,
        "previous_page_uri": None,
        "start": start,
        "uri": uri([("PageSize", str(page_size)), ("Page", str(number))]),
    }
