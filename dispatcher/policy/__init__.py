"""The pure compliance decision core: who is contacted, when, on which channel, with
which template, and why not. `Gate(config).decide_case` / `decide_channel` are pure
functions of (case snapshot, config, approved templates, now) — the gate only caches;
no I/O, no imports from adapters."""

from dispatcher.policy.calendar import WorkingCalendar
from dispatcher.policy.caps import NOT_COUNTED, CapBlock, ChannelUsage, FrequencyCap, counts
from dispatcher.policy.evaluate import Gate, TemplateCatalog
from dispatcher.policy.rotation import choose_template, last_template
from dispatcher.policy.stages import days_past_due, stage_for
from dispatcher.policy.window import (
    SEARCH_DAYS,
    ContactWindow,
    NoLegalInstantError,
    is_legal,
    next_legal_instant,
)
from dispatcher.policy.zones import local_date, resolve_zones, zone_info, zones_from_phone

__all__ = [
    "NOT_COUNTED",
    "SEARCH_DAYS",
    "CapBlock",
    "ChannelUsage",
    "ContactWindow",
    "FrequencyCap",
    "Gate",
    "NoLegalInstantError",
    "TemplateCatalog",
    "WorkingCalendar",
    "choose_template",
    "counts",
    "days_past_due",
    "is_legal",
    "last_template",
    "local_date",
    "next_legal_instant",
    "resolve_zones",
    "stage_for",
    "zone_info",
    "zones_from_phone",
]
