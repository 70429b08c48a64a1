"""The fuzz tests' tallies as Markdown tables for BENCHMARKS.md.

    DISPATCHER_FUZZ_EXAMPLES=60 .venv/bin/python -m pytest -q tests/integration/test_fuzz_web.py \\
        tests/integration/test_fuzz_import.py
    .venv/bin/python bench/fuzz_table.py

Reads `var/fuzz/web-<store>.json` (requests per endpoint and status code) and
`var/fuzz/import-<store>.json` (files and rows), written by those tests."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "var" / "fuzz"
STORES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def web_table() -> str:
    data = {s: json.loads((FUZZ / f"web-{s}.json").read_text()) for s in STORES if (FUZZ / f"web-{s}.json").exists()}
    endpoints = sorted({e for d in data.values() for e in d}, key=lambda e: (e.split()[1], e.split()[0]))
    lines = ["| endpoint | " + " | ".join(f"{STORES[s]} requests" for s in data) + " | status codes (both stores) |",
             "|---|" + "---:|" * len(data) + "---|"]
    totals = dict.fromkeys(data, 0)
    for endpoint in endpoints:
        codes: dict[str, int] = {}
        cells = []
        for store, d in data.items():
            row = d.get(endpoint, {})
            totals[store] += sum(row.values())
            cells.append(str(sum(row.values())))
            for code, n in row.items():
                codes[code] = codes.get(code, 0) + n
        shown = ", ".join(f"{code} × {n}" for code, n in sorted(codes.items()))
        lines.append(f"| `{endpoint}` | " + " | ".join(cells) + f" | {shown} |")
    lines.append("| **all** | " + " | ".join(f"**{totals[s]}**" for s in data) + " | no 5xx |")
    return "\n".join(lines)


def import_table() -> str:
    data = {s: json.loads((FUZZ / f"import-{s}.json").read_text())
            for s in STORES if (FUZZ / f"import-{s}.json").exists()}
    keys = sorted({k for d in data.values() for k in d})
    lines = ["| | " + " | ".join(STORES[s] for s in data) + " |", "|---|" + "---:|" * len(data)]
    lines += [f"| {k} | " + " | ".join(str(d.get(k, 0)) for d in data.values()) + " |" for k in keys]
    return "\n".join(lines)


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    if not any(FUZZ.glob("*.json")):
        print(f"no tallies in {FUZZ}: run the fuzz tests first (see --help)", file=sys.stderr)
        return 1
    print(web_table())
    print()
    print(import_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
