"""Pure rules for what comes back: reply keywords, provider status mapping and ordering,
and the broken-promise test. No I/O; the receipts service applies these to the store.

Keywords (SPEC section 6, contract) match the *whole* message after trimming, case-
insensitively: "STOP" and " stop " opt out, "stop calling me later" is a free-text reply
for a collector. The text is NFKC-normalised first so full-width input from Chinese
phone keyboards ("ＳＴＯＰ", "ｔｄ") matches too, and trailing sentence punctuation
("STOP.", "退订。") is ignored: people type it, and reading it as free text would keep
texting someone who asked us to stop.

Statuses form one total order (`status_rank`). A callback may only move a message to a
higher rank, so any set of callbacks, delivered in any order and any number of times,
ends at the highest-ranked status among them. Terminal outcomes rank above every
in-flight status; among them the evidence of contact ranks highest (`read` > `delivered`
> `failed` > `undelivered` for messages, `completed` > `no-answer` > `busy` > `failed`
for calls), because a provider never reports delivery of a message that did not arrive.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from enum import StrEnum

from dispatcher.domain import MessageStatus


class ReplyIntent(StrEnum):
    """What an inbound SMS asks for."""

    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"
    PAID = "paid"
    DISPUTE = "dispute"
    #: free text with a revocation phrase in it ("please stop calling", "不要再发"):
    #: `policy.revocation`, SPEC section 13
    REVOCATION = "revocation"
    FREE_TEXT = "free_text"


#: Contract keyword lists, already in their case-folded form.
KEYWORDS: dict[ReplyIntent, tuple[str, ...]] = {
    ReplyIntent.OPT_OUT: (
        "stop", "stopall", "unsubscribe", "cancel", "end", "quit", "revoke", "optout", "退订", "td", "t",
    ),
    ReplyIntent.OPT_IN: ("start", "unstop", "yes"),
    ReplyIntent.HELP: ("help", "info"),
    ReplyIntent.PAID: ("paid", "已还", "已还款"),
    ReplyIntent.DISPUTE: ("dispute", "有异议", "不是我"),
}

_LOOKUP: dict[str, ReplyIntent] = {word: intent for intent, words in KEYWORDS.items() for word in words}

#: Sentence punctuation people add after a keyword (ASCII and CJK, after NFKC).
_TRAILING = ".!?。！？~"


def normalise_reply(text: str) -> str:
    """The form keywords are compared in: NFKC, trimmed, trailing punctuation dropped,
    case-folded."""
    folded = unicodedata.normalize("NFKC", text).strip()
    folded = folded.rstrip(_TRAILING).strip()
    return folded.casefold()


def classify_reply(text: str) -> ReplyIntent:
    """The intent of an inbound SMS body; anything that is not exactly a keyword is
    free text for a collector."""
    return _LOOKUP.get(normalise_reply(text), ReplyIntent.FREE_TEXT)


# -- statuses ----------------------------------------------------------------------

#: Twilio MessageStatus / CallStatus values -> ours. `None` for values that say nothing
#: about delivery (inbound statuses); unknown values are not mapped at all.
_PROVIDER_STATUS: dict[str, MessageStatus | None] = {
    # messages
    "accepted": MessageStatus.QUEUED,
    "scheduled": MessageStatus.QUEUED,
    "queued": MessageStatus.QUEUED,
    "sending": MessageStatus.SENDING,
    "sent": MessageStatus.SENT,
    "delivered": MessageStatus.DELIVERED,
    "partially_delivered": MessageStatus.DELIVERED,
    "undelivered": MessageStatus.UNDELIVERED,
    "failed": MessageStatus.FAILED,
    "read": MessageStatus.READ,
    "canceled": MessageStatus.CANCELLED,
    "cancelled": MessageStatus.CANCELLED,
    "receiving": None,
    "received": None,
    # calls
    "initiated": MessageStatus.SENT,
    "ringing": MessageStatus.RINGING,
    "in-progress": MessageStatus.IN_PROGRESS,
    "answered": MessageStatus.IN_PROGRESS,
    "completed": MessageStatus.COMPLETED,
    "busy": MessageStatus.BUSY,
    "no-answer": MessageStatus.NO_ANSWER,
}

#: The total order of statuses. Messages and calls share it: an SMS never takes a call
#: status and vice versa, so interleaving the two ladders costs nothing.
STATUS_RANK: dict[MessageStatus, int] = {
    MessageStatus.QUEUED: 0,
    MessageStatus.SENDING: 1,
    MessageStatus.SENT_UNCONFIRMED: 2,  # any word from the provider (a bounce) is news
    MessageStatus.SENT: 3,
    MessageStatus.RINGING: 4,
    MessageStatus.IN_PROGRESS: 5,
    # terminal outcomes
    MessageStatus.CANCELLED: 6,
    MessageStatus.UNDELIVERED: 7,
    MessageStatus.FAILED: 8,
    MessageStatus.BUSY: 9,
    MessageStatus.NO_ANSWER: 10,
    MessageStatus.DELIVERED: 11,
    MessageStatus.COMPLETED: 12,
    MessageStatus.READ: 13,
}

TERMINAL_STATUSES = frozenset(s for s, r in STATUS_RANK.items() if r >= STATUS_RANK[MessageStatus.CANCELLED])


class UnknownStatusError(ValueError):
    """A provider status value this version does not know."""


def map_provider_status(value: str) -> MessageStatus | None:
    """Our status for a Twilio `MessageStatus`/`CallStatus` value (case-insensitive).

    Returns None for values that carry no delivery information (`received`); raises
    `UnknownStatusError` for values Twilio may add in future, so the caller can keep
    the callback without guessing."""
    key = value.strip().lower()
    if key not in _PROVIDER_STATUS:
        raise UnknownStatusError(f"unknown provider status {value[:40]!r}")
    return _PROVIDER_STATUS[key]


def status_rank(status: MessageStatus | str) -> int:
    """Position of a status in the total order; higher wins."""
    return STATUS_RANK[MessageStatus(status)]


def supersedes(new: MessageStatus | str, current: MessageStatus | str) -> bool:
    """Whether a callback reporting `new` may replace `current` (strictly higher rank)."""
    return status_rank(new) > status_rank(current)


def final_status(statuses: list[MessageStatus] | tuple[MessageStatus, ...], start: MessageStatus) -> MessageStatus:
    """The status after applying `statuses` in order to a message at `start` (the
    reference model of the store's conditional update)."""
    current = start
    for status in statuses:
        if supersedes(status, current):
            current = status
    return current


# -- voice -------------------------------------------------------------------------


def is_machine(answered_by: str | None) -> bool:
    """Twilio AMD verdicts meaning nobody is listening: machine_* and fax."""
    value = (answered_by or "").strip().lower()
    return value.startswith("machine") or value == "fax"


# -- promises ----------------------------------------------------------------------


def promise_broken(hold_until: dt.datetime | None, now: dt.datetime, paid_since_promise: bool) -> bool:
    """A promise to pay is broken when its date has passed and no payment arrived since
    it was made. A promise without a date never breaks by itself."""
    if hold_until is None:
        return False
    return now >= hold_until and not paid_since_promise
