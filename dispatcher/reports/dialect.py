"""The few SQL expressions that differ between PostgreSQL and SQLite.

Dates are compared as day numbers (days since 1970-01-01, integers); money is summed in
integer cents (every stored amount has at most 2 decimals: SPEC section 3), which is
exact on both databases although SQLite keeps money as text."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str

    @property
    def postgres(self) -> bool:
        return self.name == "postgresql"

    def date_day(self, expr: str) -> str:
        """A DATE column as a day number."""
        if self.postgres:
            return f"({expr} - DATE '1970-01-01')"
        return f"CAST(julianday({expr}) - 2440587.5 AS INTEGER)"

    def epoch(self, expr: str) -> str:
        """An instant as whole seconds since the epoch."""
        if self.postgres:
            return f"CAST(EXTRACT(EPOCH FROM {expr}) AS BIGINT)"
        return f"CAST(strftime('%s', {expr}) AS INTEGER)"

    def instant_day(self, expr: str) -> str:
        """An instant as the day number of its date in the organisation's zone
        (`:tz`; SQLite: the fixed `:tz_offset` seconds, see `Period.offset_seconds`)."""
        if self.postgres:
            return f"(CAST(({expr} AT TIME ZONE :tz) AS DATE) - DATE '1970-01-01')"
        return f"((CAST(strftime('%s', {expr}) AS INTEGER) + :tz_offset) / 86400)"

    def cents(self, expr: str) -> str:
        """A money column in integer cents (exact: amounts carry at most 2 decimals)."""
        if self.postgres:
            return f"CAST(ROUND({expr} * 100) AS BIGINT)"
        return f"CAST(ROUND(CAST({expr} AS REAL) * 100) AS INTEGER)"

    def within_7_days(self, later: str, earlier: str) -> str:
        """`later` is after `earlier` by at most 7 days."""
        if self.postgres:
            return f"({later} > {earlier} AND {later} <= {earlier} + INTERVAL '7 days')"
        return f"(julianday({later}) > julianday({earlier}) AND julianday({later}) <= julianday({earlier}) + 7)"

    def greatest(self, *exprs: str) -> str:
        return f"{'GREATEST' if self.postgres else 'MAX'}({', '.join(exprs)})"

    def least(self, *exprs: str) -> str:
        return f"{'LEAST' if self.postgres else 'MIN'}({', '.join(exprs)})"
