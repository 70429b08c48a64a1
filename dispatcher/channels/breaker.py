"""The circuit breaker's state machine, per provider: PURE (no I/O; the time of every
event is given by the caller, read from the injected clock).

Consecutive connection failures (refused, reset or timed out without any answer from
the provider) open the circuit. While it is open nothing is handed to the provider; at
most one probe per `probe_seconds` asks whether it is back. A success — the probe's,
or that of any call that was already under way — closes it; a failed probe keeps it
open for another `probe_seconds`. A provider's *answer*, even a refusal (a 4xx), is a
success here: the provider is reachable.

    closed --(failures_to_open consecutive failures)--> open
    open --(probe_seconds passed: a probe may start)--> probing
    probing --(success)--> closed        probing --(failure)--> open
    probing --(no result within probe_seconds)--> probing (another probe may start)

`dispatcher.channels.guarded` drives it around a real channel (sends, reconcile and
status look-ups, the probe itself) and logs its transitions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class CircuitState(enum.Enum):
    """The circuit's state; `gauge` is its value on `/metrics`."""

    CLOSED = "closed"
    OPEN = "open"
    PROBING = "probing"  # open, one probe under way (a "half-open" circuit)

    @property
    def gauge(self) -> int:
        return {"closed": 0, "open": 1, "probing": 2}[self.value]


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """`[sending.breaker]` of the configuration."""

    failures_to_open: int = 5
    probe_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.failures_to_open < 1:
            raise ValueError("failures_to_open must be at least 1")
        if self.probe_seconds <= 0:
            raise ValueError("probe_seconds must be positive")


@dataclass(frozen=True, slots=True)
class Breaker:
    """One provider's circuit, as an immutable value: every event returns the next one.

    `failures` counts consecutive connection failures while closed; `probe_at` is when
    the next probe may start (open) or when the current one is given up (probing)."""

    settings: BreakerSettings = BreakerSettings()
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    probe_at: float = 0.0
    opened_at: float | None = None

    @property
    def closed(self) -> bool:
        return self.state is CircuitState.CLOSED

    def allows_calls(self) -> bool:
        """Whether a message (or a reconcile, a status look-up) may go to the provider."""
        return self.state is CircuitState.CLOSED

    def probe_due(self, now: float) -> bool:
        """Whether a probe may start at `now` (never while closed)."""
        return not self.closed and now >= self.probe_at

    def start_probe(self, now: float) -> Breaker:
        """A probe starts (only when `probe_due`): the next may start `probe_seconds`
        later at the earliest, whatever this one's fate."""
        if not self.probe_due(now):
            raise ValueError("no probe is due")
        return replace(self, state=CircuitState.PROBING, probe_at=now + self.settings.probe_seconds)

    def success(self, now: float) -> Breaker:
        """The provider answered (a probe, a send, a look-up): closed."""
        return replace(self, state=CircuitState.CLOSED, failures=0, probe_at=0.0, opened_at=None)

    def failure(self, now: float) -> Breaker:
        """A connection to the provider failed without any answer."""
        if self.state is CircuitState.CLOSED:
            failures = self.failures + 1
            if failures < self.settings.failures_to_open:
                return replace(self, failures=failures)
            return replace(self, state=CircuitState.OPEN, failures=failures,
                           probe_at=now + self.settings.probe_seconds, opened_at=now)
        if self.state is CircuitState.PROBING:
            # the probe (or a call begun before the circuit opened) failed: wait a whole
            # probe interval from now, not from the probe's start
            return replace(self, state=CircuitState.OPEN, failures=self.failures + 1,
                           probe_at=max(self.probe_at, now + self.settings.probe_seconds))
        return replace(self, failures=self.failures + 1)  # open: a late failure of an earlier call

    def seconds_to_probe(self, now: float) -> float:
        """How long until the next probe may start (0 when closed or due)."""
        return 0.0 if self.closed else max(0.0, self.probe_at - now)
