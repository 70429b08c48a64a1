"""What the Twilio SMS and voice channels do alike: reconcile, status, probe and close.

Each channel names its list resource (`messages` / `calls`), the date filter of its
list (`date_sent_after` / `start_time_after`, see `twilio_reconcile`), whether the
body identifies a record, its status map, and how an SDK instance becomes a
`ProviderRecord`; sending stays in the channel's own module.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from twilio.base.exceptions import TwilioRestException

from dispatcher.channels.base import OutboundMessage, ProviderStatus, SendResult
from dispatcher.channels.reconcile import Ledger, NoLedger, Outcome, ProviderRecord
from dispatcher.channels.twilio_client import make_client
from dispatcher.channels.twilio_reconcile import (
    attempt_for,
    gather_and_decide,
    log_verdict,
    record_result,
    unknown_result,
    walk,
)
from dispatcher.clock import Clock
from dispatcher.domain import MessageStatus


class TwilioChannel(ABC):
    """The part of a Twilio channel that asks Twilio about records already created."""

    #: The account's list resource: `messages` or `calls`.
    resource: ClassVar[str]
    #: The list's date filter (a date on Twilio's clock) for the date-filtered walk.
    date_filter: ClassVar[str]
    #: Whether reconcile matches the exact body (SMS) or not (calls: Twilio shows none).
    compare_body: ClassVar[bool]
    #: Twilio's statuses onto ours, and those after which nothing changes any more.
    statuses: ClassVar[Mapping[str, MessageStatus]]
    final_statuses: ClassVar[frozenset[str]]
    #: Each walk of `reconcile` reads at most this many records to the number; a longer
    #: list leaves the evidence incomplete ("absent" is then never concluded).
    reconcile_scan_limit: ClassVar[int] = 1000

    def __init__(self, account_sid: str, auth_token: str, api_url: str | None = None, timeout: float = 15.0, *,
                 clock: Clock | None = None, ledger: Ledger | None = None) -> None:
        self._client, self._http = make_client(account_sid, auth_token, api_url, timeout, clock)
        self._ledger: Ledger = ledger or NoLedger()

    @abstractmethod
    def _record(self, instance: Any) -> ProviderRecord:
        """An SDK instance of the list as `reconcile.decide` sees it."""

    @abstractmethod
    def _status_details(self, instance: Any) -> dict[str, str | None]:
        """The channel's own fields of `ProviderStatus` (error code, answered by, duration)."""

    def _list(self) -> Any:
        return getattr(self._client.api.account, self.resource)

    async def reconcile(self, message: OutboundMessage, since: dt.datetime) -> SendResult | None:
        """Whether the ambiguous attempt stamped at `since` (our clock) reached Twilio:
        found (its record), None (Twilio has no record that could be it), or failed with
        "outcome unknown: ..." when the evidence cannot tell (see `channels.reconcile`).
        Raises when Twilio cannot be asked."""
        attempt = attempt_for(message, since, compare_body=self.compare_body)
        records = self._list()
        filters: dict[str, object] = {"to": message.to}
        if attempt.sender:
            filters["from_"] = attempt.sender
        verdict = await gather_and_decide(
            attempt,
            unfiltered=lambda: walk(records.stream_async, self.reconcile_scan_limit, **filters),
            dated=lambda day: walk(records.stream_async, self.reconcile_scan_limit, **{self.date_filter: day},
                                   **filters),
            to_record=self._record,
            skew=lambda: self._http.skew,
            ledger=self._ledger,
            limit=self.reconcile_scan_limit,
        )
        log_verdict(message, verdict)
        if verdict.outcome is Outcome.ABSENT:
            return None
        if verdict.outcome is Outcome.UNKNOWN:
            return unknown_result(verdict)
        assert verdict.sid is not None
        record = verdict.record or await self._fetch_record(verdict.sid)
        if record is None:  # our webhook named a SID the list does not show: it was sent / placed
            return SendResult(provider_id=verdict.sid, status=MessageStatus.SENT, error="reconciled")
        return record_result(record, self.statuses, None)

    async def _fetch(self, sid: str) -> Any | None:
        try:
            return await self._list()(sid).fetch_async()
        except TwilioRestException as exc:
            if exc.status == 404:
                return None
            raise

    async def _fetch_record(self, sid: str) -> ProviderRecord | None:
        found = await self._fetch(sid)
        return None if found is None else self._record(found)

    async def fetch_status(self, provider_id: str) -> ProviderStatus | None:
        """The message's or call's status at Twilio now (the status repair job); None if
        unknown to it."""
        found = await self._fetch(provider_id)
        if found is None or not found.status:
            return None
        return ProviderStatus(
            provider_id=provider_id,
            provider_status=found.status,
            status=self.statuses.get(found.status, MessageStatus.SENT),
            final=found.status in self.final_statuses,
            **self._status_details(found),
        )

    async def probe(self) -> None:
        """Ask Twilio for one record of the list (the circuit breaker's probe): any answer,
        even a refusal, proves it reachable; raises `OSError` when it is not."""
        try:
            await self._list().page_async(page_size=1)
        except TwilioRestException:
            return

    async def aclose(self) -> None:
        await self._http.close()
