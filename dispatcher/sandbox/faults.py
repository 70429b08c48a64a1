"""Fault injection for the sandbox's create endpoints (`POST .../Messages.json`, `.../Calls.json`).

A fault spec is `kind:ratio` pairs separated by commas, e.g.
`"429:0.05,500:0.05,timeout:0.05,reset:0.05"`. The ratios are probabilities per create
request and must add up to at most 1. Kinds, and whether the provider *created* the
resource (which is what the client cannot know, and must reconcile):

| kind | created? | what the client sees |
|---|---|---|
| `429` | no | HTTP 429, Twilio error 20429, a `Retry-After` header (seconds) |
| `500`, `502`, `503`, any `5xx` | no | that HTTP status with a Twilio error body |
| `timeout` | **yes** | no answer until the client gives up (its read timeout) |
| `reset` | **yes** | the TCP connection is reset without any response |
| `reset_before` | no | the TCP connection is reset without any response |

`timeout` and `reset` are the ambiguous outcomes: the message exists at the provider
although the client saw an error. `reset_before` looks identical to the client, but
nothing was created, so a reconcile must find nothing and a retry is safe.
"""

from __future__ import annotations

import random
import re
from collections import deque
from dataclasses import dataclass

#: Fault kinds that are not an HTTP status code.
NON_HTTP_KINDS = ("timeout", "reset", "reset_before")
#: Kinds after which the resource exists although the client saw a failure.
CREATED_KINDS = frozenset({"timeout", "reset"})

_HTTP_KIND = re.compile(r"^(429|5\d\d)$")


class FaultSpecError(ValueError):
    """A fault spec string cannot be parsed; the message says what is allowed."""


def _check_kind(kind: str) -> str:
    kind = kind.strip().lower()
    if kind in NON_HTTP_KINDS or _HTTP_KIND.match(kind):
        return kind
    raise FaultSpecError(
        f"unknown fault kind {kind!r}; use 429, a 5xx status (500, 503, ...), timeout, reset or reset_before"
    )


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Parsed fault ratios: ((kind, ratio), ...) in the order given."""

    ratios: tuple[tuple[str, float], ...] = ()

    @classmethod
    def parse(cls, spec: str | None) -> FaultPlan:
        """Parse `"429:0.05,500:0.05,timeout:0.05,reset:0.05"`; empty means no faults."""
        if not spec or not spec.strip():
            return cls()
        ratios: list[tuple[str, float]] = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            kind, sep, ratio_text = part.partition(":")
            if not sep:
                raise FaultSpecError(f"fault {part!r}: write KIND:RATIO, e.g. 429:0.05")
            try:
                ratio = float(ratio_text)
            except ValueError:
                raise FaultSpecError(f"fault {part!r}: the ratio must be a number between 0 and 1") from None
            if not 0.0 <= ratio <= 1.0:
                raise FaultSpecError(f"fault {part!r}: the ratio must be between 0 and 1")
            ratios.append((_check_kind(kind), ratio))
        total = sum(r for _, r in ratios)
        if total > 1.0 + 1e-9:
            raise FaultSpecError(f"fault ratios add up to {total:g}; they must add up to at most 1")
        return cls(tuple(ratios))

    def __str__(self) -> str:
        return ",".join(f"{kind}:{ratio:g}" for kind, ratio in self.ratios)

    @property
    def total(self) -> float:
        return sum(r for _, r in self.ratios)


class FaultInjector:
    """Draws the fault (or none) for each create request. Seedable; forced faults first."""

    def __init__(self, plan: FaultPlan, rng: random.Random) -> None:
        self.plan = plan
        self._rng = rng
        self._forced: deque[str] = deque()

    def force(self, *kinds: str) -> None:
        """Make the next create requests fail with these kinds, in order (tests)."""
        self._forced.extend(_check_kind(k) for k in kinds)

    @property
    def forced(self) -> list[str]:
        return list(self._forced)

    def draw(self) -> str | None:
        if self._forced:
            return self._forced.popleft()
        if not self.plan.ratios:
            return None
        r = self._rng.random()
        acc = 0.0
        for kind, ratio in self.plan.ratios:
            acc += ratio
            if r < acc:
                return kind
        return None
