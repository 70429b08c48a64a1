"""Frozen value objects shared by every layer: cases, contact points, history, decisions.

Nothing here does I/O. The store maps rows to these objects; the policy core reads them
and returns `Decision`s; services and adapters pass them along.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum


class Channel(StrEnum):
    SMS = "sms"
    EMAIL = "email"
    VOICE = "voice"


#: Which contact address a channel uses: sms and voice share the phone number.
ADDRESS_KIND: dict[Channel, str] = {
    Channel.SMS: "phone",
    Channel.VOICE: "phone",
    Channel.EMAIL: "email",
}


#: The stage name of instalment reminders (templates `<channel>/plan/`): reserved, no
#: delinquency stage may take it. They go out on these channels.
PLAN_STAGE = "plan"
PLAN_CHANNELS: tuple[Channel, ...] = (Channel.SMS, Channel.EMAIL)


class Action(StrEnum):
    SEND = "send"
    DEFER = "defer"
    SKIP = "skip"
    ESCALATE = "escalate"


class Reason(StrEnum):
    """Reason codes (SPEC section 4, contract). Declaration order is precedence order."""

    # 1. case
    CASE_CLOSED = "case_closed"
    CEASE_COMMUNICATION = "cease_communication"
    DISPUTE_HOLD = "dispute_hold"
    LEGAL_HOLD = "legal_hold"
    COLLECTOR_HOLD = "collector_hold"
    PAYMENT_CLAIMED = "payment_claimed"
    PROMISE_TO_PAY = "promise_to_pay"
    #: a repayment plan is being kept: its instalment reminders replace collection (after the holds)
    REPAYMENT_PLAN = "repayment_plan"
    # 2. stage
    NOT_OVERDUE = "not_overdue"
    # 3. channel
    NO_CONTACT = "no_contact"
    INVALID_ADDRESS = "invalid_address"
    NO_CONSENT = "no_consent"
    OPTED_OUT = "opted_out"
    # 4. cadence
    NOT_DUE = "not_due"
    # 5. time
    NON_WORKING_DAY = "non_working_day"
    OUTSIDE_HOURS = "outside_hours"
    # 6. caps
    FREQUENCY_CAP = "frequency_cap"
    REST_PERIOD = "rest_period"
    # 7.
    DUE = "due"
    LEGAL_HANDOFF = "legal_handoff"
    # Extension (not in the contract list): no approved template exists for the
    # stage/channel/locale, so nothing lawful can be said. Lint at start-up prevents it.
    NO_APPROVED_TEMPLATE = "no_approved_template"


#: Hold reasons a collector or a reply can place on a case, in precedence order.
HOLD_REASONS: tuple[Reason, ...] = (
    Reason.CEASE_COMMUNICATION,
    Reason.DISPUTE_HOLD,
    Reason.LEGAL_HOLD,
    Reason.COLLECTOR_HOLD,
    Reason.PAYMENT_CLAIMED,
    Reason.PROMISE_TO_PAY,
)


class CaseStatus(StrEnum):
    ACTIVE = "active"
    PAID = "paid"
    SETTLED = "settled"
    CLOSED = "closed"


CLOSED_STATUSES = frozenset({CaseStatus.PAID, CaseStatus.SETTLED, CaseStatus.CLOSED})


class Product(StrEnum):
    CREDIT_CARD = "credit_card"
    LOAN = "loan"
    OTHER = "other"


class MessageStatus(StrEnum):
    """Outbox lifecycle. Provider statuses are mapped onto these."""

    QUEUED = "queued"  # in the outbox, waiting for scheduled_at
    SENDING = "sending"  # claimed and in flight: outcome unknown until recorded
    SENT = "sent"  # accepted by the provider
    #: the provider may have it but could not confirm it (an SMTP connection lost after
    #: the message data went out): counts as sent for cadence and caps, never resent
    SENT_UNCONFIRMED = "sent_unconfirmed"
    DELIVERED = "delivered"
    READ = "read"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    CANCELLED = "cancelled"  # never left: case closed, opted out, ...
    # voice
    RINGING = "ringing"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    BUSY = "busy"
    NO_ANSWER = "no-answer"


class AddressOutcome(StrEnum):
    """What a provider's error on a failed message says about the address it went to.
    The channel maps its provider's codes onto these; the services act on them alone."""

    NONE = "none"  # nothing about the address (or nothing we act on)
    INVALID = "invalid"  # the address cannot take the channel at all
    CARRIER_OPT_OUT = "carrier_opt_out"  # the recipient opted out at the carrier (SMS STOP)


