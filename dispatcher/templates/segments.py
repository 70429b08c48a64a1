"""SMS encoding and segment counting (GSM 03.38 / 3GPP TS 23.038).

Hand-written on purpose: no maintained package counts segments (smsutil's last
release is from 2020), and the rules are small enough to own and test on known vectors.

- GSM-7: 160 septets in a single message, 153 per part of a concatenated one. Characters
  of the extension table (``^{}\\[~]|€`` and form feed) are sent as ESC + char and take 2.
- Anything outside GSM-7 forces UCS-2 for the whole message: 70 UTF-16 code units single,
  67 per part; characters outside the BMP (most emoji) are surrogate pairs and take 2.

A character is never split across two parts (carriers keep escape sequences and
surrogate pairs whole), so parts are packed greedily rather than by dividing the total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: The GSM 03.38 basic character set (0x1B, the escape to the extension table, excluded).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: The extension table reachable in the default language: each costs 2 septets.
GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67

Encoding = Literal["GSM-7", "UCS-2"]


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    encoding: Encoding
    units: int  # septets for GSM-7, UTF-16 code units for UCS-2
    segments: int


def is_gsm7(text: str) -> bool:
    """True if every character can be sent in the GSM-7 default alphabet."""
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in text)


def sms_segments(text: str) -> SegmentInfo:
    """Encoding, length in encoding units and number of SMS parts for `text`.

    An empty text still goes out as one (empty) message, so it counts as 1 segment.
    """
    if is_gsm7(text):
        sizes = [2 if ch in GSM7_EXTENDED else 1 for ch in text]
        return SegmentInfo("GSM-7", sum(sizes), _pack(sizes, GSM7_SINGLE, GSM7_PART))
    sizes = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    return SegmentInfo("UCS-2", sum(sizes), _pack(sizes, UCS2_SINGLE, UCS2_PART))


def _pack(sizes: list[int], single: int, part: int) -> int:
    if sum(sizes) <= single:
        return 1
    segments, used = 1, 0
    for size in sizes:
        if used + size > part:
            segments += 1
            used = 0
        used += size
    return segments
