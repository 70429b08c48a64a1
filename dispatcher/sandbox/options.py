"""Everything a sandbox can be told: ports, credentials, latency, failures, behaviours."""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dispatcher.clock import Clock
from dispatcher.sandbox.faults import FaultPlan

#: Fixed, obviously fake credentials so that a sandbox and its clients agree by default.
DEFAULT_ACCOUNT_SID = "AC" + "5a" * 16
DEFAULT_AUTH_TOKEN = "sandbox-auth-token-0123456789abc"

#: AnsweredBy values Twilio reports with answering-machine detection.
ANSWERED_BY_VALUES = frozenset(
    {"human", "machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax", "unknown"}
)
CALL_OUTCOMES = frozenset({"completed", "busy", "no-answer", "failed"})

#: E-mail recipient rule kinds (see `dispatcher.sandbox.smtp_sink`).
EMAIL_RULE_KINDS = frozenset({"hard", "tempfail", "async_hard", "soft", "drop_after_data"})


@dataclass(frozen=True, slots=True)
class CallBehaviour:
    """How the callee of a simulated call behaves.

    `outcome` other than `completed` means nobody answers (busy, no-answer) or the call
    cannot be placed (failed): no TwiML is fetched. `digits` are pressed in order, one
    entry per `<Gather>` (an entry may hold several keys, e.g. "12"); a `<Gather>` met
    when no entries are left times out. An entry `date+N` presses the date N days after
    the sandbox's today as month then day (`1210`), as a caller keys a promised date. A
    machine never presses keys.
    """

    answered_by: str = "human"
    outcome: str = "completed"
    digits: tuple[str, ...] = ()
    talk_seconds: int | None = None  # CallDuration override; else estimated from the script

    def __post_init__(self) -> None:
        if self.answered_by not in ANSWERED_BY_VALUES:
            raise ValueError(f"answered_by {self.answered_by!r}: use one of {sorted(ANSWERED_BY_VALUES)}")
        if self.outcome not in CALL_OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r}: use one of {sorted(CALL_OUTCOMES)}")

    @property
    def is_machine(self) -> bool:
        return self.answered_by.startswith("machine") or self.answered_by == "fax"


HUMAN = CallBehaviour()
VOICEMAIL = CallBehaviour(answered_by="machine_end_beep")

CallBehaviourSource = CallBehaviour | Callable[[str], CallBehaviour]


@dataclass(frozen=True, slots=True)
class SandboxOptions:
    """Options of one sandbox; `Sandbox(**fields)` and `run_sandbox_in_thread(**fields)` take them."""

    host: str = "127.0.0.1"
    twilio_port: int = 0  # 0: a free port
    smtp_port: int = 0
    account_sid: str = DEFAULT_ACCOUNT_SID
    auth_token: str = DEFAULT_AUTH_TOKEN
    seed: int | None = None  # seeds every random choice (faults, failures, duplicates)
    clock: Clock | None = None  # timestamps of records (share the demo's simulated clock)
    #: the sandbox's clock runs this far ahead of `clock` (negative: behind): a provider
    #: whose clock is skewed from the dispatcher's (records' dates, the Date header)
    clock_offset_seconds: float = 0.0
    #: keep the Twilio records in this file (JSON lines) and read them back at start:
    #: a restarted sandbox still answers fetch and list for what it received before
    records_path: str | None = None

    # Twilio API behaviour
    latency_ms: float = 0.0  # added to every Twilio API response
    faults: FaultPlan | str | None = None  # create-endpoint faults, see dispatcher.sandbox.faults
    fail_ratio: float = 0.0  # share of accepted SMS/calls that then fail at the "carrier"
    invalid_numbers: frozenset[str] = frozenset()  # create rejected: 400, Twilio 21211
    undeliverable_numbers: frozenset[str] = frozenset()  # accepted, then undelivered (30003)
    timeout_hold_s: float = 30.0  # how long a `timeout` fault holds the response back
    retry_after_s: int = 1  # Retry-After of a `429` fault
    #: where a list shows records without its sort date (a message not yet sent, a call
    #: not yet dialled): first or last; Twilio does not document it (see `listing`)
    undated_first: bool = True
    #: a Messaging Service with Smart Encoding on: its messages' Unicode look-alikes are
    #: replaced by GSM-7 characters unless the request says `SmartEncoded=false`
    smart_encoding: bool = False

    # status callbacks
    callback_delay_ms: float = 10.0  # before each status transition / callback
    duplicate_ratio: float = 0.0  # share of callbacks delivered twice
    drop_callback_ratio: float = 0.0  # share of callbacks never delivered (lost)
    shuffle_callbacks: bool = False  # deliver a resource's callbacks in random order, after the fact

    # calls
    call_behaviours: Mapping[str, CallBehaviour] = field(default_factory=dict)  # by destination number
    default_call_behaviour: CallBehaviourSource = HUMAN
    max_twiml_documents: int = 25  # loop guard per call

    # e-mail
    email_rules: Mapping[str, str] = field(default_factory=dict)  # recipient glob -> rule kind
    bounce_url: str | None = None  # where async bounces are POSTed
    bounce_key: str = ""  # HMAC-SHA256 key for X-Dispatcher-Signature
    smtp_credentials: tuple[str, str] | None = None  # require AUTH with these; None accepts any
    #: the SMTP sink holds its answer to the end of the message data this long (a slow
    #: mail server: the message is received, the client does not know it yet)
    smtp_latency_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.faults is None or isinstance(self.faults, str):
            object.__setattr__(self, "faults", FaultPlan.parse(self.faults))
        for name in ("fail_ratio", "duplicate_ratio", "drop_callback_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.latency_ms < 0 or self.callback_delay_ms < 0 or self.smtp_latency_ms < 0:
            raise ValueError("latency_ms, smtp_latency_ms and callback_delay_ms must not be negative")
        for pattern, kind in self.email_rules.items():
            if kind not in EMAIL_RULE_KINDS:
                raise ValueError(f"email_rules[{pattern!r}] = {kind!r}: use one of {sorted(EMAIL_RULE_KINDS)}")
        object.__setattr__(self, "invalid_numbers", frozenset(self.invalid_numbers))
        object.__setattr__(self, "undeliverable_numbers", frozenset(self.undeliverable_numbers))

    @property
    def fault_plan(self) -> FaultPlan:
        assert isinstance(self.faults, FaultPlan)
        return self.faults

    def behaviour_for(self, number: str) -> tuple[CallBehaviour, bool]:
        """The behaviour for a destination, and whether it was configured explicitly."""
        if number in self.call_behaviours:
            return self.call_behaviours[number], True
        source = self.default_call_behaviour
        return (source if isinstance(source, CallBehaviour) else source(number)), False

    def email_rule_for(self, address: str) -> str | None:
        """The first rule whose glob matches the recipient (case-insensitive), or None."""
        lowered = address.lower()
        for pattern, kind in self.email_rules.items():
            if fnmatch.fnmatchcase(lowered, pattern.lower()):
                return kind
        return None


class OffsetClock:
    """Another clock, shifted by a fixed number of seconds (a provider's skewed clock)."""

    def __init__(self, base: Clock, offset_seconds: float) -> None:
        self.base = base
        self.offset = dt.timedelta(seconds=offset_seconds)

    def now(self) -> dt.datetime:
        return self.base.now() + self.offset
