"""Typed, validated configuration loaded from TOML.

A bad file gives a `ConfigError` that names the file, the key and what is allowed.
Secrets never live here: they come from the environment (see `dispatcher.settings`).
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
import zoneinfo
from decimal import Decimal
from functools import cache
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dispatcher.domain import Channel


class ConfigError(Exception):
    """The configuration file cannot be used; the message says where and why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_quoted_numbers(cls, value: object, info: ValidationInfo) -> object:
        # pydantic's lax mode would take `sms_max_segments = "3"` or `per_day = "1"`
        # silently: a number, a boolean written as text is a mistake to name
        field = cls.model_fields.get(info.field_name or "")
        if field is not None:
            problem = _text_for_scalar(field.annotation, value)
            if problem:
                raise ValueError(problem)
        return value


def _text_for_scalar(annotation: Any, value: object) -> str | None:
    """Why `value` (from TOML) is text where `annotation` wants a number or a boolean, or None."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _text_for_scalar(args[0], value)
    if origin in (Union, UnionType):
        scalars = [a for a in args if a is not type(None)]
        if len(scalars) == 1:
            return _text_for_scalar(scalars[0], value)
        return None
    if annotation in (int, float, bool) and isinstance(value, str):
        kind = "true or false" if annotation is bool else "a number"
        return f"{value!r} is text (in quotes); write {kind} without quotes"
    if annotation is bool and not isinstance(value, bool) and isinstance(value, int | float):
        return f"{value!r} is a number; write true or false"
    if origin in (list, tuple) and isinstance(value, list | tuple):
        inner = [a for a in args if a is not Ellipsis]
        for i, item in enumerate(value):
            problem = _text_for_scalar(inner[min(i, len(inner) - 1)], item) if inner else None
            if problem:
                return f"item {i + 1}: {problem}"
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        for key, item in value.items():
            problem = _text_for_scalar(args[1], item)
            if problem:
                return f"{key}: {problem}"
    return None


PositiveInt = Annotated[int, Field(ge=1)]
#: a wall time of the contact window: 00:00 .. 23:59, minutes included (Washington opens at 07:30)
_HHMM = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]")


class ChannelCaps(_Model):
    """Frequency caps for one channel of a profile. Unset caps mean `per_day = 1`.

    `per_day` counts every message (for voice: every call attempt, answered or not);
    `connected_per_day` counts only calls a person answered (voice only)."""

    per_day: PositiveInt = 1
    per_7_days: PositiveInt | None = None
    max_consecutive_days: PositiveInt | None = None
    rest_days: PositiveInt | None = None
    after_conversation_days: PositiveInt | None = None
    connected_per_day: PositiveInt | None = None

    @model_validator(mode="after")
    def _consecutive_pair(self) -> ChannelCaps:
        if (self.max_consecutive_days is None) != (self.rest_days is None):
            raise ValueError("max_consecutive_days and rest_days go together; set both or neither")
        if self.connected_per_day is not None and self.connected_per_day >= self.per_day:
            raise ValueError(
                f"connected_per_day = {self.connected_per_day} never binds: per_day = {self.per_day} attempts"
                " already allow no more; raise per_day above it or drop connected_per_day"
            )
        return self


class SharedCap(_Model):
    """A cap over several channels together (`[[jurisdictions.<key>.shared_caps]]`): it
    counts every message on any of `channels`, one-offs included."""

    name: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]*$", max_length=64)
    channels: list[Channel] = Field(min_length=2)
    per_day: PositiveInt | None = None
    per_7_days: PositiveInt | None = None
    #: the rule it encodes, for the decision's detail (e.g. "Massachusetts 940 CMR 7.04(1)(f)")
    source: str = ""

    @field_validator("channels")
    @classmethod
    def _distinct(cls, channels: list[Channel]) -> list[Channel]:
        if len(set(channels)) != len(channels):
            raise ValueError(f"channels: each channel once; got {[c.value for c in channels]}")
        return channels

    @model_validator(mode="after")
    def _some_limit(self) -> SharedCap:
        if self.per_day is None and self.per_7_days is None:
            raise ValueError("a shared cap needs per_day or per_7_days (or both)")
        return self

    @property
    def label(self) -> str:
        """How the decision's detail names it: its name, else its channels (`sms+voice`)."""
        return self.name or "+".join(c.value for c in self.channels)


