"""The time rule of the gate: is an instant inside the contact window in every zone of a
case, and if not, why not and when next (`TimeVerdict`)."""

from __future__ import annotations

from dataclasses import dataclass

from dispatcher.domain import Reason
from dispatcher.policy.instants import Instants
from dispatcher.policy.window import ContactWindow, find_legal_ts


@dataclass(frozen=True, slots=True)
class TimeVerdict:
    windows: tuple[ContactWindow, ...]  # one per zone, primary first
    today: int  # primary-zone local date ordinal of now
    legal: bool
    reason: Reason | None  # NON_WORKING_DAY / OUTSIDE_HOURS when not legal
    why: str  # auditor's sentence about now
    next_ts: float  # earliest legal instant >= now, ignoring caps


def time_verdict(windows: tuple[ContactWindow, ...], ts: float, instants: Instants, cite: str = "") -> TimeVerdict:
    primary = windows[0]
    today = primary.ordinal(ts)
    failing = [w for w in windows if not w.contains(ts)]
    if not failing:
        where = instants.text(ts, primary)
        if len(windows) > 1:
            where += f" (legal in all of {', '.join(w.zone for w in windows)})"
        return TimeVerdict(windows, today, True, None, f"inside the contact window at {where}", ts)
    reasons = [w.why_not(ts) for w in failing]
    if len(windows) > 1:
        reasons = [
            (holiday, f"{text} (local date in {w.zone})" if holiday else text)
            for w, (holiday, text) in zip(failing, reasons, strict=True)
        ]
    non_working = [text for holiday, text in reasons if holiday]
    if non_working:
        reason, why = Reason.NON_WORKING_DAY, non_working[0]
    else:
        stamps = [text for _, text in reasons]
        verb = "is" if len(stamps) == 1 else "are"
        reason = Reason.OUTSIDE_HOURS
        why = f"{', '.join(stamps)} {verb} outside the contact hours {primary.hours_text}{cite}"
    if len(windows) > 1:
        why += f" (must be legal in all of {', '.join(w.zone for w in windows)})"
    return TimeVerdict(windows, today, False, reason, why, find_legal_ts(ts, windows))
