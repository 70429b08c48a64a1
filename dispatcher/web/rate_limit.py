"""Token buckets per client for the debtor's page (`/p/{token}`).

Why a bucket per client and link, plus a larger one per client: a debtor opens their
page a few times and makes one or two choices, so `requests_per_minute` for one link is
far above honest use, yet it stops a script hammering one page (each view reads the
case and each choice writes). The per-client bucket (`client_requests_per_minute`, five
links' worth by default) stops one address from walking through guessed tokens, which
the link's own bucket cannot see. Behind a proxy that shows its own address for every
request, that bucket would be shared by every debtor: turn it off there (0).
A bucket refills continuously (capacity per minute), so a short burst is allowed and a
steady flood is not.

In memory, per process: each web worker limits on its own, which bounds the load per
worker (what the limit protects) without a shared store on the page's path. The table
is bounded: beyond `max_keys` clients the least recently seen are forgotten. Time comes
from the injected clock, as everywhere.
"""

from __future__ import annotations

import threading
from collections import OrderedDict


class TokenBuckets:
    """`allow(key, now)`: take one token from `key`'s bucket if it has one."""

    def __init__(self, per_minute: int, *, max_keys: int = 50_000) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    def allow(self, key: str, now: float) -> bool:
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + max(0.0, now - at) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return allowed

    def retry_after(self) -> int:
        """Seconds until a drained bucket has a token again."""
        return max(1, int(1.0 / self.rate + 0.999))


class PageLimiter:
    """The two limits of the debtor's page: per client and link, per client (none when
    `per_client_minute` is 0)."""

    def __init__(self, per_minute: int, per_client_minute: int = 0) -> None:
        self.per_link = TokenBuckets(per_minute)
        self.per_client = TokenBuckets(per_client_minute) if per_client_minute else None

    def allow(self, client: str, token: str, now: float) -> bool:
        if self.per_client is not None and not self.per_client.allow(client, now):
            return False
        return self.per_link.allow(f"{client} {token}", now)
