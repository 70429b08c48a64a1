"""The date a caller keys in for a promise to pay (IVR option 2): month then day, within
the window, the year inferred; and how it is said back in both languages."""

from __future__ import annotations

import datetime as dt

import pytest

from dispatcher.web.voice import keypad_date, parse_keypad_date, spoken_day

FIRST, LAST = dt.date(2026, 12, 7), dt.date(2026, 12, 14)


@pytest.mark.parametrize(("digits", "expected"), [
    ("1207", dt.date(2026, 12, 7)),  # today
    ("1210", dt.date(2026, 12, 10)),
    ("1214", dt.date(2026, 12, 14)),  # the last day of the window
])
def test_a_date_in_the_window(digits: str, expected: dt.date) -> None:
    assert parse_keypad_date(digits, FIRST, LAST) == expected


@pytest.mark.parametrize("digits", [
    "1206",  # yesterday (and next year's Dec 6 is far outside)
    "1215",  # one day too far
    "0110",  # next January: outside a 7-day window
    "1332", "0000", "1200", "0230", "1232",  # no such day
    "121", "12100", "", "12a0", "#121",  # not four digits
])
def test_anything_else_is_refused(digits: str) -> None:
    assert parse_keypad_date(digits, FIRST, LAST) is None


def test_the_year_is_the_next_that_puts_the_date_in_the_window() -> None:
    first, last = dt.date(2026, 12, 29), dt.date(2027, 1, 5)
    assert parse_keypad_date("0103", first, last) == dt.date(2027, 1, 3)
    assert parse_keypad_date("1231", first, last) == dt.date(2026, 12, 31)
    assert parse_keypad_date("0229", dt.date(2028, 2, 25), dt.date(2028, 3, 3)) == dt.date(2028, 2, 29)
    assert parse_keypad_date("0229", dt.date(2027, 2, 25), dt.date(2027, 3, 3)) is None  # not a leap year


def test_keys_and_words() -> None:
    assert keypad_date(dt.date(2027, 1, 3)) == "0103"
    assert spoken_day(dt.date(2026, 12, 10), "zh-CN") == "12月10日"
    assert spoken_day(dt.date(2026, 12, 10), "en-US") == "December 10"
    for day in (FIRST, LAST, dt.date(2027, 1, 3)):
        assert parse_keypad_date(keypad_date(day), day, day) == day
