"""Structured (JSON Lines) logging, masked by field.

Personal data goes into a log record as a named field (`extra={"to": number}`), never
into the message text: the formatter writes every field of `FIELDS` into the JSON line
and masks those that are personal (`PII_FIELDS`) by their kind — a phone number keeps
its country code and last 4 digits, an e-mail address its first character and domain,
a name its first character. What is not personal data stays whole: timestamps,
provider ids (Twilio `SM…`/`CA…` SIDs), Message-IDs, our message and case ids.

The message text itself gets a last line of defence (`scrub`) for whatever a library
puts there (an SMTP server's "550 <alice@example.com>: no such user"): it masks what is
*shaped* like a phone number (E.164 `+` and 7–15 digits, a Chinese mobile number, a
North American `555-123-4567`) or an e-mail address, and never a digit run inside a
word, a date or a time — nor an address in angle brackets shaped like a Message-ID.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

#: record attributes written to the JSON line (given with `extra=`); personal ones masked
#: (a person's name is `person`: a LogRecord's own `name` is the logger's, which `extra=` cannot set)
FIELDS = ("case_id", "message_id", "channel", "provider_id", "status", "to", "phone", "email", "person", "address")
PII_FIELDS = frozenset({"to", "phone", "email", "person", "address"})

# E.164 (+ and 7-15 digits, optionally grouped by single spaces or dashes), a Chinese
# mobile number (11 digits, 1[3-9]...), a North American number written 555-123-4567 or
# (555) 123-4567 -- each standing alone, never part of a word, an id, a date or a time
_PHONE = re.compile(
    r"(?<![\w+])\+\d(?:[ -]?\d){6,14}(?![\w])"
    r"|(?<![\w.:/-])1[3-9]\d{9}(?!\w|[.:-]\d)"
    r"|(?<![\w.:/-])(?:\(\d{3}\) ?|\d{3}[-.])\d{3}[-.]\d{4}(?!\w|[.:-]\d)"
)
_EMAIL = re.compile(r"(<)?([A-Za-z0-9._%+-]+)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)(>)?")
# the left part of a Message-ID we or email.utils.make_msgid generate
_MESSAGE_ID_LEFT = re.compile(r"dispatcher-[\w.-]+|\d+\.\d+\.\d+[\w.-]*")


def mask(address: str | None) -> str:
    """An address fit for logs: +86138****5678, a***@example.com."""
    if not address:
        return "-"
    if "@" in address:
        local, _, domain = address.partition("@")
        return f"{local[:1]}***@{domain}"
    return address[:6] + "****" + address[-4:] if len(address) > 10 else "****" + address[-2:]


def mask_name(name: str | None) -> str:
    """A name fit for logs and screens that must not show it: 张**, A**** S****."""
    if not name or not name.strip():
        return "-"
    parts = name.split()
    if len(parts) == 1:  # one word, or a CJK name written without spaces
        word = parts[0]
        return word[:1] + "*" * max(len(word) - 1, 2)
    return " ".join(p[:1] + "*" * max(len(p) - 1, 1) for p in parts)


def mask_field(field: str, value: object) -> object:
    """The value of a log field, masked when the field is personal data."""
    if field not in PII_FIELDS or value is None:
        return value
    text = str(value)
    return mask_name(text) if field == "person" else mask(text)


def _mask_email(m: re.Match[str]) -> str:
    opening, local, domain, closing = m.group(1) or "", m.group(2), m.group(3), m.group(4) or ""
    if opening and closing and _MESSAGE_ID_LEFT.fullmatch(local):
        return m.group(0)  # a Message-ID, not a mailbox
    return f"{opening}{local[:1]}***@{domain}{closing}"


def scrub(text: str) -> str:
    """Mask what is shaped like a phone number or an e-mail address in free text."""
    text = _EMAIL.sub(_mask_email, text)
    return _PHONE.sub(lambda m: mask(re.sub(r"[ ().-]", "", m.group(0))), text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for field in FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                payload[field] = mask_field(field, value)
        if record.exc_info:
            payload["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(payload, ensure_ascii=False, default=str)


#: APScheduler's executor logs "Running job …" and "… executed successfully" at INFO for
#: every run of every job (151 of 163 lines in five minutes), and Alembic one line per
#: plugin at every start: they belong to DEBUG
ROUTINE_LOGGERS = ("apscheduler.executors", "apscheduler.scheduler", "alembic.runtime.plugins")


class _RoutineToDebug(logging.Filter):
    """Lowers the routine INFO records of `ROUTINE_LOGGERS` to DEBUG (warnings and errors
    — a job that raised, a run missed — stay as they are)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.name.startswith(ROUTINE_LOGGERS):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def json_handler(stream: Any = None) -> logging.Handler:
    """A handler writing JSON lines (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_RoutineToDebug())
    return handler


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    root.handlers[:] = [json_handler()]
    root.setLevel(level)
    # psycopg_pool logs three INFO lines per borrowed connection, i.e. per status callback:
    # kept for DEBUG only
    logging.getLogger("psycopg.pool").setLevel(logging.WARNING if root.level > logging.DEBUG else logging.NOTSET)


def json_logging_active() -> bool:
    """Whether the root logger writes JSON lines (the daemon's `configure_logging`)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


def log_failure(message: str, exc: BaseException | None = None, *, logger: str = "dispatcher") -> None:
    """One JSON line on stderr for a failure the command cannot go on from — with its
    traceback inside the JSON (`exc`), never a bare traceback — whatever logging is set."""
    record = logging.LogRecord(logger, logging.ERROR, __file__, 0, "%s", (message,),
                               (type(exc), exc, exc.__traceback__) if exc is not None else None)
    sys.stderr.write(JsonFormatter().format(record) + "\n")
    sys.stderr.flush()


def log_to_file(path: Path) -> None:
    """JSON lines to a file instead of stderr, with the chatty libraries held at WARNING:
    the demo keeps its console for the progress bar, and its web process appends to the
    same file."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_RoutineToDebug())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("httpx", "twilio", "aiosmtplib", "mail.log", "uvicorn", "uvicorn.error", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