class ConsentDefault(_Model):
    sms: bool = False
    email: bool = False
    voice: bool = False

    def for_channel(self, channel: Channel) -> bool:
        return bool(getattr(self, channel.value))


class Jurisdiction(_Model):
    """A legal profile: where and when a debtor may be contacted, and the defaults."""

    default_timezones: list[str] = Field(min_length=1)
    calendar: str = Field(min_length=2, description="holidays country code, e.g. CN, US")
    days: Literal["working", "all"] = "working"
    hours: tuple[dt.time, dt.time]
    default_locale: Literal["zh-CN", "en-US"]
    default_currency: str = Field(pattern=r"^[A-Z]{3}$")
    default_region: str = Field(pattern=r"^[A-Z]{2}$")
    consent_default: ConsentDefault = ConsentDefault()
    caps: dict[Channel, ChannelCaps] = {}
    shared_caps: list[SharedCap] = []
    #: the rule the profile encodes (law, guideline, standard), named in `detail`
    source: str = ""
    extra_holidays: list[dt.date] = []
    extra_working_days: list[dt.date] = []
    #: years whose holiday schedule the operator checked against the official notice (SPEC 12)
    official_years: list[Annotated[int, Field(ge=1900, le=2200)]] = []
    support_phone: str = ""
    sms_from: str = ""
    voice_from: str = ""
    messaging_service_sid: str = ""

    @field_validator("default_timezones")
    @classmethod
    def _zones_exist(cls, zones: list[str]) -> list[str]:
        for zone in zones:
            try:
                zoneinfo.ZoneInfo(zone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"{zone!r} is not an IANA time zone (e.g. Asia/Shanghai)") from None
        return zones

    @field_validator("calendar")
    @classmethod
    def _calendar_known(cls, code: str) -> str:
        known = _holiday_countries()
        if code not in known:
            raise ValueError(f"{code!r} is not a country code the holidays package knows; use e.g. CN or US"
                             f" (one of {len(known)} ISO 3166 codes)")
        return code

    @field_validator("hours", mode="before")
    @classmethod
    def _parse_hours(cls, value: object) -> object:
        if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, dt.time) for v in value):
            return value  # already parsed (a model built in code)
        if not (isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, str) for v in value)
                and all(_HHMM.fullmatch(v) for v in value)):
            shown = list(value) if isinstance(value, list | tuple) else value
            raise ValueError(f'hours must be two "HH:MM" times, e.g. ["07:30", "21:00"]; got {shown!r}')
        return tuple(dt.time.fromisoformat(v) for v in value)

    @model_validator(mode="after")
    def _hours_order(self) -> Jurisdiction:
        if not self.hours[0] < self.hours[1]:
            raise ValueError("hours: the start must be before the end, e.g. [\"09:00\", \"21:00\"]")
        for channel, caps in self.caps.items():
            if caps.connected_per_day is not None and channel is not Channel.VOICE:
                raise ValueError(f"caps.{channel.value}.connected_per_day: only voice calls are answered;"
                                 " set it under caps.voice")
        labels = [cap.label for cap in self.shared_caps]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"shared_caps: names must be unique (repeated: {', '.join(repeated)}); give each a name")
        return self

    def caps_for(self, channel: Channel) -> ChannelCaps:
        return self.caps.get(channel, ChannelCaps())


@cache
def _holiday_countries() -> frozenset[str]:
    import holidays

    return frozenset(holidays.list_supported_countries())


class ChannelCadence(_Model):
    every_days: PositiveInt


