"""Revocation by any reasonable means (SPEC section 13): a free-text SMS that asks us to
stop, in English or Chinese, opts the number out as surely as the keyword STOP does.

Since 11 April 2025 the US FCC rule (47 CFR 64.1200(a)(10)) lets a consumer revoke
consent "by any reasonable means"; a reply like "please stop texting me" is one. The
exact keywords of section 6 (`policy.replies`) match the whole message; the phrases here
are looked for *inside* a message.

How a text is matched (pure, no I/O):

- NFKC (full-width "ＳＴＯＰ" from Chinese keyboards becomes "STOP"), case-folded,
  typographic apostrophes made plain ("don’t" = "don't"), runs of white space one space;
- an English phrase matches as a whole word or phrase: "stop" in "please stop", not in
  "stopping by" or "nonstop"; the space of a phrase also matches a hyphen or nothing
  ("opt out", "opt-out", "optout");
- a Chinese phrase matches anywhere (Chinese has no spaces between words).

A phrase about calls ("stop calling", "不要再打") or about every channel ("do not contact
me", "不要再联系我") revokes voice as well as SMS; any other revokes SMS (the channel the
debtor is answering). "Don't stop" style negations are not recognised: a false opt-out
is the safe error, a missed one is not. "end" and "cancel" count only as the whole
message (section 6): inside a sentence they are mostly about something else ("at the
end of the month", "cancel the late fee"), and a debtor who means them says so plainly.

The first phrase found (leftmost, longest at that place) is the one reported; the
channels revoked are those of every phrase in the text ("stop texting, and don't call").
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from dispatcher.domain import Channel

_SMS = frozenset({Channel.SMS})
_SMS_AND_VOICE = frozenset({Channel.SMS, Channel.VOICE})

#: phrase -> the channels it revokes. SPEC section 13's list, and a few more of each kind.
PHRASES: dict[str, frozenset[Channel]] = {
    # English: texts
    "stop": _SMS,
    "unsubscribe": _SMS,
    "opt out": _SMS,
    "remove me": _SMS,
    "do not text": _SMS,
    "don't text": _SMS,
    "dont text": _SMS,
    "no more texts": _SMS,
    "no more text messages": _SMS,
    "stop texting": _SMS,
    "stop messaging": _SMS,
    "quit": _SMS,
    "revoke": _SMS,
    # English: calls, or every channel
    "do not call": _SMS_AND_VOICE,
    "don't call": _SMS_AND_VOICE,
    "dont call": _SMS_AND_VOICE,
    "stop calling": _SMS_AND_VOICE,
    "no more calls": _SMS_AND_VOICE,
    "stop contacting": _SMS_AND_VOICE,
    "do not contact": _SMS_AND_VOICE,
    "don't contact": _SMS_AND_VOICE,
    "dont contact": _SMS_AND_VOICE,
    "leave me alone": _SMS_AND_VOICE,
    # Chinese: texts
    "退订": _SMS,
    "取消订阅": _SMS,
    "拒收": _SMS,
    "不要再发": _SMS,
    "别再发": _SMS,
    "不要发短信": _SMS,
    "别发短信": _SMS,
    "不要再给我发": _SMS,
    "别再给我发": _SMS,
    "停止发送": _SMS,
    # Chinese: calls, or every channel
    "不要再打": _SMS_AND_VOICE,
    "别再打": _SMS_AND_VOICE,
    "不要打电话": _SMS_AND_VOICE,
    "别打电话": _SMS_AND_VOICE,
    "不要再给我打": _SMS_AND_VOICE,
    "别再给我打": _SMS_AND_VOICE,
    "不要再联系我": _SMS_AND_VOICE,
    "别再联系我": _SMS_AND_VOICE,
    "不要联系我": _SMS_AND_VOICE,
}

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\uff07": "'", "`": "'"})
_SPACES = re.compile(r"\s+")


def _is_latin(phrase: str) -> bool:
    return all(ch.isascii() for ch in phrase)


def _pattern(phrase: str) -> str:
    if not _is_latin(phrase):
        return re.escape(phrase)
    words = [re.escape(word) for word in phrase.split(" ")]
    # "opt out" also as "opt-out" and "optout"; whole words only (a Chinese character
    # next to it is a boundary: "请stop" is a request too)
    return r"(?<![a-z0-9])" + r"[ \-]?".join(words) + r"(?![a-z0-9])"


# Longest first, so that at one position the longest phrase wins ("don't call" over "don't").
_ORDERED = sorted(PHRASES, key=len, reverse=True)
_MATCHER = re.compile("|".join(f"(?P<p{i}>{_pattern(p)})" for i, p in enumerate(_ORDERED)))


@dataclass(frozen=True, slots=True)
class Revocation:
    """The revocation phrases found in a text: the first as listed, what it matched,
    every phrase found, and the channels they revoke together."""

    phrase: str
    matched: str
    channels: frozenset[Channel]
    phrases: tuple[str, ...] = ()

    @property
    def about_calls(self) -> bool:
        return Channel.VOICE in self.channels


def normalise_text(text: str) -> str:
    """The form phrases are looked for in (see the module docstring)."""
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_APOSTROPHES)
    return _SPACES.sub(" ", folded).strip()


def find_revocation(text: str) -> Revocation | None:
    """The revocation phrases in `text` (the first reported, the channels of all of
    them revoked), or None when it is free text."""
    found = [(m, _ORDERED[int(m.lastgroup[1:])]) for m in _MATCHER.finditer(normalise_text(text)) if m.lastgroup]
    if not found:
        return None
    first, phrase = found[0]
    phrases = tuple(dict.fromkeys(p for _, p in found))
    channels = frozenset().union(*(PHRASES[p] for p in phrases))
    return Revocation(phrase, first.group(0), channels, phrases)
