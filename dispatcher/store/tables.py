"""SQLModel tables: cases, contact points, the outbox (messages), append-only events,
holds, payments, template approvals and versions, the dedupe keys of webhook steps, short payment-link
tokens, the collectors' tasks and the stored answers of idempotent API requests, the people
who use the console and the API (users, API tokens, console sessions, failed sign-ins), and
repayment plans with their instalments and the agreements debtors accepted.

All datetimes are stored as UTC and come back timezone-aware (`UTCDateTime`); money is
stored exactly (`Money`: NUMERIC on PostgreSQL, text on SQLite, which has no decimal type).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import Column, Index, Numeric, String, Table, Text, UniqueConstraint, text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import DateTime, TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass an aware one")
        value = value.astimezone(dt.UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Money(TypeDecorator[Decimal]):
    """Exact decimals: NUMERIC(18, 8) on PostgreSQL, canonical text on SQLite."""

    impl = String(40)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(18, 8, asdecimal=True))
        return dialect.type_descriptor(String(40))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError(f"money must be Decimal, got {type(value).__name__}")
        return value if dialect.name == "postgresql" else str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(str(value))


def _utc(nullable: bool = True, **kw: Any) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable, **kw))


def _money(nullable: bool = False) -> Any:
    return Field(default=None, sa_column=Column(Money(), nullable=nullable))


class CaseRow(SQLModel, table=True):
    __tablename__ = "cases"

    case_id: str = Field(primary_key=True, max_length=64)
    name: str
    jurisdiction: str = Field(max_length=16)
    locale: str = Field(max_length=8)
    timezone: str | None = Field(default=None, max_length=64)
    #: resolved possible zones, primary first, comma-separated (computed at import)
    zones: str = Field(default="", max_length=512)
    escalated_stages: str = Field(default="", max_length=256)  # comma-separated
    currency: str = Field(max_length=3)
    principal: Decimal = _money()
    interest: Decimal = _money()
    penalty: Decimal = _money()
    fees: Decimal = _money()
    amount_due: Decimal = _money()
    penalty_rate_daily: Decimal | None = _money(nullable=True)
    due_date: dt.date
    status: str = Field(default="active", max_length=16, index=True)
    product: str = Field(default="other", max_length=16)
    paid_total: Decimal = _money()
    created_at: dt.datetime = _utc(nullable=False)
    updated_at: dt.datetime = _utc(nullable=False)


class ContactPointRow(SQLModel, table=True):
    __tablename__ = "contact_points"
    __table_args__ = (
        UniqueConstraint("case_id", "channel", name="uq_contact_case_channel"),
        Index("ix_contact_address", "address"),
    )

    id: int | None = Field(default=None, primary_key=True)
    case_id: str = Field(foreign_key="cases.case_id", max_length=64)
    channel: str = Field(max_length=8)
    address: str | None = Field(default=None, max_length=320)
    consent: bool = True
    opted_out: bool = False
    invalid: bool = False
    updated_at: dt.datetime = _utc(nullable=False)


class MessageRow(SQLModel, table=True):
    """The outbox and the archive of every communication."""

    __tablename__ = "messages"
    __table_args__ = (
        # the sender's claim: ORDER BY scheduled_at, id LIMIT n, read in index order (a plan
        # queues many messages with one scheduled_at; without id the tie was a sort of all)
        Index("ix_messages_due", "status", "scheduled_at", "id"),
        Index("ix_messages_case", "case_id", "channel", "scheduled_at"),
        Index("ix_messages_provider", "provider_id"),
        # reconcile's rivals: our other recent messages to the same number (services.ledger)
        Index("ix_messages_to", "channel", "to_address", "status_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    case_id: str = Field(foreign_key="cases.case_id", max_length=64)
    channel: str = Field(max_length=8)
    stage: str | None = Field(default=None, max_length=32)
    kind: str = Field(default="scheduled", max_length=16)
    template_id: str | None = Field(default=None, max_length=128)
    variant: str | None = Field(default=None, max_length=64)
    locale: str | None = Field(default=None, max_length=8)
    content_hash: str | None = Field(default=None, max_length=64)
    to_address: str | None = Field(default=None, max_length=320)
    subject: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    body: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    html: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: JSON object of named rendered blocks (voice: identity, script, voicemail)
    parts: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    status: str = Field(default="queued", max_length=16)
    provider_id: str | None = Field(default=None, max_length=128)
    idempotency_key: str = Field(max_length=200, unique=True)
    scheduled_at: dt.datetime = _utc(nullable=False)
    created_at: dt.datetime = _utc(nullable=False)
    sent_at: dt.datetime | None = _utc()
    status_at: dt.datetime | None = _utc()
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    claimed_by: str | None = Field(default=None, max_length=64)
    claimed_at: dt.datetime | None = _utc()
    created_by: str | None = Field(default=None, max_length=64)
    answered_by: str | None = Field(default=None, max_length=32)
    conversation: bool = False
    #: SMS segments of the body as sent (what the provider bills); None for other channels
    segments: int | None = None
    #: a call's duration in seconds, from its final status callback (what the provider
    #: bills by the started minute); None for other channels and calls not answered yet
    call_seconds: int | None = None
    #: the template version rendered (`template_versions.version`), pinned when composed
    template_version: int | None = None


class EventRow(SQLModel, table=True):
    """Append-only: the case timeline and the audit trail. Never updated or deleted
    (except by the retention job after the archive period)."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_case", "case_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: str | None = Field(default=None, max_length=64)  # None: orphan (unknown SID)
    message_id: int | None = Field(default=None, index=True)
    at: dt.datetime = _utc(nullable=False)
    kind: str = Field(max_length=40, index=True)
    actor: str | None = Field(default=None, max_length=64)
    data: str = Field(default="{}", sa_column=Column(Text, nullable=False))


