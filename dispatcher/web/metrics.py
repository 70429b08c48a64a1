"""Prometheus text exposition: webhook counters (in process), messages by status
(from the store, cached so a scrape never costs more than one GROUP BY every few
seconds) and the providers' circuit breakers (`channels.guarded`)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

#: How long the store's message counts are reused between scrapes (monotonic seconds).
MESSAGE_COUNTS_TTL = 15.0


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class WebhookMetrics:
    """Thread-safe counters; one instance per app (per worker process)."""

    def __init__(self, message_counts: Callable[[], list[tuple[str, str, int]]], *,
                 extra: Callable[[], list[str]] | None = None) -> None:
        self._lock = threading.Lock()
        self._extra = extra  # more exposition lines (the calendar gauge, the providers' circuits)
        self._requests: Counter[tuple[str, str]] = Counter()
        self._message_counts = message_counts
        self._cached: tuple[float, list[tuple[str, str, int]]] | None = None

    def count(self, endpoint: str, result: str) -> None:
        with self._lock:
            self._requests[(endpoint, result)] += 1

    def requests(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._requests)

    def _messages(self) -> list[tuple[str, str, int]] | None:
        now = time.monotonic()
        cached = self._cached
        if cached is not None and now - cached[0] < MESSAGE_COUNTS_TTL:
            return cached[1]
        try:
            counts = self._message_counts()
        except Exception:  # noqa: BLE001 - the store is down: serve the counters anyway
            return cached[1] if cached else None
        self._cached = (now, counts)
        return counts

    def render(self) -> str:
        lines = [
            "# HELP dispatcher_webhooks_total Webhook and page requests by endpoint and result.",
            "# TYPE dispatcher_webhooks_total counter",
        ]
        for (endpoint, result), n in sorted(self.requests().items()):
            lines.append(f'dispatcher_webhooks_total{{endpoint="{_label(endpoint)}",result="{_label(result)}"}} {n}')
        messages = self._messages()
        lines += [
            "# HELP dispatcher_messages Messages in the store by channel and status"
            f" (refreshed at most every {MESSAGE_COUNTS_TTL:.0f} s).",
            "# TYPE dispatcher_messages gauge",
        ]
        for channel, status, n in sorted(messages or []):
            lines.append(f'dispatcher_messages{{channel="{_label(channel)}",status="{_label(status)}"}} {n}')
        lines.append(f"dispatcher_store_up {0 if messages is None else 1}")
        if self._extra is not None:
            lines += self._extra()
        return "\n".join(lines) + "\n"
