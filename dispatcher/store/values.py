"""Stored values <-> domain values, shared by the write functions (`store.repository`)
and the read models (`store.snapshots`, `store.timeline`): money to the cent, rates
without the storage's trailing zeros, comma-separated lists, enum look-ups by value.
"""

from __future__ import annotations

import functools
from decimal import Decimal

from dispatcher.domain import CaseStatus, Channel, MessageStatus, Product, Reason

CENT = Decimal("0.01")

# Enum look-ups by stored value: a dict hit is several times cheaper than `Enum(value)`,
# and the snapshot read model does millions of them.
CHANNEL_OF = {c.value: c for c in Channel}
CASE_STATUS_OF = {s.value: s for s in CaseStatus}
PRODUCT_OF = {p.value: p for p in Product}
MESSAGE_STATUS_OF = {s.value: s for s in MessageStatus}
REASON_OF = {r.value: r for r in Reason}


def exact_cents(value: Decimal, what: str) -> Decimal:
    """Money on its way in: exactly two decimals, so every backend stores and returns
    the same text (`1025.75`, `0.00`); refuses anything that would need rounding."""
    if not isinstance(value, Decimal):
        raise TypeError(f"{what} must be Decimal, got {type(value).__name__}")
    cents_value = value.quantize(CENT)
    if cents_value != value:
        raise ValueError(f"{what} {value} has more than 2 decimals")
    return cents_value if cents_value else Decimal("0.00")  # never "-0.00"


def cents(value: Decimal) -> Decimal:
    """Money with two decimals on every backend (PostgreSQL returns NUMERIC(18, 8) as
    `12.50000000`, SQLite the text as written); never rounds a value away."""
    quantized = value.quantize(CENT)
    return quantized if quantized == value else value


@functools.lru_cache(maxsize=4096)  # few distinct rates; normalize() is slow
def plain_rate(value: Decimal | None) -> Decimal | None:
    """A rate without the storage's trailing zeros (`0.00050000` -> `0.0005`)."""
    if value is None:
        return None
    value = value.normalize()
    return value.quantize(Decimal(1)) if value.as_tuple().exponent > 0 else value  # type: ignore[operator]


def split_list(text: str | None) -> tuple[str, ...]:
    """The items of a stored comma-separated list (zones, escalated stages); empty
    items dropped."""
    if not text:
        return ()
    parts = text.split(",")
    return tuple(parts) if "" not in parts else tuple(p for p in parts if p)