class Stage(_Model):
    """A delinquency stage: a DPD range (upper bound open when omitted) and its cadence."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    dpd: tuple[int] | tuple[int, int]
    channels: dict[Channel, ChannelCadence]
    escalate: bool = False

    @model_validator(mode="after")
    def _range(self) -> Stage:
        if len(self.dpd) == 2 and self.dpd[0] > self.dpd[1]:
            raise ValueError(f"dpd: {list(self.dpd)} is empty; write [low, high] with low <= high")
        return self

    @property
    def dpd_min(self) -> int:
        return self.dpd[0]

    @property
    def dpd_max(self) -> int | None:
        return self.dpd[1] if len(self.dpd) == 2 else None

    def contains(self, dpd: int) -> bool:
        upper = self.dpd_max
        return self.dpd_min <= dpd and (upper is None or dpd <= upper)


class Organisation(_Model):
    name: dict[str, str] = {"en-US": "Dispatcher Bank", "zh-CN": "调度银行"}
    email_from: str = "reminders@bank.example"
    bounce_domain: str = "bounce.bank.example"
    payment_page: str = "https://pay.bank.example/pay"
    #: the zone of the organisation's calendar: report periods (`--since`, `--until`) are its dates
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}, e.g. 'Asia/Shanghai' or 'UTC'") from None
        return value

    def name_for(self, locale: str) -> str:
        return self.name.get(locale) or next(iter(self.name.values()))


class Templates(_Model):
    directory: Path = Path("templates")
    forbidden_phrases: Path = Path("config/forbidden_phrases.txt")
    sms_max_segments: PositiveInt = 3


class Replies(_Model):
    payment_claimed_hold_days: PositiveInt = 3
    promise_to_pay_days: PositiveInt = 7


class Breaker(_Model):
    """`[sending.breaker]`: the circuit breaker of each provider (`channels.breaker`)."""

    #: this many consecutive connection failures (no answer at all) open the circuit
    failures_to_open: PositiveInt = 5
    #: while open, one probe of the provider at most this often; messages wait meanwhile
    probe_seconds: float = Field(default=30.0, gt=0)


class Sending(_Model):
    rate_per_second: dict[str, float] = {"sms": 50.0, "voice": 5.0, "email": 50.0}
    concurrency: PositiveInt = 16
    batch_size: PositiveInt = 200
    max_attempts: PositiveInt = 5
    retry_backoff_seconds: float = Field(default=30.0, gt=0)
    provider_timeout_seconds: float = Field(default=15.0, gt=0)
    #: after a 429, the sender's bucket pauses for the Retry-After, at most this long
    rate_limit_pause_max_seconds: float = Field(default=30.0, ge=0)
    #: on SIGTERM, the provider calls under way get this long to finish and be recorded
    shutdown_grace_seconds: float = Field(default=20.0, gt=0)
    #: messages a crashed instance left in flight, asked of their providers at once
    reconcile_concurrency: PositiveInt = 16
    breaker: Breaker = Breaker()


class Scheduler(_Model):
    plan_every_seconds: PositiveInt = 300
    send_every_seconds: PositiveInt = 5
    reconcile_every_seconds: PositiveInt = 60
    retention_every_seconds: PositiveInt = 86400
    repair_every_seconds: PositiveInt = 300
    #: a planning instance that stops renewing its partition's lease for this long is
    #: taken as dead, and another instance carries on with the partition (PostgreSQL)
    plan_lease_seconds: PositiveInt = 60
    #: cases per planning batch (one transaction: their messages and next instants)
    plan_batch: PositiveInt = 2000
    #: rows the retention job deletes per transaction (the planner is never blocked long)
    retention_batch: PositiveInt = 5000


class Receipts(_Model):
    """The status repair job (`services.repair`): a lost status callback is never retried
    by the provider, so messages and calls stuck in a non-final status are asked about."""

    #: an SMS or call whose status has not moved for this long is asked about (Twilio
    #: retries nothing; a delivery receipt normally comes within seconds to minutes)
    repair_after_seconds: PositiveInt = 900
    #: older than this, it is left alone (some carriers never report beyond "sent")
    repair_max_age_hours: PositiveInt = 72
    #: at most this many provider look-ups per run
    repair_batch: PositiveInt = 200


class Links(_Model):
    payment_link_days: PositiveInt = 14
    #: the base of payment links, `<base_url>/p/<token>` (a bank's short domain that
    #: reaches this service); unset: DISPATCHER_PUBLIC_URL. Shorter links, fewer SMS segments.
    base_url: str | None = None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError(f"links.base_url must be an http(s) URL without query, like"
                             f" 'https://bk.example', got {value!r}")
        return value


Price = Annotated[Decimal, Field(ge=0, decimal_places=6)]


class PlanOffer(_Model):
    """One repayment plan a debtor may choose on their page (`[[self_service.plans]]`)."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    instalments: int = Field(ge=2, le=24)
    #: days between instalments; the first falls this many days after the plan is made
    every_days: PositiveInt = 30
    #: no instalment may be smaller (an outstanding amount too small for it gets no offer)
    min_instalment: Annotated[Decimal, Field(gt=0, decimal_places=2)] = Decimal("50.00")
    #: the outstanding penalty is waived when every instalment is paid on time
    waive_penalty: bool = False
    #: stages a case must be in for the offer (empty: every stage)
    stages: list[str] = []
    min_outstanding: Annotated[Decimal, Field(ge=0, decimal_places=2)] = Decimal("0.00")
    max_outstanding: Annotated[Decimal, Field(gt=0, decimal_places=2)] | None = None