class MessageKind(StrEnum):
    SCHEDULED = "scheduled"
    ONE_OFF = "one_off"


@dataclass(frozen=True, slots=True)
class ContactPoint:
    """One channel's address for a case, with its permission flags."""

    channel: Channel
    address: str | None
    consent: bool
    opted_out: bool = False
    invalid: bool = False


@dataclass(frozen=True, slots=True)
class Hold:
    reason: Reason
    until: dt.datetime | None = None  # None: until released

    def active_at(self, now: dt.datetime) -> bool:
        return self.until is None or now < self.until


@dataclass(frozen=True, slots=True)
class Case:
    case_id: str
    name: str
    jurisdiction: str
    locale: str
    currency: str
    principal: Decimal
    interest: Decimal
    penalty: Decimal
    fees: Decimal
    amount_due: Decimal
    due_date: dt.date
    timezone: str | None = None  # explicit IANA zone from the import, if any
    phone: str | None = None  # E.164
    email: str | None = None
    penalty_rate_daily: Decimal | None = None
    status: CaseStatus = CaseStatus.ACTIVE
    product: Product = Product.OTHER
    #: payments recorded so far (`dispatcher payment`, the API, the console)
    paid_total: Decimal = Decimal("0.00")

    @property
    def outstanding(self) -> Decimal:
        """What the debtor owes now (SPEC 11): `amount_due - paid_total`, never below 0."""
        owed = self.amount_due - self.paid_total
        return owed if owed > 0 else Decimal("0.00")

    @property
    def first_name(self) -> str:
        return self.name.split()[0] if self.name.split() else self.name


@dataclass(frozen=True, slots=True)
class SentMessage:
    """One past (or queued) message of a case, as the policy sees it."""

    channel: Channel
    at: dt.datetime  # aware; when it was sent, or is scheduled to be sent
    status: MessageStatus
    stage: str | None = None
    template: str | None = None  # template id, e.g. "sms/dpd30/v2"
    conversation: bool = False  # voice: a person answered and the call completed
    message_id: int | None = None  # the outbox row, when known
    #: voice: Twilio's AnsweredBy (`human`, `machine_start`, ...), None when not reported
    answered_by: str | None = None


@dataclass(frozen=True, slots=True)
class Instalment:
    """One instalment of a repayment plan: its number (1-based), the debtor's local date
    it is due on, and its amount."""

    number: int
    due: dt.date
    amount: Decimal


@dataclass(frozen=True, slots=True)
class RepaymentPlan:
    """A repayment plan the debtor accepted and that has not ended (not broken, not
    completed). Payments recorded after it was made (the case's paid total above
    `paid_at_start`) apply to its instalments in order."""

    plan_id: int
    offer: str
    created_on: dt.date  # the debtor's local date the plan was accepted
    instalments: tuple[Instalment, ...]
    paid_at_start: Decimal
    #: the penalty waived if every instalment is paid (0: no waiver)
    waived: Decimal = Decimal("0.00")

    @property
    def total(self) -> Decimal:
        return sum((i.amount for i in self.instalments), Decimal("0.00"))


@dataclass(frozen=True, slots=True)
class CaseSnapshot:
    """Everything the policy needs to decide about one case."""

    case: Case
    contacts: tuple[ContactPoint, ...] = ()
    holds: tuple[Hold, ...] = ()
    history: tuple[SentMessage, ...] = ()
    escalated_stages: frozenset[str] = field(default_factory=frozenset)
    #: zones the case may be in, primary first (explicit, from the phone, or the profile's)
    zones: tuple[str, ...] = ()
    #: a promise to pay was broken and no payment has come in since: firmer wording
    promise_broken: bool = False
    #: the case's repayment plan in force (accepted, neither broken nor completed), if any
    plan: RepaymentPlan | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    case_id: str
    stage: str | None
    channel: Channel | None
    action: Action
    reason: Reason
    template: str | None = None
    not_before: dt.datetime | None = None
    detail: str = ""

    def as_json(self) -> dict[str, object]:
        """The contract JSON Lines shape of SPEC section 4."""
        return {
            "case_id": self.case_id,
            "stage": self.stage,
            "channel": None if self.channel is None else self.channel.value,
            "action": self.action.value,
            "reason": self.reason.value,
            "template": self.template,
            "not_before": None if self.not_before is None else self.not_before.isoformat(),
            "detail": self.detail,
        }
