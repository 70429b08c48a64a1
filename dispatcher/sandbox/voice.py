"""Plays an answered call: fetch TwiML, "speak" it, press keys, follow redirects.

Supported verbs: `<Say>`, `<Play>`, `<Pause length>`, `<Gather action method numDigits
timeout actionOnEmptyResult>` (with nested `<Say>`/`<Play>`/`<Pause>`), `<Redirect
method>`, `<Dial action>` (a number as text or in `<Number>`), `<Hangup>`, `<Reject>`.
As on Twilio: relative URLs resolve against the URL of the document they appear in; a
`<Gather>` without `action` posts back to its own document; a `<Gather>` that gets no
keys falls through to the next verb; reaching the end of a document hangs up; a
document that cannot be fetched or parsed ends the call (error 11200 / 12100).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin

from dispatcher.sandbox.options import CallBehaviour
from dispatcher.sandbox.records import CallRecord
from dispatcher.sandbox.webhooks import WebhookClient

_SPEECH_CHARS_PER_SECOND = 12
_DATE_KEYS = re.compile(r"date\+(\d{1,3})")


@dataclass
class _Document:
    url: str | None
    verbs: list[ET.Element]


@dataclass
class PlayResult:
    seconds: int = 0
    spoken: list[str] = field(default_factory=list)
    digits: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def parse_twiml(text: str) -> list[ET.Element]:
    """The verbs of a `<Response>` document. Raises ValueError when it is not TwiML."""
    try:
        root = ET.fromstring(text.strip())
    except ET.ParseError as exc:
        raise ValueError(f"not XML: {exc}") from None
    if root.tag != "Response":
        raise ValueError(f"root element is <{root.tag}>, expected <Response>")
    return list(root)


def _speech_seconds(text: str) -> int:
    return max(1, math.ceil(len(text) / _SPEECH_CHARS_PER_SECOND))


def _int_attr(element: ET.Element, name: str, default: int) -> int:
    try:
        return int(element.get(name, default))
    except ValueError:
        return default


class CallPlayer:
    """Walks the TwiML of one call, recording what was said and pressed on the record."""

    def __init__(
        self,
        record: CallRecord,
        behaviour: CallBehaviour,
        client: WebhookClient,
        base_params: Mapping[str, str],
        *,
        now: Callable[[], dt.datetime],
        max_documents: int = 25,
    ) -> None:
        self.record = record
        self.behaviour = behaviour
        self.client = client
        self.base_params = dict(base_params)
        self.max_documents = max_documents
        self._documents = 0
        self._keys: deque[str] = deque() if behaviour.is_machine else deque(behaviour.digits)
        self._now = now  # the sandbox's clock
        self.seconds = 0

    async def play(self) -> int:
        """Run the call to its end; returns the estimated talk time in seconds."""
        if self.record.url:
            doc = await self._fetch(self.record.url, self.record.method, {})
        elif self.record.twiml:
            doc = self._parse(None, self.record.twiml)
        else:
            doc = None
        while doc is not None:
            doc = await self._run(doc)
        return max(1, self.seconds)

    async def _run(self, doc: _Document) -> _Document | None:
        """Execute one document; returns the next document, or None at hang-up."""
        for verb in doc.verbs:
            tag = verb.tag
            if tag in ("Say", "Play", "Pause"):
                self._media(verb)
            elif tag == "Gather":
                for child in verb:
                    self._media(child)
                action = self._resolve(doc.url, verb.get("action")) or doc.url
                method = verb.get("method", "POST")
                if self._keys:
                    keys = self._date_keys(self._keys.popleft())
                    self.record.digits.append(keys)
                    self.seconds += len(keys)
                    return await self._fetch(action, method, {"Digits": keys, "FinishedOnKey": ""})
                self.seconds += _int_attr(verb, "timeout", 5)
                if verb.get("actionOnEmptyResult", "false").lower() == "true":
                    return await self._fetch(action, method, {"Digits": "", "FinishedOnKey": ""})
            elif tag == "Redirect":
                target = self._resolve(doc.url, (verb.text or "").strip())
                return await self._fetch(target, verb.get("method", "POST"), {})
            elif tag == "Dial":
                number = (verb.text or "").strip() or " ".join(
                    (child.text or "").strip() for child in verb if child.tag in ("Number", "Client", "Sip")
                )
                self.record.dialed.append(number)
                talk = 10
                self.seconds += talk
                action = self._resolve(doc.url, verb.get("action"))
                if action:
                    return await self._fetch(
                        action,
                        verb.get("method", "POST"),
                        {"DialCallStatus": "completed", "DialCallDuration": str(talk)},
                    )
            elif tag in ("Hangup", "Reject"):
                return None
            else:
                self.record.errors.append(f"12200 unsupported verb <{tag}>")
        return None  # end of document: Twilio hangs up

    def _date_keys(self, keys: str) -> str:
        """`date+N`: the keys of the date N days after the sandbox's today (UTC), month
        then day (`1210`), as a caller keys a date into an IVR; anything else as given."""
        match = _DATE_KEYS.fullmatch(keys)
        if match is None:
            return keys
        day = (self._now().astimezone(dt.UTC) + dt.timedelta(days=int(match.group(1)))).date()
        return f"{day.month:02d}{day.day:02d}"

    def _media(self, verb: ET.Element) -> None:
        if verb.tag == "Say":
            text = " ".join((verb.text or "").split())
            self.record.spoken.append(text)
            self.seconds += _speech_seconds(text)
        elif verb.tag == "Play":
            self.seconds += 5
        elif verb.tag == "Pause":
            self.seconds += _int_attr(verb, "length", 1)

    def _resolve(self, base: str | None, target: str | None) -> str | None:
        if not target:
            return None
        if base is None:
            return target if "://" in target else None
        return urljoin(base, target)

    async def _fetch(self, url: str | None, method: str, extra: Mapping[str, str]) -> _Document | None:
        if url is None:
            self.record.errors.append("11100 invalid URL (relative URL in inline TwiML)")
            return None
        self._documents += 1
        if self._documents > self.max_documents:
            self.record.errors.append(f"loop guard: more than {self.max_documents} TwiML documents")
            return None
        self.record.documents.append(url)
        reply = await self.client.signed(url, {**self.base_params, **extra}, method=method)
        if reply.status is None or not 200 <= reply.status < 300:
            self.record.errors.append(f"11200 HTTP retrieval failure: {url} -> {reply.status or reply.error}")
            return None
        return self._parse(url, reply.body)

    def _parse(self, url: str | None, text: str) -> _Document | None:
        try:
            return _Document(url, parse_twiml(text))
        except ValueError as exc:
            self.record.errors.append(f"12100 document parse failure: {exc}")
            return None
