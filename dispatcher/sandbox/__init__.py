"""A local Twilio-compatible API and SMTP sink, for tests, benchmarks, the demo and
`dispatcher sandbox`.

The real `twilio` SDK and `aiosmtplib` talk to it over loopback sockets. It records
everything it receives (duplicates countable), posts status callbacks signed exactly as
Twilio signs them, plays calls through our TwiML and presses keys, simulates inbound
SMS, bounces e-mail, and injects latency, failures and transport faults.

    async with Sandbox(faults="429:0.05,reset:0.05", seed=7) as sandbox:
        ... sandbox.twilio_url, sandbox.smtp_host, sandbox.smtp_port ...

    with run_sandbox_in_thread(latency_ms=50) as sandbox:   # sync code
        ...

Modules: `server` (Sandbox, run_sandbox_in_thread, serve), `options` (SandboxOptions,
CallBehaviour), `faults` (the fault spec), `twilio_api` (HTTP routes), `listing` (list
order, date filters and paging as Twilio's), `provider` (lifecycles and callbacks),
`voice` (TwiML player), `smtp_sink` (SMTP and the bounce contract), `record_file`
(records kept across restarts), `receiver` (a webhook receiver for tests).
"""

from dispatcher.sandbox.faults import FaultPlan, FaultSpecError
from dispatcher.sandbox.options import HUMAN, VOICEMAIL, CallBehaviour, SandboxOptions
from dispatcher.sandbox.receiver import Reply, WebhookReceiver
from dispatcher.sandbox.server import (
    DEFAULT_SMTP_PORT,
    DEFAULT_TWILIO_PORT,
    Sandbox,
    run_sandbox_in_thread,
    serve,
)
from dispatcher.sandbox.smtp_sink import sign_bounce

__all__ = [
    "DEFAULT_SMTP_PORT",
    "DEFAULT_TWILIO_PORT",
    "HUMAN",
    "VOICEMAIL",
    "CallBehaviour",
    "FaultPlan",
    "FaultSpecError",
    "Reply",
    "Sandbox",
    "SandboxOptions",
    "WebhookReceiver",
    "run_sandbox_in_thread",
    "serve",
    "sign_bounce",
]
