"""Structured (JSON Lines) logging. Callers mask PII before logging (see
`dispatcher.services.outbox.mask`); this formatter adds a last line of defence that
masks anything shaped like a full phone number or e-mail address."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

_PHONE = re.compile(r"\+?\d[\d \-]{8,}\d")
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+)")


def mask(address: str | None) -> str:
    """An address fit for logs: +86138****5678, a***@example.com."""
    if not address:
        return "-"
    if "@" in address:
        local, _, domain = address.partition("@")
        return f"{local[:1]}***@{domain}"
    return address[:6] + "****" + address[-4:] if len(address) > 10 else "****" + address[-2:]


def scrub(text: str) -> str:
    """Mask phone numbers and e-mail addresses in free text."""
    text = _EMAIL.sub(r"\1***@\2", text)
    return _PHONE.sub(lambda m: m.group(0)[:4] + "****" + m.group(0)[-2:], text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        if record.exc_info:
            payload["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(payload, ensure_ascii=False)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # psycopg_pool logs three INFO lines per borrowed connection, i.e. per status callback:
    # kept for DEBUG only
    logging.getLogger("psycopg.pool").setLevel(logging.WARNING if root.level > logging.DEBUG else logging.NOTSET)


def log_to_file(path: Path) -> None:
    """JSON lines to a file instead of stderr, with the chatty libraries held at WARNING:
    the demo keeps its console for the progress bar, and its web process appends to the
    same file."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("httpx", "twilio", "aiosmtplib", "mail.log", "uvicorn", "uvicorn.error", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
