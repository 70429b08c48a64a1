"""The text encoding of a case file (`dispatcher import`), detected without a guess
that could import mojibake."""

from __future__ import annotations

from pathlib import Path


def detect_encoding(path: Path) -> str:
    """The text encoding of a case file, read once in binary, line by line.

    UTF-8 unless no line with non-ASCII bytes is UTF-8 and every such line is GB 18030
    (a superset of GBK and GB 2312): then `gb18030`. A file that mixes the two — or has
    a stray byte — stays UTF-8 and its bad rows are rejected one by one, never imported
    as mojibake."""
    utf8 = foreign = 0
    with open(path, "rb") as raw:
        for line in raw:
            if line.isascii():
                continue
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                utf8 += 1
                break  # one UTF-8 line with non-ASCII text: the file is UTF-8
            try:
                line.decode("gb18030")
            except UnicodeDecodeError:
                return "utf-8-sig"
            foreign += 1
    return "gb18030" if foreign and not utf8 else "utf-8-sig"
