"""The sandbox's records kept in a file, so that a restarted sandbox still answers fetch
and list (and `/sandbox/*` counts) for what it received before (`--records PATH`).

JSON lines, appended: one line per record each time it changes, the last line of a
record wins. A line cut short by a kill is skipped. At start the file is read and
rewritten with one line per record, so it does not grow across restarts.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import IO, Any

from dispatcher.sandbox.records import CallRecord, EmailRecord, MessageRecord

log = logging.getLogger("dispatcher.sandbox.records")

Record = MessageRecord | CallRecord | EmailRecord

_KINDS: dict[str, type[Any]] = {"message": MessageRecord, "call": CallRecord, "email": EmailRecord}
_DATES = frozenset({"date_created", "date_updated", "date_sent", "start_time", "end_time", "received_at"})
_TUPLES = frozenset({"status_callback_events"})


def _kind(record: Record) -> str:
    if isinstance(record, MessageRecord):
        return "message"
    return "call" if isinstance(record, CallRecord) else "email"


def _key(kind: str, record: Record) -> str:
    return f"{kind}:{record.seq}"


def encode(record: Record) -> dict[str, Any]:
    """A record as a JSON object (dates in ISO 8601, e-mail bytes in base64)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        if f.name.startswith("_"):
            continue
        value = getattr(record, f.name)
        if isinstance(value, dt.datetime):
            value = value.isoformat()
        elif isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return {"kind": _kind(record), "record": out}


def decode(line: dict[str, Any]) -> Record:
    """The record of a JSON object written by `encode`."""
    cls = _KINDS[line["kind"]]
    fields: dict[str, Any] = {}
    for name, value in line["record"].items():
        if name in _DATES and value is not None:
            value = dt.datetime.fromisoformat(value)
        elif name == "raw":
            value = base64.b64decode(value)
        elif name in _TUPLES:
            value = tuple(value)
        fields[name] = value
    record: Record = cls(**fields)
    return record


class RecordFile:
    """Appends record states to a file; `load` reads the latest state of each."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._out: IO[str] | None = None

    def load(self) -> list[Record]:
        """Every record's latest state, oldest first; the file is rewritten compactly."""
        latest: dict[str, Record] = {}
        if self.path.exists():
            with self.path.open(encoding="utf-8") as f:
                for number, text in enumerate(f, 1):
                    try:
                        record = decode(json.loads(text))
                    except (ValueError, KeyError, TypeError):
                        log.warning("%s line %d: not a record (cut short?); skipped", self.path, number)
                        continue
                    latest[_key(_kind(record), record)] = record
        records = sorted(latest.values(), key=lambda r: r.seq)
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(encode(record), ensure_ascii=False) + "\n")
        os.replace(tmp, self.path)
        return records

    def write(self, record: Record) -> None:
        """Append the record's current state (the caller holds the recorder's lock)."""
        if self._out is None:
            self._out = self.path.open("a", encoding="utf-8")
        self._out.write(json.dumps(encode(record), ensure_ascii=False) + "\n")
        self._out.flush()  # a SIGKILLed sandbox keeps what the OS has

    def truncate(self) -> None:
        self.close()
        self.path.write_text("", encoding="utf-8")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
