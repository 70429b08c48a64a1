"""The fast money formatter writes exactly what babel writes."""

from __future__ import annotations

from decimal import Decimal

import pytest
from babel.numbers import format_currency
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.templates.money import babel_locale, format_money, money_formatter

#: The shipped locales and currencies, plus patterns with suffixes, other separators,
#: Indian grouping, zero- and three-digit currencies.
LOCALES = ["zh-CN", "en-US", "de-DE", "fr-FR", "hi-IN", "sv-SE", "ar-EG", "ja-JP"]
CURRENCIES = ["CNY", "USD", "EUR", "JPY", "KWD", "HKD"]

amounts = st.sampled_from([0, 1, 2, 3, 5]).flatmap(
    lambda places: st.decimals(min_value=Decimal("-1e13"), max_value=Decimal("1e13"), places=places,
                               allow_nan=False, allow_infinity=False))


@settings(max_examples=400, deadline=None)
@given(amount=amounts, currency=st.sampled_from(CURRENCIES), locale=st.sampled_from(LOCALES))
def test_same_text_as_babel(amount: Decimal, currency: str, locale: str) -> None:
    assert format_money(amount, currency, locale) == format_currency(amount, currency, locale=babel_locale(locale))


@pytest.mark.parametrize(("amount", "currency", "locale", "text"), [
    (Decimal("10000.00"), "CNY", "zh-CN", "¥10,000.00"),
    (Decimal("10000.00"), "USD", "en-US", "$10,000.00"),
    (Decimal("10000.00"), "CNY", "en-US", "CN¥10,000.00"),
    (Decimal("225.005"), "CNY", "zh-CN", "¥225.00"),  # half-even, as babel
    (Decimal("1234567.5"), "JPY", "en-US", "¥1,234,568"),
    (Decimal("-0.01"), "USD", "en-US", "-$0.01"),
])
def test_known_texts(amount: Decimal, currency: str, locale: str, text: str) -> None:
    assert format_money(amount, currency, locale) == text


def test_shipped_locales_use_the_fast_path() -> None:
    for locale in ("zh-CN", "en-US"):
        for currency in ("CNY", "USD"):
            assert money_formatter(currency, locale) is not None


def test_a_pattern_the_shape_cannot_reproduce_falls_back_to_babel() -> None:
    # de-CH writes the currency code before a minus sign: the probes catch it
    assert money_formatter("EUR", "de-CH") is None
    amount = Decimal("-12345.5")
    assert format_money(amount, "EUR", "de-CH") == format_currency(amount, "EUR", locale=babel_locale("de-CH"))
