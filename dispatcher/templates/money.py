"""Locale-aware money formatting: babel's output, computed once per (currency, locale).

`babel.numbers.format_currency` looks up the locale's pattern, symbols and the
currency's precision on every call and walks them through a general pattern engine
(scientific, significant digits, plural currency names): ~35 µs per amount, and a
message shows six amounts. Every call here gives the same text for a fraction of that:
the pattern's fixed parts (prefix, suffix, symbols, grouping, precision) are taken from
babel once per (currency, locale), and only the digits are laid out per call.

Hand-rolled on purpose, and kept honest two ways: a shape is used only if it
reproduces babel exactly on a set of probe amounts (otherwise every call goes to
babel), and a property test compares the two on random amounts in every supported
locale and currency.
"""

from __future__ import annotations

import decimal
import functools
import re
from dataclasses import dataclass
from decimal import Decimal

from babel import Locale
from babel.numbers import (
    format_currency,
    get_currency_precision,
    get_currency_symbol,
    get_decimal_symbol,
    get_group_symbol,
)

#: Amounts every shape must reproduce babel on before it is trusted.
_PROBES = tuple(Decimal(v) for v in (
    "0", "0.00", "0.5", "0.005", "0.015", "1", "9.99", "12.3", "999.995", "1000", "1234.5",
    "10000.00", "123456.78", "1234567.891", "99999999999.99", "-0.01", "-1234.56", "-0.00",
))


@functools.lru_cache(maxsize=64)
def babel_locale(locale: str) -> Locale:
    """`zh-CN` -> babel's Locale (parsing scans babel's data: cached)."""
    return Locale.parse(locale.replace("-", "_"))


@dataclass(frozen=True, slots=True)
class _Shape:
    """The fixed parts of a currency pattern, as babel's `NumberPattern.apply` uses them."""

    prefix: tuple[str, str]  # positive, negative; currency symbol already substituted
    suffix: tuple[str, str]
    group: str
    decimal: str
    grouping: tuple[int, int]
    min_int: int
    digits: int  # the currency's fraction digits
    quantum: Decimal

    def format(self, amount: Decimal) -> str:
        negative = int(amount.is_signed())
        # babel quantizes in the current context (ROUND_HALF_EVEN by default)
        text = f"{abs(amount).normalize().quantize(self.quantum):f}"
        whole, _, frac = text.partition(".")
        if len(whole) < self.min_int:
            whole = "0" * (self.min_int - len(whole)) + whole
        size, rest = self.grouping
        if len(whole) > size:
            head, tail = whole[:-size], whole[-size:]
            groups = [tail]
            while len(head) > rest:
                groups.append(head[-rest:])
                head = head[:-rest]
            groups.append(head)
            whole = self.group.join(reversed(groups))
        number = whole + (self.decimal + frac.ljust(self.digits, "0") if self.digits else "")
        return self.prefix[negative] + number + self.suffix[negative]


def _unquote(text: str) -> str:
    # CLDR quoting, as babel removes it: 'x' -> x, '' -> '
    return re.sub(r"'([^']*)'", lambda m: m.group(1) or "'", text)


def _shape(currency: str, locale: str) -> _Shape | None:
    loc = babel_locale(locale)
    pattern = loc.currency_formats["standard"]
    if pattern.exp_prec or "@" in pattern.pattern or pattern.scale or any(
        "¤¤¤" in part for part in (*pattern.prefix, *pattern.suffix)
    ):
        return None  # scientific, significant digits, scaled or plural names: babel only

    def fixed(part: str) -> str:
        part = part.replace("¤¤", currency.upper()).replace("¤", get_currency_symbol(currency, loc))
        return _unquote(part)

    digits = get_currency_precision(currency)
    shape = _Shape(
        prefix=(fixed(pattern.prefix[0]), fixed(pattern.prefix[1])),
        suffix=(fixed(pattern.suffix[0]), fixed(pattern.suffix[1])),
        group=get_group_symbol(loc),
        decimal=get_decimal_symbol(loc),
        grouping=(pattern.grouping[0], pattern.grouping[1]),
        min_int=pattern.int_prec[0],
        digits=digits,
        quantum=Decimal(1).scaleb(-digits),
    )
    with decimal.localcontext() as ctx:
        ctx.rounding = decimal.ROUND_HALF_EVEN
        agrees = all(shape.format(p) == format_currency(p, currency, locale=loc) for p in _PROBES)
    return shape if agrees else None


@functools.lru_cache(maxsize=256)
def money_formatter(currency: str, locale: str) -> _Shape | None:
    """The fast formatter of (currency, locale), or None when only babel will do."""
    return _shape(currency, locale)


def format_money(amount: Decimal, currency: str, locale: str) -> str:
    """Locale-aware money with its currency, exactly as `babel.numbers.format_currency`:
    `¥10,000.00` (zh-CN, CNY), `$10,000.00` (en-US, USD); a foreign currency is marked
    (`CN¥`, `US$`)."""
    shape = money_formatter(currency, locale)
    if shape is None:
        return format_currency(amount, currency, locale=babel_locale(locale))
    return shape.format(amount)
