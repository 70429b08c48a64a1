"""A provider behind its circuit breaker (`channels.breaker`, the pure state machine).

`Circuit` holds one provider's breaker in this process, reads the injected clock and
logs every change of state. `guard(adapter, circuit)` wraps a channel:
- `send`: while the circuit is open nothing is handed to the provider and no connection
  is made; the message gets an `unreachable`, non-ambiguous result (the outbox puts it
  back in the queue without spending an attempt). A result that says the connection
  could not be opened counts as a failure, an answer as a success, an ambiguous outcome
  (timeout or reset after the request went out) as neither;
- `reconcile` and `fetch_status` (the status repair job): refused with
  `ProviderUnavailable` while open (the row stays in flight, the look-up waits for the
  next pass); a failure to connect counts as a failure, the provider's answer —
  including a refusal — as a success, a timeout after sending as neither;
- `probe_if_due`: at most one probe per `probe_seconds` while open (the sender calls it
  at the start of every pass); its success closes the circuit.
`Circuits` is the process's set, one per channel; `/metrics` shows it as the gauge
`dispatcher_provider_circuit` (0 closed, 1 open, 2 probing).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import ClassVar, TypeVar

import aiosmtplib

from dispatcher.channels.base import (
    ChannelAdapter,
    OutboundMessage,
    Probeable,
    ProviderStatus,
    SendResult,
    StatusSource,
)
from dispatcher.channels.breaker import Breaker, BreakerSettings, CircuitState
from dispatcher.channels.http11 import ConnectError
from dispatcher.clock import Clock
from dispatcher.domain import Channel, MessageStatus

log = logging.getLogger("dispatcher.channels.breaker")

T = TypeVar("T")


class ProviderUnavailable(ConnectionError):
    """The provider's circuit is open: it was not asked."""


def is_connection_failure(exc: BaseException) -> bool:
    """The connection to the provider could not be opened (refused, reset or timed out
    while connecting). A timeout or reset once a request went out is not counted: the
    provider may be slow or flaky rather than down, and its answer is merely unknown."""
    return isinstance(exc, ConnectError | ConnectionRefusedError | aiosmtplib.SMTPConnectError)


class Circuit:
    """One provider's breaker in this process (thread-safe; transitions logged)."""

    def __init__(self, channel: Channel, settings: BreakerSettings, clock: Clock) -> None:
        self.channel = channel
        self.provider = channel.value
        self.clock = clock
        self._lock = threading.Lock()
        self._breaker = Breaker(settings)
        #: how often the circuit opened, for /metrics
        self.opened = 0

    @property
    def state(self) -> CircuitState:
        return self._breaker.state

    @property
    def breaker(self) -> Breaker:
        return self._breaker

    def _now(self) -> float:
        return self.clock.now().timestamp()

    def allows_calls(self) -> bool:
        return self._breaker.allows_calls()

    def _move(self, new: Breaker, why: str) -> None:
        old = self._breaker
        self._breaker = new
        if new.state is old.state:
            return
        if new.state is CircuitState.OPEN and old.state is CircuitState.CLOSED:
            self.opened += 1
            log.warning("circuit %s: open after %d consecutive connection failures (%s); messages wait, "
                        "one probe every %.0f s", self.provider, new.failures, why, new.settings.probe_seconds,
                        extra={"circuit": self.provider, "state": new.state.value})
        elif new.state is CircuitState.CLOSED:
            log.warning("circuit %s: closed (%s); sending resumes", self.provider, why,
                        extra={"circuit": self.provider, "state": new.state.value})
        else:
            log.info("circuit %s: %s (%s)", self.provider, new.state.value, why,
                     extra={"circuit": self.provider, "state": new.state.value})

    def success(self, why: str) -> None:
        with self._lock:
            self._move(self._breaker.success(self._now()), why)

    def failure(self, why: str) -> None:
        with self._lock:
            self._move(self._breaker.failure(self._now()), why)

    def begin_probe(self) -> bool:
        """Whether a probe may start now (and then it has started)."""
        with self._lock:
            now = self._now()
            if not self._breaker.probe_due(now):
                return False
            self._move(self._breaker.start_probe(now), "probing the provider")
            return True


