"""The per-sender token bucket: never more than its rate (plus its burst), however many
callers wait at once."""

from __future__ import annotations

import asyncio

import pytest

from dispatcher.services.pacing import MIN_WAIT_SECONDS, SenderLimits, TokenBucket


async def _grant_times(bucket: TokenBucket, callers: int, each: int) -> list[float]:
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def caller() -> None:
        for _ in range(each):
            await bucket.acquire()
            times.append(loop.time())

    await asyncio.gather(*(caller() for _ in range(callers)))
    return sorted(times)


def _max_in_window(times: list[float], window: float) -> int:
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.parametrize(("rate", "callers", "each"), [(200.0, 64, 2), (40.0, 8, 3), (5.0, 3, 2)])
async def test_never_faster_than_the_rate_plus_the_burst(rate: float, callers: int, each: int) -> None:
    bucket = TokenBucket(rate)
    times = await _grant_times(bucket, callers, each)
    assert len(times) == callers * each
    for window in (0.05, 0.1, 0.25, 0.5):
        # a slow machine only spreads the grants out; it can never crowd them together
        assert _max_in_window(times, window) <= bucket.capacity + rate * window + 1e-9
    elapsed = times[-1] - times[0]
    assert elapsed >= (len(times) - bucket.capacity) / rate - 0.01


async def test_waiters_are_released_together_not_one_wake_up_per_token() -> None:
    bucket = TokenBucket(200.0)  # burst 20, one token every 5 ms
    times = await _grant_times(bucket, 40, 1)
    after_burst = times[20:]
    distinct = len({round(t, 3) for t in after_burst})
    # 20 tokens after the burst refill over ~100 ms: with one wake-up per 25 ms that is a
    # handful of release moments, not 20
    assert distinct <= 0.1 / MIN_WAIT_SECONDS + 3


def test_the_minimum_wait_never_exceeds_half_the_bucket() -> None:
    slow = TokenBucket(5.0)  # burst 1: a token every 200 ms
    assert slow._min_wait <= slow.capacity / slow.rate / 2
    with pytest.raises(ValueError, match="rate must be > 0"):
        TokenBucket(0)


def test_one_bucket_per_channel_and_sender() -> None:
    limits = SenderLimits({"sms": 50.0})
    assert limits.bucket("sms", "+1") is limits.bucket("sms", "+1")
    assert limits.bucket("sms", "+1") is not limits.bucket("sms", "+2")
    assert limits.bucket("sms", None).rate == 50.0
    assert limits.bucket("voice", None).rate == 10.0  # unconfigured channel: the default


async def test_a_429_pauses_the_bucket_once_not_once_per_answer() -> None:
    loop = asyncio.get_running_loop()
    bucket = TokenBucket(1000.0)  # tokens to spare: only the pause can hold a caller
    await bucket.acquire()
    bucket.penalise(0.3)
    bucket.penalise(0.3)  # a second 429 from a call that was in flight at the same time
    bucket.penalise(0.1)
    started = loop.time()
    await bucket.acquire()
    waited = loop.time() - started
    assert waited >= 0.3 - 0.005
    assert waited < 0.6  # held for the longest Retry-After, not for their sum
    bucket.penalise(0)  # nothing to hold
    started = loop.time()
    await bucket.acquire()
    assert loop.time() - started < 0.05
