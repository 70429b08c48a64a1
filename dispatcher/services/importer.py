"""`dispatcher import FILE`: cases from CSV or JSON Lines (SPEC section 3, contract).

One streaming pass: rows are read, validated and upserted in batches, so memory does
not grow with the file. Bad rows never stop good ones: each rejected row yields one
`RowError` per problem (`line N: COLUMN: message`, N the physical line where the record
starts, header = line 1), and with `rejects_path` the rejected rows are written to a
CSV with their original columns and an `error` column.

Error messages never quote names, phone numbers or e-mail addresses (PII); they quote
the other values, so the operator sees what was wrong.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import json
import re
import tempfile
import zoneinfo
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import phonenumbers
from babel.numbers import list_currencies
from sqlalchemy.engine import Engine

from dispatcher.clock import Clock
from dispatcher.config import Config, Jurisdiction
from dispatcher.domain import Case, CaseStatus, Channel, Product
from dispatcher.policy.zones import resolve_zones
from dispatcher.services.text_encoding import detect_encoding
from dispatcher.store.repository import ImportedCase, upsert_cases

#: Columns of the contract, in its order (also the rejects CSV order for JSON Lines).
COLUMNS = (
    "case_id", "name", "jurisdiction", "locale", "timezone", "phone", "email",
    "sms_consent", "voice_consent", "email_consent", "currency",
    "principal", "interest", "penalty", "fees", "amount_due", "penalty_rate_daily",
    "due_date", "status", "product",
)
REQUIRED_COLUMNS = ("case_id", "name", "jurisdiction", "principal", "interest", "penalty", "amount_due", "due_date")

ROW = "row"  # the "column" of an error about the record as a whole

_CASE_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_LOCALES = {"zh-cn": "zh-CN", "en-us": "en-US"}
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_NOT_IANA = frozenset({"localtime", "posixrules", "Factory"})
_CURRENCIES = frozenset(list_currencies())
_STATUSES = tuple(s.value for s in CaseStatus)
_PRODUCTS = tuple(p.value for p in Product)
CENT = Decimal("0.01")
#: Money is NUMERIC(18, 8) on PostgreSQL: 10 digits before the point.
MAX_MONEY = Decimal("9999999999.99")
MAX_RATE = Decimal("9999999999.99999999")
_MAX_ZONES_TEXT = 512  # cases.zones


class ImportUsageError(Exception):
    """The file cannot be imported at all (exit status 2); the message says what to fix."""


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    column: str
    message: str
    raw: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __str__(self) -> str:
        return f"line {self.line}: {self.column}: {self.message}"


@dataclass
class ImportReport:
    imported: int = 0
    updated: int = 0
    rejected: int = 0  # rows, not errors: a row with three problems has three errors
    errors: list[RowError] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """The contract's last stdout line."""
        return f"imported {self.imported}, updated {self.updated}, rejected {self.rejected}"

    @property
    def exit_status(self) -> int:
        """0 when every row was imported, 3 when some were rejected."""
        return 3 if self.rejected else 0


