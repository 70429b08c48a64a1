"""The reminder e-mail bytes parse into exactly the headers and parts that were given."""

from __future__ import annotations

import email
import email.policy
from email.utils import formataddr

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.channels.mime import header_line, reminder_bytes

HEADERS = [
    ("From", formataddr(("调度银行 Dispatch Bank", "noreply@bank.example"), charset="utf-8")),
    ("To", "debtor1@example.com"),
    ("Subject", "【调度银行】信用卡逾期30天还款提醒：应还金额¥10,285.25，请尽快还款以免影响信用记录"),
    ("Date", "Mon, 07 Dec 2026 02:00:00 +0000"),
    ("Message-ID", "<dispatcher-1@bounce.example>"),
    ("List-Unsubscribe", "<https://x.example/email/unsubscribe/abc>"),
    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
]
TEXT = "尊敬的张伟：\n您的信用卡账户已逾期30天，应还金额¥10,285.25。\n" * 20
HTML = "<html><body><p>尊敬的张伟：</p><p>O'Brien &amp; co</p></body></html>" * 20


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def test_multipart_parses_back_to_the_same_headers_and_parts() -> None:
    data = reminder_bytes(HEADERS, TEXT, HTML)
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert data.isascii() and b"\n" not in data.replace(b"\r\n", b"")  # 7-bit, CRLF only
    mail = parse(data)
    assert mail["Subject"] == HEADERS[2][1]
    assert mail["From"].addresses[0].display_name == "调度银行 Dispatch Bank"
    assert mail["From"].addresses[0].addr_spec == "noreply@bank.example"
    for name, value in HEADERS[1:2] + HEADERS[3:]:
        assert mail[name] == value
    assert mail["MIME-Version"] == "1.0"
    assert mail.get_content_type() == "multipart/alternative"
    plain, html = list(mail.iter_parts())
    assert plain.get_content_type() == "text/plain" and plain.get_content() == TEXT
    assert html.get_content_type() == "text/html" and html.get_content() == HTML
    assert plain["Content-Transfer-Encoding"] == "base64"
    assert not mail.defects and not plain.defects and not html.defects


def test_text_only_is_a_single_part() -> None:
    mail = parse(reminder_bytes(HEADERS[:3], "Plain ASCII body.\nLine two.", None))
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content() == "Plain ASCII body.\nLine two."
    assert not mail.is_multipart()


def test_line_breaks_in_header_values_are_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        header_line("Subject", "Hello\r\nBcc: victim@example.com")
    with pytest.raises(ValueError, match="line break"):
        reminder_bytes([("To", "a@example.com\nBcc: b@example.com")], "x", None)


@given(subject=st.text(min_size=0, max_size=200).filter(lambda s: "\r" not in s and "\n" not in s),
       text=st.text(max_size=300), html=st.text(max_size=300))
def test_any_subject_and_body_round_trip(subject: str, text: str, html: str) -> None:
    mail = parse(reminder_bytes([("To", "a@example.com"), ("Subject", subject)], text, html))
    # the parser folds runs of whitespace in unstructured headers back to what was written
    assert " ".join(str(mail["Subject"]).split()) == " ".join(subject.split())
    plain, rich = list(mail.iter_parts())
    assert plain.get_content() == text  # base64 carries every character as it was
    assert rich.get_content() == html
