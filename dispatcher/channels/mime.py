"""The bytes of a reminder e-mail: headers, then a text part and an optional HTML part.

Why not `email.mime` + `Message.as_bytes()`: the generator walks the message tree in
Python, re-folding every header and re-wrapping every line, and cost ~260 µs per
reminder here (a 3 kB HTML body), more than the SMTP exchange. A reminder always has the
same shape, so it is laid out directly, and only the parts that need care are left to
the standard library: RFC 2047 encoded words (`email.header.Header`), addresses
(`email.utils.formataddr`), base64 (`base64.encodebytes`, 76-character lines). The
result parses with `email` into the same headers and parts (tested).

- every body part is UTF-8 in base64: 7-bit clean for any relay, and Chinese text costs
  no more than quoted-printable would;
- header values with CR or LF are refused (header injection);
- the boundary cannot occur inside a part: base64 never contains `_`.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from email.header import Header

CRLF = b"\r\n"
#: RFC 5322: a header line longer than this must be folded; ours never are.
_MAX_LINE = 998


def header_line(name: str, value: str) -> bytes:
    """`Name: value` + CRLF; a non-ASCII value as RFC 2047 encoded words, folded."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"header {name} contains a line break")
    if not value.isascii():
        value = Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    line = f"{name}: {value}".encode("ascii")
    if any(len(part) > _MAX_LINE for part in line.split(CRLF)):
        raise ValueError(f"header {name} is longer than {_MAX_LINE} characters")
    return line + CRLF


def _part(subtype: str, text: str) -> bytes:
    body = base64.encodebytes(text.encode("utf-8")).replace(b"\n", CRLF)
    return (f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n").encode("ascii") + body


def reminder_bytes(headers: Iterable[tuple[str, str]], text: str, html: str | None) -> bytes:
    """The whole message: `headers` (From, To, Subject, ... in order) as given, then
    MIME-Version and the body: `text/plain`, or `multipart/alternative` with the HTML."""
    head = b"".join(header_line(name, value) for name, value in headers) + b"MIME-Version: 1.0\r\n"
    if html is None:
        return head + _part("plain", text)
    boundary = f"=_dispatcher_{secrets.token_hex(12)}".encode("ascii")
    return b"".join((
        head, b'Content-Type: multipart/alternative; boundary="', boundary, b'"\r\n\r\n',
        b"--", boundary, CRLF, _part("plain", text),
        b"--", boundary, CRLF, _part("html", html),
        b"--", boundary, b"--", CRLF,
    ))
