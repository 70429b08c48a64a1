"""Template variant rotation: content must vary (SPEC section 2).

Candidates are the approved template ids for (channel, stage, locale), e.g.
``sms/dpd30/v1 .. v3``, taken in sorted order. The choice is deterministic:

- the last template sent to the case on this channel (counted statuses only: queued,
  sent, delivered ...; not cancelled/failed) is one of the candidates -> the next one in
  sorted order, wrapping; so the same variant is never sent twice in a row while
  another exists;
- otherwise (no history, or the last one belongs to another stage) ->
  ``candidates[crc32(case_id + channel + stage) % n]``, spreading first messages over
  the variants (`zlib.crc32`, not `hash()`, which is salted per process).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

from dispatcher.domain import Channel, SentMessage
from dispatcher.policy.caps import NOT_COUNTED


def last_template(history: Iterable[SentMessage], channel: Channel) -> str | None:
    """The template of the most recent counted message on `channel` that names one."""
    best: SentMessage | None = None
    for message in history:
        if (
            message.channel == channel
            and message.template is not None
            and message.status not in NOT_COUNTED
            and (best is None or message.at > best.at)
        ):
            best = message
    return None if best is None else best.template


def rotate(ordered: Sequence[str], last: str | None, case_id: str, channel: str, stage: str) -> str | None:
    """The rotation rule on already sorted, de-duplicated candidates."""
    n = len(ordered)
    if n == 0:
        return None
    if n == 1:
        return ordered[0]
    if last is not None:
        try:
            return ordered[(ordered.index(last) + 1) % n]
        except ValueError:
            pass
    return ordered[zlib.crc32(f"{case_id}{channel}{stage}".encode()) % n]


def choose_template(
    candidates: Sequence[str],
    history: Iterable[SentMessage],
    channel: Channel,
    case_id: str = "",
    stage: str = "",
) -> str | None:
    """The template variant to send next, or None when there is no candidate."""
    ordered = sorted(set(candidates))
    return rotate(ordered, last_template(history, channel), case_id, Channel(channel).value, stage)