class HoldRow(SQLModel, table=True):
    __tablename__ = "holds"
    __table_args__ = (Index("ix_holds_case", "case_id", "released_at"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: str = Field(foreign_key="cases.case_id", max_length=64)
    reason: str = Field(max_length=32)
    placed_at: dt.datetime = _utc(nullable=False)
    until: dt.datetime | None = _utc()
    placed_by: str | None = Field(default=None, max_length=64)
    released_at: dt.datetime | None = _utc()
    released_by: str | None = Field(default=None, max_length=64)
    note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class PaymentRow(SQLModel, table=True):
    __tablename__ = "payments"

    id: int | None = Field(default=None, primary_key=True)
    case_id: str = Field(foreign_key="cases.case_id", max_length=64, index=True)
    amount: Decimal = _money()
    at: dt.datetime = _utc(nullable=False)
    recorded_by: str | None = Field(default=None, max_length=64)


class EscalationRow(SQLModel, table=True):
    """One legal hand-off per case and stage."""

    __tablename__ = "escalations"
    __table_args__ = (UniqueConstraint("case_id", "stage", name="uq_escalation_case_stage"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: str = Field(foreign_key="cases.case_id", max_length=64)
    stage: str = Field(max_length=32)
    at: dt.datetime = _utc(nullable=False)


class TemplateApprovalRow(SQLModel, table=True):
    """Approvals recorded by the file-only workflow (before template versions); no longer
    written: `template_versions` holds every approval now."""

    __tablename__ = "template_approvals"

    id: int | None = Field(default=None, primary_key=True)
    template_path: str = Field(max_length=256, index=True)
    content_hash: str = Field(max_length=64)
    approved_by: str = Field(max_length=64)
    approved_at: dt.datetime = _utc(nullable=False)


#: At most one approved version per (template id, locale): a partial unique index.
_ONE_APPROVED = text("state = 'approved'")


class TemplateVersionRow(SQLModel, table=True):
    """One immutable version of a template's text in one locale (SPEC 15). Only its
    review fields change: state, approved_by/at (approval or rollback), rejected_by/at,
    note. The approved version of each (template id, locale) is the one sent."""

    __tablename__ = "template_versions"
    __table_args__ = (
        Index("ix_template_versions_template", "template_id", "locale", "version"),
        Index("uq_template_versions_approved", "template_id", "locale", unique=True,
              sqlite_where=_ONE_APPROVED, postgresql_where=_ONE_APPROVED),
    )

    version: int | None = Field(default=None, primary_key=True)
    template_id: str = Field(max_length=128)
    locale: str = Field(max_length=8)
    content: str = Field(sa_column=Column(Text, nullable=False))
    sha256: str = Field(max_length=64)
    author: str = Field(max_length=64)
    created_at: dt.datetime = _utc(nullable=False)
    state: str = Field(max_length=16)  # draft | approved | rejected | retired
    approved_by: str | None = Field(default=None, max_length=64)
    approved_at: dt.datetime | None = _utc()
    rejected_by: str | None = Field(default=None, max_length=64)
    rejected_at: dt.datetime | None = _utc()
    note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class PlanInstantRow(SQLModel, table=True):
    """When the planner next needs to look at a case (`store.plan_state`): the next
    instant its decision can change, or the dirty sentinel once an event invalidated it.
    `generation` counts invalidations: the planner writes its instant only if no event
    came in since it read the case. `part` is the case's partition (hash of its id)."""

    __tablename__ = "plan_instants"
    __table_args__ = (
        # the due-cases scan: one partition, due by now, keyset (next_check_at, case_id)
        Index("ix_plan_instants_due", "part", "next_check_at", "case_id"),
    )

    case_id: str = Field(primary_key=True, max_length=64)
    part: int
    next_check_at: dt.datetime = _utc(nullable=False)
    generation: int = 0
    planned_at: dt.datetime | None = _utc()
    planned_by: str | None = Field(default=None, max_length=64)


class PlanPartitionRow(SQLModel, table=True):
    """One partition of the portfolio: who plans it now (a lease with an expiry, on
    PostgreSQL), when it was last planned and at which configuration epoch."""

    __tablename__ = "plan_partitions"

    part: int = Field(primary_key=True)
    owner: str | None = Field(default=None, max_length=64)
    lease_until: dt.datetime | None = _utc()
    planned_now: dt.datetime | None = _utc()
    planned_by: str | None = Field(default=None, max_length=64)
    epoch: int = 0


class PlanMetaRow(SQLModel, table=True):
    """The planner's settings kept in the store: the configuration epoch (bumped by
    `invalidate_all`) and the fingerprint of the configuration last planned with."""

    __tablename__ = "plan_meta"

    key: str = Field(primary_key=True, max_length=32)
    value: str = Field(max_length=128)
    updated_at: dt.datetime = _utc(nullable=False)


class DedupeKeyRow(SQLModel, table=True):
    """One row per webhook step that must take effect once (an inbound SMS per
    MessageSid, an IVR promise per call, ...): inserted with `ON CONFLICT DO NOTHING` in
    the transaction of the step's effects, so a duplicate delivery finds the key taken.
    See `dispatcher.store.dedupe`."""

    __tablename__ = "dedupe_keys"

    key: str = Field(primary_key=True, max_length=200)
    at: dt.datetime = _utc(nullable=False)


class LinkTokenRow(SQLModel, table=True):
    """A short payment link (`<links base URL>/p/<token>`): a random token minted when a
    message is composed, kept with its message, case and expiry (`services.links`)."""

    __tablename__ = "link_tokens"

    token: str = Field(primary_key=True, max_length=16)
    message_id: int = Field(foreign_key="messages.id", index=True)
    case_id: str = Field(foreign_key="cases.case_id", max_length=64, index=True)
    created_at: dt.datetime = _utc(nullable=False)
    expires_at: dt.datetime = _utc(nullable=False)


class UserRow(SQLModel, table=True):
    """A person who signs in (SPEC 14). Never deleted: disabling keeps the audit trail's names."""

    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)  # NFC, as shown and recorded as `by`
    name_key: str = Field(max_length=256, unique=True)  # NFC case-folded: one person per key
    roles: str = Field(max_length=128)  # comma-separated role names
    password_hash: str | None = Field(default=None, max_length=256)  # argon2id; None: cannot sign in
    created_at: dt.datetime = _utc(nullable=False)
    created_by: str = Field(max_length=64)
    disabled_at: dt.datetime | None = _utc()
    disabled_by: str | None = Field(default=None, max_length=64)
    locale: str | None = Field(default=None, max_length=16)  # console language (zh-CN, en-US); None: the browser's


class ApiTokenRow(SQLModel, table=True):
    """An API token: only its SHA-256 digest is kept (see `dispatcher.credentials`)."""

    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    digest: str = Field(max_length=64, unique=True)
    created_at: dt.datetime = _utc(nullable=False)
    created_by: str = Field(max_length=64)
    expires_at: dt.datetime = _utc(nullable=False)
    revoked_at: dt.datetime | None = _utc()
    revoked_by: str | None = Field(default=None, max_length=64)


class ConsoleSessionRow(SQLModel, table=True):
    """A signed-in console session, keyed by the digest of the cookie's secret: signing
    out, disabling the user or changing the password deletes it."""

    __tablename__ = "console_sessions"

    digest: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="users.id", index=True)
    created_at: dt.datetime = _utc(nullable=False)
    expires_at: dt.datetime = _utc(nullable=False)


class SignInFailureRow(SQLModel, table=True):
    """A failed console sign-in, counted per name and per client for the rate limit."""

    __tablename__ = "sign_in_failures"
    __table_args__ = (
        Index("ix_sign_in_failures_name", "name_key", "at"),
        Index("ix_sign_in_failures_client", "client", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    name_key: str = Field(max_length=256)
    client: str = Field(max_length=64)
    at: dt.datetime = _utc(nullable=False)


class AgreementRow(SQLModel, table=True):
    """What a debtor accepted on their page (a repayment plan): the terms as data and the
    exact text shown, kept verbatim for the record; never updated."""

    __tablename__ = "agreements"

    id: int | None = Field(default=None, primary_key=True)
    case_id: str = Field(foreign_key="cases.case_id", max_length=64, index=True)
    kind: str = Field(max_length=32)  # repayment_plan
    locale: str = Field(max_length=8)
    accepted_at: dt.datetime = _utc(nullable=False)
    accepted_by: str = Field(max_length=64)  # "debtor" (through the page), or the collector's name
    message_id: int | None = None  # the message whose link the debtor followed
    #: the terms as JSON (offer, amounts, dates, waiver, currency)
    terms: str = Field(sa_column=Column(Text, nullable=False))
    #: the text shown to the debtor when they accepted, verbatim
    text: str = Field(sa_column=Column(Text, nullable=False))
    content_hash: str = Field(max_length=64)  # SHA-256 of `text`


class PlanRow(SQLModel, table=True):
    """A repayment plan: `active` while in force, then `broken` or `completed`."""

    __tablename__ = "plans"
    __table_args__ = (Index("ix_plans_case", "case_id", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: str = Field(foreign_key="cases.case_id", max_length=64)
    agreement_id: int = Field(foreign_key="agreements.id")
    offer: str = Field(max_length=64)
    status: str = Field(default="active", max_length=16, index=True)
    created_at: dt.datetime = _utc(nullable=False)
    created_on: dt.date  # the debtor's local date
    paid_at_start: Decimal = _money()  # the case's paid total when the plan was made
    total: Decimal = _money()
    waived: Decimal = _money()
    ended_at: dt.datetime | None = _utc()


class InstalmentRow(SQLModel, table=True):
    __tablename__ = "instalments"
    __table_args__ = (UniqueConstraint("plan_id", "number", name="uq_instalment_plan_number"),)

    id: int | None = Field(default=None, primary_key=True)
    plan_id: int = Field(foreign_key="plans.id", index=True)
    number: int
    due: dt.date  # the debtor's local date
    amount: Decimal = _money()


class TaskRow(SQLModel, table=True):
    """A collector's task (`services.tasks`): opened once per case, kind and source (the
    webhook, call, hold or stage that caused it), claimed, then done with a note."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("case_id", "kind", "source", name="uq_task_case_kind_source"),
        Index("ix_tasks_queue", "state", "due_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    case_id: str = Field(foreign_key="cases.case_id", max_length=64, index=True)
    kind: str = Field(max_length=32)
    source: str = Field(max_length=200)
    state: str = Field(default="open", max_length=16)  # open | claimed | done
    created_at: dt.datetime = _utc(nullable=False)
    due_at: dt.datetime = _utc(nullable=False)  # created_at + the kind's SLA
    assignee: str | None = Field(default=None, max_length=64)
    claimed_at: dt.datetime | None = _utc()
    detail: str = Field(default="", sa_column=Column(Text, nullable=False))
    done_at: dt.datetime | None = _utc()
    done_by: str | None = Field(default=None, max_length=64)
    note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class IdempotencyKeyRow(SQLModel, table=True):
    """The first answer to an API POST sent with an `Idempotency-Key`, per caller
    (`web.idempotency`): replayed for a retry with the same body for 24 hours."""

    __tablename__ = "idempotency_keys"

    principal: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=255)
    method: str = Field(max_length=8)
    path: str = Field(max_length=512)
    body_hash: str = Field(max_length=64)
    status: int | None = None  # None while the first request is still being answered
    response: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: dt.datetime = _utc(nullable=False)
    expires_at: dt.datetime = _utc(nullable=False, index=True)


def _core(model: Any) -> Table:
    """The Core table of a SQLModel class (SQLModel's stubs do not declare `__table__`)."""
    table: Table = model.__table__
    return table


#: The Core tables, exported once: Core SQL imports these, never `Row.__table__`.
cases_t = _core(CaseRow)
contacts_t = _core(ContactPointRow)
messages_t = _core(MessageRow)
events_t = _core(EventRow)
holds_t = _core(HoldRow)
payments_t = _core(PaymentRow)
escalations_t = _core(EscalationRow)
template_approvals_t = _core(TemplateApprovalRow)
template_versions_t = _core(TemplateVersionRow)
dedupe_keys_t = _core(DedupeKeyRow)
link_tokens_t = _core(LinkTokenRow)
plan_instants_t = _core(PlanInstantRow)
plan_partitions_t = _core(PlanPartitionRow)
plan_meta_t = _core(PlanMetaRow)
users_t = _core(UserRow)
api_tokens_t = _core(ApiTokenRow)
console_sessions_t = _core(ConsoleSessionRow)
sign_in_failures_t = _core(SignInFailureRow)
agreements_t = _core(AgreementRow)
plans_t = _core(PlanRow)
instalments_t = _core(InstalmentRow)
tasks_t = _core(TaskRow)
idempotency_keys_t = _core(IdempotencyKeyRow)
