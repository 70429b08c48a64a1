"""A channel behind its circuit (`channels.guarded`), with a scripted provider and a
FakeClock: what reaches the provider while the circuit is open, the probe's pace, the
log lines and the /metrics gauge."""

from __future__ import annotations

import datetime as dt
import logging
from typing import ClassVar

import pytest

from dispatcher.channels.base import OutboundMessage, ProviderStatus, SendResult, StatusSource
from dispatcher.channels.breaker import BreakerSettings
from dispatcher.channels.guarded import Circuits, ProviderUnavailable, guard, paused_channels, probe_due
from dispatcher.clock import FakeClock
from dispatcher.domain import Channel, MessageStatus

START = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)


class ScriptedProvider:
    """Up or down; counts every request that reached it."""

    channel: ClassVar[Channel] = Channel.SMS
    name: ClassVar[str] = "scripted"

    def __init__(self) -> None:
        self.up = False
        self.requests = 0

    async def send(self, message: OutboundMessage) -> SendResult:
        self.requests += 1
        if not self.up:
            return SendResult(None, MessageStatus.FAILED, retryable=True, unreachable=True, error="refused")
        return SendResult(f"SM{message.message_id}", MessageStatus.SENT)

    async def reconcile(self, message: OutboundMessage, since: dt.datetime) -> SendResult | None:
        self.requests += 1
        if not self.up:
            raise ConnectionRefusedError("refused")
        return None

    async def fetch_status(self, provider_id: str) -> ProviderStatus | None:
        self.requests += 1
        if not self.up:
            raise ConnectionRefusedError("refused")
        return None

    async def probe(self) -> None:
        self.requests += 1
        if not self.up:
            raise ConnectionRefusedError("refused")

    async def aclose(self) -> None:
        return None


def message(n: int) -> OutboundMessage:
    return OutboundMessage(n, "C1", Channel.SMS, "+8613800000000", "hello", f"m{n}")


async def test_open_circuit_spares_the_provider_probes_at_its_pace_and_closes_on_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(START)
    circuits = Circuits(BreakerSettings(failures_to_open=3, probe_seconds=30), clock)
    provider = ScriptedProvider()
    channel = guard(provider, circuits)
    channels = {Channel.SMS: channel}
    assert isinstance(channel, StatusSource), "a provider that can be asked stays one"
    caplog.set_level(logging.INFO, logger="dispatcher.channels.breaker")

    results = [await channel.send(message(n)) for n in range(10)]
    assert provider.requests == 3, "the circuit opened after three refusals"
    assert all(r.unreachable and not r.ambiguous for r in results)
    assert "not attempted" in (results[-1].error or "")
    assert paused_channels(channels) == [Channel.SMS]
    with pytest.raises(ProviderUnavailable):
        await channel.reconcile(message(1), START)
    with pytest.raises(ProviderUnavailable):
        await channel.fetch_status("SM1")  # type: ignore[attr-defined]
    assert provider.requests == 3
    assert 'dispatcher_provider_circuit{channel="sms"} 1' in circuits.metric_lines()
    assert any("circuit sms: open after 3 consecutive connection failures" in r.getMessage() for r in caplog.records)

    for _ in range(20):  # a pass every 5 s for 100 s: a probe every 30 s at most
        clock.advance(seconds=5)
        await probe_due(channels)
    assert provider.requests == 3 + 3, "probes at 30, 60 and 90 s"

    provider.up = True
    clock.advance(seconds=19)  # 119 s: the failed probe at 90 s set the next at 120 s
    await probe_due(channels)
    assert provider.requests == 6, "the next probe is not due yet"
    clock.advance(seconds=1)
    await probe_due(channels)
    assert paused_channels(channels) == []
    assert (await channel.send(message(99))).provider_id == "SM99"
    assert 'dispatcher_provider_circuit{channel="sms"} 0' in circuits.metric_lines()
    assert 'dispatcher_provider_circuit_opened_total{channel="sms"} 1' in circuits.metric_lines()
    assert any("circuit sms: closed" in r.getMessage() for r in caplog.records)


async def test_a_provider_refusal_is_an_answer_not_an_outage() -> None:
    clock = FakeClock(START)
    circuits = Circuits(BreakerSettings(failures_to_open=2, probe_seconds=30), clock)
    provider = ScriptedProvider()
    provider.up = True
    channel = guard(provider, circuits)

    class Refusal(Exception):
        pass

    async def refuse(message: OutboundMessage, since: dt.datetime) -> SendResult | None:
        raise Refusal("HTTP 400")

    provider.reconcile = refuse  # type: ignore[method-assign]
    for _ in range(5):
        with pytest.raises(Refusal):
            await channel.reconcile(message(1), START)
    assert circuits.for_channel(Channel.SMS).allows_calls()


def test_adapters_that_cannot_be_probed_are_left_alone(tmp_path: object) -> None:
    from dispatcher.channels.file import FileChannel

    circuits = Circuits(BreakerSettings(), FakeClock(START))
    adapter = FileChannel(Channel.EMAIL, str(tmp_path))
    assert guard(adapter, circuits) is adapter