class SelfService(_Model):
    """`[self_service]`: the debtor's page behind a payment link, and repayment plans."""

    #: a promise to pay may name a date at most this many days ahead (the debtor's dates)
    promise_max_days: PositiveInt = 14
    #: an instalment still unpaid this many days after its date breaks the plan
    plan_grace_days: int = Field(default=3, ge=0)
    #: reminders of an instalment this many days before its date (0: on the day)
    plan_reminder_days: list[Annotated[int, Field(ge=0, le=60)]] = [3, 0]
    #: requests one client address may make for one link per minute (the page and its forms)
    requests_per_minute: PositiveInt = 20
    #: requests one client address may make per minute over all links (guessing tokens);
    #: 0 turns it off, e.g. behind a proxy whose own address every request shows
    client_requests_per_minute: int = Field(default=100, ge=0)
    plans: list[PlanOffer] = []

    @field_validator("plans")
    @classmethod
    def _unique_names(cls, plans: list[PlanOffer]) -> list[PlanOffer]:
        names = [p.name for p in plans]
        if len(set(names)) != len(names):
            raise ValueError(f"plan names must be unique; got {names}")
        return plans


class ChannelCosts(_Model):
    """What the providers charge, in one currency: per SMS segment, per e-mail and per
    started call minute (the units they bill by)."""

    sms_segment: Price = Decimal("0")
    email: Price = Decimal("0")
    voice_minute: Price = Decimal("0")

    def cost(self, *, segments: int = 0, emails: int = 0, call_minutes: int = 0) -> Decimal:
        """What that many SMS segments, e-mails and started call minutes cost, to 1/10000
        of the currency (the reports' totals and the template studio's cost per message)."""
        total = segments * self.sms_segment + emails * self.email + call_minutes * self.voice_minute
        return total.quantize(Decimal("0.0001"))


class Retention(_Model):
    years: PositiveInt = 5


#: How long a collector has for each kind of task (`[workbench.sla]`): "<n> working
#: day(s)" (the case's jurisdiction calendar, in the debtor's zone), "<n> day(s)" or
#: "<n> hour(s)". A kind not named here gets its default below.
DEFAULT_SLA: dict[str, str] = {
    "verify_payment_claim": "1 working day",
    "review_dispute": "2 working days",
    "read_reply": "1 working day",
    "call_back": "4 hours",
    "broken_promise": "1 working day",
    "review_revocation": "1 working day",
    "legal_handoff": "5 working days",
    "escalate": "1 working day",
}

_SLA_TEXT = re.compile(r"^\s*(\d+)\s*(working\s+days?|days?|hours?)\s*$", re.IGNORECASE)


def parse_sla(text: str) -> tuple[int, str]:
    """`"1 working day"` -> (1, "working_days"); `"4 hours"` -> (4, "hours"). ValueError
    says what is allowed."""
    found = _SLA_TEXT.match(text)
    if not found or int(found.group(1)) <= 0:
        raise ValueError(f"SLA {text!r}: write '<n> working days', '<n> days' or '<n> hours' (n >= 1)")
    unit = found.group(2).lower()
    return int(found.group(1)), ("working_days" if unit.startswith("working") else
                                 "days" if unit.startswith("day") else "hours")