def import_file(
    path: Path | str,
    engine: Engine,
    config: Config,
    clock: Clock,
    rejects_path: Path | str | None = None,
    batch_size: int = 2000,
    *,
    on_error: Callable[[RowError], None] | None = None,
    encoding: str | None = None,
) -> ImportReport:
    """Import a `.csv` (header row) or `.jsonl` file of cases; upsert by case_id.

    Raises `ImportUsageError` when the file cannot be used (unknown extension, missing,
    unreadable, no header, a required column missing from the header). `on_error` is
    called with each `RowError` as it is found (errors are also in the report).
    `encoding` is the file's text encoding (a Python codec name); by default it is
    detected (`detect_encoding`): UTF-8 (with or without BOM), else GB 18030 (GBK, what
    Excel writes for Chinese text), else UTF-8 with the undecodable rows rejected.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ImportUsageError(
            f"{path}: unknown file type {path.suffix or '(none)'!r}; use .csv (with a header row)"
            " or .jsonl (one JSON object per line)"
        )
    if batch_size < 1:
        raise ImportUsageError("batch size must be at least 1")
    if rejects_path is not None and Path(rejects_path).resolve() == path.resolve():
        raise ImportUsageError(f"--rejects {rejects_path}: that is the input file; choose another path")
    if encoding is not None:
        try:
            encoding = codecs.lookup(encoding).name
        except LookupError:
            raise ImportUsageError(f"--encoding {encoding!r}: unknown encoding; use e.g. utf-8 or gbk") from None
    try:
        encoding = "utf-8-sig" if encoding == "utf-8" else encoding or detect_encoding(path)
        # surrogateescape: a row with bytes that are not text in that encoding is rejected
        # on its own (and written back unchanged to the rejects file) instead of failing the file.
        source = open(path, encoding=encoding, errors="surrogateescape", newline="")  # noqa: SIM115
    except FileNotFoundError:
        raise ImportUsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImportUsageError(f"{path}: is a directory; give a .csv or .jsonl file") from None
    except OSError as exc:
        raise ImportUsageError(f"{path}: cannot read it: {exc.strerror or exc}") from None

    report = ImportReport()
    with source:
        if suffix == ".csv":
            header, records = _csv_records(source, path)
        else:
            header, records = None, _jsonl_records(source)
        with _RejectsWriter(rejects_path, header) as rejects:
            batch: list[ImportedCase] = []

            def flush() -> None:
                with engine.begin() as conn:
                    inserted, updated = upsert_cases(conn, batch, clock.now())
                report.imported += inserted
                report.updated += updated
                batch.clear()

            for line, values, raw, problem in records:
                if problem is not None:
                    problems = [problem]
                else:
                    imported, problems = validate_row(values, config)
                    if imported is not None:
                        batch.append(imported)
                        if len(batch) >= batch_size:
                            flush()
                        continue
                report.rejected += 1
                row_errors = [RowError(line, column, message, raw) for column, message in problems]
                report.errors.extend(row_errors)
                if on_error is not None:
                    for error in row_errors:
                        on_error(error)
                rejects.write(raw, "; ".join(str(e) for e in row_errors))
            if batch:
                flush()
    return report


# ------------------------------------------------------------------------------ readers

#: (line, values by contract column name, the original record, a record-level problem)
Record = tuple[int, dict[str, str], dict[str, str], tuple[str, str] | None]


def _not_utf8(texts: Any) -> bool:
    try:
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_NOT_UTF8 = (ROW, "contains bytes that are not UTF-8 text; save the file as UTF-8 (or give --encoding, e.g. gbk)")


def _csv_records(source: IO[str], path: Path) -> tuple[list[str], Iterator[Record]]:
    reader = csv.reader(source)
    try:
        header = next(reader)
    except StopIteration:
        raise ImportUsageError(
            f"{path}: the file is empty; line 1 must be the header, e.g. {','.join(REQUIRED_COLUMNS)}"
        ) from None
    except csv.Error as exc:
        raise ImportUsageError(f"{path}: line 1: the header is not valid CSV: {exc}") from None
    names = [h.strip().lower() for h in header]
    repeated = sorted({n for n in names if n and names.count(n) > 1})
    if repeated:
        raise ImportUsageError(f"{path}: line 1: column(s) {', '.join(repeated)} appear more than once in the header")
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ImportUsageError(
            f"{path}: line 1: the header lacks the required column(s) {', '.join(missing)};"
            f" required: {', '.join(REQUIRED_COLUMNS)} (optional: "
            f"{', '.join(c for c in COLUMNS if c not in REQUIRED_COLUMNS)})"
        )
    wanted = [(i, n) for i, n in enumerate(names) if n in COLUMNS]

    def records() -> Iterator[Record]:
        end = reader.line_num  # the header may itself span lines
        while True:
            start = end + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                if reader.line_num == end:  # nothing consumed: do not spin
                    raise ImportUsageError(f"{path}: line {start}: cannot read on: {exc}") from None
                end = reader.line_num
                yield start, {}, {}, (ROW, f"not valid CSV: {exc}")
                continue
            end = reader.line_num
            if not any(f.strip() for f in fields):
                continue  # a blank line, or a spreadsheet's empty row (",,,,")
            raw = dict(zip(header, fields, strict=False))
            if len(fields) != len(header):
                yield start, {}, raw, (
                    ROW,
                    f"has {len(fields)} fields but the header has {len(header)};"
                    " quote values that contain commas, quotes or line breaks",
                )
                continue
            if _not_utf8(fields):
                yield start, {}, raw, _NOT_UTF8
                continue
            yield start, {n: fields[i] for i, n in wanted}, raw, None

    return header, records()


def _json_text(value: Any) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def _jsonl_records(source: IO[str]) -> Iterator[Record]:
    for line, text in enumerate(source, start=1):
        if not text.strip():
            continue
        if _not_utf8(text):
            yield line, {}, {"raw_line": text.rstrip("\r\n")}, _NOT_UTF8
            continue
        try:
            obj = json.loads(text, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            yield line, {}, {"raw_line": text.rstrip("\r\n")}, (
                ROW, f"not valid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON object")
            continue
        if not isinstance(obj, dict):
            yield line, {}, {"raw_line": text.rstrip("\r\n")}, (
                ROW, f"must be a JSON object like {{\"case_id\": ...}}, not {type(obj).__name__}")
            continue
        raw = {str(k): _json_text(v) for k, v in obj.items()}
        by_name = {str(k).strip().lower(): v for k, v in obj.items()}
        nested = next((k for k in COLUMNS if isinstance(by_name.get(k), dict | list)), None)
        if nested is not None:
            yield line, {}, raw, (nested, "must be a string, number, boolean or null, not a JSON object or list")
            continue
        yield line, {k: _json_text(by_name[k]) for k in COLUMNS if k in by_name}, raw, None


class _RejectsWriter:
    """Writes rejected rows as CSV: original columns plus `error`.

    For CSV input the header is known up front; for JSON Lines the columns are the
    contract's plus any others the rejected rows have, so rows are spooled to a
    temporary file and the CSV is written at the end (memory stays bounded)."""

    def __init__(self, path: Path | str | None, header: list[str] | None) -> None:
        self._path = None if path is None else Path(path)
        self._header = header
        self._out: IO[str] | None = None
        self._spool: IO[str] | None = None
        self._extra: dict[str, None] = {}
        self._writer: Any = None

    def __enter__(self) -> _RejectsWriter:
        if self._path is None:
            return self
        try:
            self._out = open(self._path, "w", encoding="utf-8", errors="surrogateescape", newline="")
        except OSError as exc:
            raise ImportUsageError(f"--rejects {self._path}: cannot write it: {exc.strerror or exc}") from None
        if self._header is not None:
            self._writer = csv.writer(self._out)
            self._writer.writerow([*self._header, "error"])
        else:
            self._spool = tempfile.TemporaryFile("w+", encoding="utf-8", errors="surrogateescape")
        return self

    def write(self, raw: Mapping[str, str], error: str) -> None:
        if self._out is None:
            return
        if self._spool is None:
            assert self._header is not None
            self._writer.writerow([*(raw.get(h, "") for h in self._header), error])
            return
        for key in raw:
            if key not in COLUMNS:
                self._extra.setdefault(key)
        self._spool.write(json.dumps([raw, error], ensure_ascii=False) + "\n")

    def __exit__(self, *exc_info: object) -> None:
        if self._out is None:
            return
        try:
            if self._spool is not None:
                columns = [*COLUMNS, *self._extra]
                writer = csv.writer(self._out)
                writer.writerow([*columns, "error"])
                self._spool.seek(0)
                for text in self._spool:
                    raw, error = json.loads(text)
                    writer.writerow([*(raw.get(c, "") for c in columns), error])
        finally:
            if self._spool is not None:
                self._spool.close()
            self._out.close()


# ----------------------------------------------------------------------------- validation


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


def _money(values: Mapping[str, str], column: str, required: bool, problems: list[tuple[str, str]]) -> Decimal | None:
    text = values.get(column, "").strip()
    expected = "a decimal amount >= 0 with at most 2 decimals, e.g. 1234.50"
    if not text:
        if required:
            problems.append((column, f"required: {expected}"))
            return None
        return Decimal("0.00")
    if not _DECIMAL.fullmatch(text):
        problems.append((column, f"must be {expected} (got {_shown(text)})"))
        return None
    amount = Decimal(text)
    if amount < 0:
        problems.append((column, f"must be >= 0 (got {text})"))
        return None
    if amount > MAX_MONEY:
        problems.append((column, f"must be at most {MAX_MONEY} (got {text})"))
        return None
    cents = amount.quantize(CENT)
    if cents != amount:
        problems.append((column, f"must have at most 2 decimals (got {text})"))
        return None
    return cents if cents else Decimal("0.00")  # no "-0.00"


def _is_zone(name: str) -> bool:
    if name in _NOT_IANA:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


#: C0 controls other than tab, line feed and carriage return, and DEL: no name, address or
#: amount holds one (PostgreSQL cannot even store NUL), so a row with one is refused
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def validate_row(
    values: Mapping[str, str], config: Config
) -> tuple[ImportedCase | None, list[tuple[str, str]]]:
    """Validate one record (contract column -> text); returns the case or the problems
    as (column, message) pairs, every problem of the row at once."""
    problems: list[tuple[str, str]] = []
    for column, value in values.items():
        if _CONTROL.search(value):
            problems.append((column, "contains control characters (such as NUL); remove them from the file"))

    def text(column: str) -> str:
        return values.get(column, "").strip()

    case_id = text("case_id")
    if not case_id:
        problems.append(("case_id", "required: 1 to 64 characters of A-Za-z0-9_.-"))
    elif not _CASE_ID.fullmatch(case_id):
        problems.append(("case_id", f"must be 1 to 64 characters of A-Za-z0-9_.- (got {_shown(case_id)})"))

    name = text("name")
    if not name:
        problems.append(("name", "required: the debtor's full name"))

    profiles = ", ".join(sorted(config.jurisdictions))
    jurisdiction = text("jurisdiction").lower()
    profile: Jurisdiction | None = config.jurisdictions.get(jurisdiction)
    if not jurisdiction:
        problems.append(("jurisdiction", f"required: one of {profiles}"))
    elif profile is None:
        problems.append(("jurisdiction", f"must be one of {profiles} (got {_shown(text('jurisdiction'))})"))

    locale = text("locale")
    if locale:
        canonical = _LOCALES.get(locale.lower().replace("_", "-"))
        if canonical is None:
            problems.append(("locale", f"must be zh-CN or en-US, or empty for the jurisdiction's default"
                                       f" (got {_shown(locale)})"))
        locale = canonical or locale
    elif profile is not None:
        locale = profile.default_locale

    timezone = text("timezone") or None
    if timezone is not None and not _is_zone(timezone):
        problems.append(("timezone", "must be an IANA time zone such as Asia/Shanghai or America/Los_Angeles,"
                                     f" or empty to derive it from the phone number (got {_shown(timezone)})"))

    phone: str | None = None
    raw_phone = text("phone")
    if raw_phone:
        region = profile.default_region if profile is not None else None
        expected = "must be a valid phone number: E.164 like +8613812345678" + (
            f", or a national number of region {region}" if region else "")
        try:
            number = phonenumbers.parse(raw_phone, region)
        except phonenumbers.NumberParseException:
            problems.append(("phone", expected))
        else:
            if phonenumbers.is_valid_number(number):
                phone = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            else:
                problems.append(("phone", expected))

    email = text("email").lower() or None
    if email is not None and (len(email) > 320 or not _EMAIL.fullmatch(email)):
        problems.append(("email", "must be an e-mail address like name@example.com"))

    consents: dict[Channel, bool] = {}
    for channel in (Channel.SMS, Channel.VOICE, Channel.EMAIL):
        column = f"{channel.value}_consent"
        flag = text(column).lower()
        if flag in _TRUE:
            consents[channel] = True
        elif flag in _FALSE:
            consents[channel] = False
        elif flag:
            problems.append((column, "must be true/false, 1/0 or yes/no, or empty for the jurisdiction's"
                                     f" default (got {_shown(text(column))})"))
        elif profile is not None:
            consents[channel] = profile.consent_default.for_channel(channel)

    currency = text("currency").upper()
    if currency:
        if currency not in _CURRENCIES:
            problems.append(("currency", f"must be an ISO 4217 currency code such as CNY or USD"
                                         f" (got {_shown(text('currency'))})"))
    elif profile is not None:
        currency = profile.default_currency

    principal = _money(values, "principal", True, problems)
    interest = _money(values, "interest", True, problems)
    penalty = _money(values, "penalty", True, problems)
    fees = _money(values, "fees", False, problems)
    amount_due = _money(values, "amount_due", True, problems)
    if None not in (principal, interest, penalty, fees, amount_due):
        total = principal + interest + penalty + fees  # type: ignore[operator]
        if total != amount_due:
            problems.append(("amount_due", f"must equal principal + interest + penalty + fees = {total}"
                                           f" (got {amount_due})"))

    rate: Decimal | None = None
    raw_rate = text("penalty_rate_daily")
    if raw_rate:
        expected = "must be a daily rate >= 0 with at most 8 decimals, e.g. 0.0005"
        if not _DECIMAL.fullmatch(raw_rate):
            problems.append(("penalty_rate_daily", f"{expected} (got {_shown(raw_rate)})"))
        else:
            rate = Decimal(raw_rate)
            if rate < 0 or rate > MAX_RATE or rate != rate.quantize(Decimal("1E-8")):
                problems.append(("penalty_rate_daily", f"{expected} (got {raw_rate})"))
                rate = None

    due_date: dt.date | None = None
    raw_due = text("due_date")
    if not raw_due:
        problems.append(("due_date", "required: the date the missed payment was due, YYYY-MM-DD"))
    else:
        try:
            if not _DATE.fullmatch(raw_due):
                raise ValueError
            due_date = dt.date.fromisoformat(raw_due)
        except ValueError:
            problems.append(("due_date", f"must be a date YYYY-MM-DD, e.g. 2026-11-07 (got {_shown(raw_due)})"))

    status = text("status").lower() or CaseStatus.ACTIVE.value
    if status not in _STATUSES:
        problems.append(("status", f"must be one of {', '.join(_STATUSES)}"
                                   f" (got {_shown(text('status'))})"))

    product = text("product").lower() or Product.OTHER.value
    if product not in _PRODUCTS:
        problems.append(("product", f"must be one of {', '.join(_PRODUCTS)}"
                                    f" (got {_shown(text('product'))})"))

    if problems or profile is None:
        return None, problems
    case = Case(
        case_id=case_id,
        name=name,
        jurisdiction=jurisdiction,
        locale=locale,
        currency=currency,
        principal=principal,  # type: ignore[arg-type]
        interest=interest,  # type: ignore[arg-type]
        penalty=penalty,  # type: ignore[arg-type]
        fees=fees,  # type: ignore[arg-type]
        amount_due=amount_due,  # type: ignore[arg-type]
        due_date=due_date,  # type: ignore[arg-type]
        timezone=timezone,
        phone=phone,
        email=email,
        penalty_rate_daily=rate,
        status=CaseStatus(status),
        product=Product(product),
    )
    zones = resolve_zones(case, profile)
    if len(",".join(zones)) > _MAX_ZONES_TEXT:
        return None, [("timezone", "the phone number spans too many time zones to store; give the timezone column")]
    return (
        ImportedCase(
            case=case,
            zones=zones,
            sms_consent=consents[Channel.SMS],
            voice_consent=consents[Channel.VOICE],
            email_consent=consents[Channel.EMAIL],
        ),
        [],
    )
