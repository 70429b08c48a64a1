"""Logs are masked by field, not by digit runs (issue 16): personal data never appears
whole, and what is not personal data — timestamps, provider ids, Message-IDs — is never
mangled. The lines below are the ones the daemon and its libraries really write."""

from __future__ import annotations

import io
import json
import logging

import pytest

from dispatcher.logs import JsonFormatter, configure_logging, json_handler, mask_name, scrub


def formatted(msg: str, *args: object, **extra: object) -> dict[str, object]:
    record = logging.LogRecord("dispatcher.test", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    line: dict[str, object] = json.loads(JsonFormatter().format(record))
    return line


# what is not personal data stays whole
@pytest.mark.parametrize("text", [
    "sms 4711 to +86138****5678 accepted as SMc6e8b7246c1f1596a71b83e0d1242d11",
    "call 4712 to +1310****0123 accepted as CA0f3a9b2c4d5e6f70819203a4b5c6d7e8",
    "email 4713 accepted as <dispatcher-4713@bounce.bank.example>",
    "email 4714 accepted as <176472345678.12345.987654321@mail.bank.example>",
    "reconcile deadline 2026-12-03 02:57:30 UTC passed; provider Date Thu, 03 Dec 2026 02:57:31 GMT",
    "plan at 2026-12-07T10:00:00+08:00: queued 1200, deferred 35",
    "stale since 1764730650123 ms; lease 20251203025730",
    "status callback SM0123456789abcdef0123456789abcdef (m=123456789012) kept as orphan",
    "GET /api/cases/C0001785 answered 404 in 0.0123456 s",
])
def test_what_is_not_personal_is_never_mangled(text: str) -> None:
    assert scrub(text) == text
    assert formatted("%s", text)["msg"] == text


# what is personal is masked wherever it hides
@pytest.mark.parametrize(("text", "secret", "masked"), [
    ("550 5.1.1 <alice.wong@example.com>: Recipient address rejected", "alice.wong@example.com",
     "<a***@example.com>"),
    ("Twilio 21211: The 'To' number +8613812345678 is not a valid phone number", "+8613812345678",
     "+86138****5678"),
    ("unreachable +1 310 555 0123 (carrier)", "310 555 0123", "+13105****0123"),
    ("reply from 13812345678: 不要再打了", "13812345678", "138123****5678"),
    ("callback for (310) 555-0123 failed", "555-0123", "for ****23 failed"),
    ("bounce for bob@bank-customer.cn", "bob@bank-customer.cn", "b***@bank-customer.cn"),
])
def test_what_is_personal_is_masked(text: str, secret: str, masked: str) -> None:
    out = scrub(text)
    assert secret not in out and masked in out, out


def test_personal_fields_are_masked_by_kind_and_others_kept() -> None:
    line = formatted("sms %s accepted as %s", 4711, "SMc6e8b7246c1f1596a71b83e0d1242d11",
                     to="+8613812345678", person="王小明", email="wang.xiaoming@example.com",
                     case_id="C0001785", provider_id="SMc6e8b7246c1f1596a71b83e0d1242d11", message_id=4711)
    assert line["to"] == "+86138****5678"
    assert line["person"] == "王**"
    assert line["email"] == "w***@example.com"
    assert line["case_id"] == "C0001785" and line["message_id"] == 4711
    assert line["provider_id"] == "SMc6e8b7246c1f1596a71b83e0d1242d11"
    assert line["msg"] == "sms 4711 accepted as SMc6e8b7246c1f1596a71b83e0d1242d11"
    assert "13812345678" not in json.dumps(line) and "小明" not in json.dumps(line)


def test_the_logger_name_is_not_taken_for_a_persons_name() -> None:
    line = formatted("started")
    assert line["logger"] == "dispatcher.test" and "name" not in line and "person" not in line


def test_names_keep_one_letter_per_word() -> None:
    assert mask_name("王小明") == "王**"
    assert mask_name("Alice Wong") == "A**** W***"
    assert mask_name("") == "-"


def test_a_traceback_is_inside_the_json_line_and_masked() -> None:
    try:
        raise ValueError("cannot reach +8613812345678 at 2026-12-03 02:57:30")
    except ValueError:
        import sys

        record = logging.LogRecord("dispatcher", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert "Traceback" in str(line["exc"]) and "+86138****5678 at 2026-12-03 02:57:30" in str(line["exc"])


def test_apscheduler_routine_lines_are_debug() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO")
        root.handlers[:] = [json_handler(stream)]
        executor = logging.getLogger("apscheduler.executors.default")
        executor.info('Running job "send (trigger: interval[0:00:05], next run at: 2026-12-03 02:57:35 UTC)"')
        executor.info('Job "send" executed successfully')
        logging.getLogger("apscheduler.scheduler").info("Added job \"plan\" to job store \"default\"")
        executor.warning('Run time of job "plan" was missed by 0:00:31')
        executor.error('Job "send" raised an exception')
        logging.getLogger("dispatcher.daemon").info("send: claimed 3, sent 3")
        lines = [json.loads(x) for x in stream.getvalue().splitlines()]
        assert [x["level"] for x in lines] == ["warning", "error", "info"]

        stream.truncate(0)
        stream.seek(0)
        root.setLevel(logging.DEBUG)
        executor.info('Job "send" executed successfully')
        (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
        assert line["level"] == "debug"
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