class Workbench(_Model):
    """`[workbench]`: the collectors' task queue."""

    #: a case that has not answered this many days after a delivered stage reminder gets
    #: an `escalate` task (once per stage)
    escalate_after_days: PositiveInt = 3
    #: `[workbench.sla]`: kind -> "<n> working days" | "<n> days" | "<n> hours"
    sla: dict[str, str] = {}

    @field_validator("sla")
    @classmethod
    def _sla_valid(cls, value: dict[str, str]) -> dict[str, str]:
        for kind, text in value.items():
            if kind not in DEFAULT_SLA:
                raise ValueError(f"workbench.sla: unknown task kind {kind!r}; kinds: {', '.join(DEFAULT_SLA)}")
            parse_sla(text)
        return value

    def sla_for(self, kind: str) -> tuple[int, str]:
        return parse_sla(self.sla.get(kind) or DEFAULT_SLA.get(kind, "1 working day"))


class Config(_Model):
    """The whole configuration file."""

    jurisdictions: dict[str, Jurisdiction] = Field(min_length=1)
    stages: list[Stage] = Field(min_length=1)
    organisation: Organisation = Organisation()
    templates: Templates = Templates()
    replies: Replies = Replies()
    sending: Sending = Sending()
    scheduler: Scheduler = Scheduler()
    receipts: Receipts = Receipts()
    links: Links = Links()
    self_service: SelfService = SelfService()
    retention: Retention = Retention()
    workbench: Workbench = Workbench()
    #: `[costs.<CURRENCY>]`: prices in the currency of the cases they serve (reports)
    costs: dict[str, ChannelCosts] = {}

    #: where the file was read from; relative paths in it are relative to its folder
    source: Path | None = None

    @model_validator(mode="after")
    def _stages_disjoint(self) -> Config:
        names = [s.name for s in self.stages]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"stages: names must be unique; repeated: {sorted(dupes)}")
        for reserved, what in (("replies", "the automatic SMS replies"), ("plan", "repayment plan reminders")):
            if reserved in names:  # templates/<channel>/<reserved>/ holds these
                raise ValueError(f"stages: {reserved!r} is reserved for {what}; rename the stage")
        known = set(names)
        for offer in self.self_service.plans:
            unknown = sorted(set(offer.stages) - known)
            if unknown:
                raise ValueError(f"self_service.plans {offer.name}: unknown stages {unknown}; known: {sorted(known)}")
        ordered = sorted(self.stages, key=lambda s: s.dpd_min)
        for prev, nxt in zip(ordered, ordered[1:], strict=False):
            if prev.dpd_max is None or prev.dpd_max >= nxt.dpd_min:
                raise ValueError(
                    f"stages: {prev.name} {list(prev.dpd)} overlaps {nxt.name} {list(nxt.dpd)};"
                    " DPD ranges must not overlap"
                )
        return self

    def stage_for(self, dpd: int) -> Stage | None:
        for stage in self.stages:
            if stage.contains(dpd):
                return stage
        return None

    def stage_named(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    def resolve(self, path: Path) -> Path:
        """A path from the file, made absolute against the file's own folder (as a
        relative `include` in nginx or systemd): `/etc/dispatcher/dispatcher.toml` with
        `directory = "templates"` means `/etc/dispatcher/templates`. A configuration built
        in code (no file) resolves against the working directory."""
        if path.is_absolute() or self.source is None:
            return path
        return (self.source.resolve().parent / path).resolve()


def load_config(path: Path) -> Config:
    """Read and validate a configuration file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such configuration file; pass --config PATH or set DISPATCHER_CONFIG"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Config.model_validate({**raw, "source": path})
    except ValidationError as exc:
        raise ConfigError(_explain(path, exc)) from None


def _explain(path: Path, exc: ValidationError) -> str:
    """One line for one problem (`FILE: invalid configuration: KEY: what to do`), else
    one line per problem under the file's."""
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key; check the spelling against config/dispatcher.toml"
        problems.append(f"{key}: {message}")
    if len(problems) == 1:
        return f"{path}: invalid configuration: {problems[0]}"
    return "\n".join([f"{path}: invalid configuration", *(f"  {p}" for p in problems)])