class Circuits:
    """The process's circuits, one per channel, built on first use."""

    def __init__(self, settings: BreakerSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._circuits: dict[Channel, Circuit] = {}
        self._lock = threading.Lock()

    def for_channel(self, channel: Channel) -> Circuit:
        with self._lock:
            circuit = self._circuits.get(channel)
            if circuit is None:
                circuit = self._circuits[channel] = Circuit(channel, self.settings, self.clock)
            return circuit

    def all(self) -> list[Circuit]:
        with self._lock:
            return sorted(self._circuits.values(), key=lambda c: c.provider)

    def metric_lines(self) -> list[str]:
        """Prometheus text for /metrics."""
        lines = [
            "# HELP dispatcher_provider_circuit A provider's circuit breaker: 0 closed, 1 open (messages wait),"
            " 2 probing.",
            "# TYPE dispatcher_provider_circuit gauge",
        ]
        circuits = self.all()
        lines += [f'dispatcher_provider_circuit{{channel="{c.provider}"}} {c.state.gauge}' for c in circuits]
        lines += ["# HELP dispatcher_provider_circuit_opened_total How often a provider's circuit opened.",
                  "# TYPE dispatcher_provider_circuit_opened_total counter"]
        lines += [f'dispatcher_provider_circuit_opened_total{{channel="{c.provider}"}} {c.opened}' for c in circuits]
        return lines


class GuardedChannel:
    """A channel behind its provider's circuit (see the module docstring)."""

    channel: ClassVar[Channel]
    name: ClassVar[str]

    def __init__(self, inner: ChannelAdapter, circuit: Circuit) -> None:
        self.inner = inner
        self.circuit = circuit

    def _open_result(self) -> SendResult:
        return SendResult(None, MessageStatus.FAILED, retryable=True, unreachable=True,
                          error=f"{self.name} unreachable (circuit open); not attempted")

    async def send(self, message: OutboundMessage) -> SendResult:
        if not self.circuit.allows_calls():
            return self._open_result()
        result = await self.inner.send(message)
        if result.unreachable:
            self.circuit.failure(result.error or "connection failed")
        elif not result.ambiguous:  # an answer (an ambiguous outcome proves nothing either way)
            self.circuit.success("the provider answered")
        return result

    async def _asked(self, call: Callable[[], Awaitable[T]]) -> T:
        if not self.circuit.allows_calls():
            raise ProviderUnavailable(f"{self.name}: circuit open")
        try:
            answer = await call()
        except Exception as exc:
            if is_connection_failure(exc):
                self.circuit.failure(type(exc).__name__)
            elif not isinstance(exc, OSError):  # an answer, if a refusal; a timeout proves nothing
                self.circuit.success("the provider answered")
            raise
        self.circuit.success("the provider answered")
        return answer

    async def reconcile(self, message: OutboundMessage, since: dt.datetime) -> SendResult | None:
        return await self._asked(lambda: self.inner.reconcile(message, since))

    async def probe_if_due(self) -> bool:
        """Probe the provider if the circuit is open and a probe is due. Returns whether
        the circuit is closed afterwards."""
        if not self.circuit.begin_probe():
            return self.circuit.allows_calls()
        assert isinstance(self.inner, Probeable)
        try:
            await self.inner.probe()
        except Exception as exc:  # noqa: BLE001 - a probe's failure is the answer
            if isinstance(exc, OSError):  # not reached, or no answer in time: still open
                self.circuit.failure(f"probe failed: {type(exc).__name__}")
                return False
        self.circuit.success("a probe was answered")
        return True

    async def aclose(self) -> None:
        await self.inner.aclose()


class GuardedStatusChannel(GuardedChannel):
    """A guarded channel whose provider can be asked for a status (Twilio)."""

    async def fetch_status(self, provider_id: str) -> ProviderStatus | None:
        inner = self.inner
        assert isinstance(inner, StatusSource)
        return await self._asked(lambda: inner.fetch_status(provider_id))


_CLASSES: dict[tuple[type, type], type[GuardedChannel]] = {}


def guard(adapter: ChannelAdapter, circuits: Circuits) -> ChannelAdapter:
    """`adapter` behind its channel's circuit; an adapter that cannot be probed (the file
    transport, a recording fake) is returned as it is."""
    if not isinstance(adapter, Probeable):
        return adapter
    base = GuardedStatusChannel if isinstance(adapter, StatusSource) else GuardedChannel
    key = (base, type(adapter))
    cls = _CLASSES.get(key)
    if cls is None:
        cls = _CLASSES[key] = type(f"Guarded{type(adapter).__name__}", (base,),
                                   {"channel": adapter.channel, "name": adapter.name})
    return cls(adapter, circuits.for_channel(adapter.channel))


def guard_all(channels: Mapping[Channel, ChannelAdapter], circuits: Circuits) -> dict[Channel, ChannelAdapter]:
    """Every adapter of `channels` behind its circuit."""
    return {channel: guard(adapter, circuits) for channel, adapter in channels.items()}


async def probe_due(channels: Mapping[Channel, ChannelAdapter]) -> None:
    """Probe every open circuit whose probe is due (the sender, at the start of a pass)."""
    for adapter in channels.values():
        if isinstance(adapter, GuardedChannel):
            await adapter.probe_if_due()


def paused_channels(channels: Mapping[Channel, ChannelAdapter]) -> list[Channel]:
    """The channels whose provider's circuit is open: nothing of theirs is claimed."""
    return [channel for channel, adapter in channels.items()
            if isinstance(adapter, GuardedChannel) and not adapter.circuit.allows_calls()]
