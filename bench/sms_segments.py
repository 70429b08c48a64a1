"""SMS units and segments of every shipped SMS template, and what 1,000 reminders cost.

    .venv/bin/python bench/sms_segments.py [--config config/dispatcher.toml]
        [--before bench/sms_segments_before.json]
    .venv/bin/python bench/sms_segments.py --record FILE [--payment-link URL]

Each template is measured as the linter measures it: rendered with every sample case of
its stage and profile (both jurisdictions, with and without a daily rate, unpaid and
partly paid, the longest amounts and names the linter uses) in the template's own
locale; the worst case counts (UCS-2 code units or GSM-7 septets, and segments). The
automatic replies are rendered for every configured profile. `--record` writes the
measurements as JSON (how the "before" figures were kept); without it, a markdown
table compares the current tree with the recorded file: units and segments per template
and locale, then the cost per 1,000 reminders per locale at the configuration's
`[costs]` SMS segment price (the reminder templates' worst case, averaged over the
variants a stage rotates through; each variant equally often).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

from dispatcher.config import Config, load_config
from dispatcher.domain import Channel
from dispatcher.templates.lint import sms_sizes
from dispatcher.templates.rendering import REPLIES_FOLDER, TemplateSet
from dispatcher.templates.replies import REPLIES, build_reply_context
from dispatcher.templates.segments import sms_segments
from dispatcher.testing import sample_payment_link

ROOT = Path(__file__).resolve().parents[1]
Measure = dict[str, dict[str, object]]


def measure(config: Config, payment_link: str | None) -> Measure:
    templates = TemplateSet(config.resolve(config.templates.directory), config)
    link = payment_link or sample_payment_link(config.links.base_url)
    out: Measure = {}
    for ref in templates.refs():
        if ref.channel is not Channel.SMS:
            continue
        if ref.stage == REPLIES_FOLDER:
            spec = REPLIES[ref.variant]
            infos = [sms_segments(templates.render(ref.template_id, ref.locale, build_reply_context(
                config, name, ref.locale, payment_link=link if spec.with_link else None)).text)
                for name in sorted(config.jurisdictions)]
        else:
            infos = [info for _case, info in sms_sizes(templates, ref, link)]
        worst = max(infos, key=lambda i: (i.segments, i.units))
        out[ref.relpath] = {"encoding": worst.encoding, "units": worst.units, "segments": worst.segments,
                            "reply": ref.stage == REPLIES_FOLDER}
    return out


def _currency(config: Config, locale: str) -> str:
    for profile in config.jurisdictions.values():
        if profile.default_locale == locale:
            return profile.default_currency
    return next(iter(config.costs))


def table(config: Config, before: Measure, after: Measure) -> str:
    lines = ["| template | locale | encoding | units before | segments before | units after | segments after |",
             "|---|---|---|---:|---:|---:|---:|"]
    per_locale: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for relpath in sorted(set(before) | set(after)):
        template, _, locale = relpath.removesuffix(".j2").rpartition(".")
        b, a = before.get(relpath, {}), after.get(relpath, {})
        lines.append(f"| {template} | {locale} | {a.get('encoding') or b.get('encoding')} | {b.get('units', '–')}"
                     f" | {b.get('segments', '–')} | {a.get('units', '–')} | {a.get('segments', '–')} |")
        if b and a and not a.get("reply"):
            per_locale[locale].append((int(str(b["segments"])), int(str(a["segments"]))))
    lines += ["", "| locale | reminder templates | segments per reminder before → after | price per segment |"
              " cost per 1,000 reminders before | after | saved |", "|---|---:|---|---:|---:|---:|---:|"]
    for locale, pairs in sorted(per_locale.items()):
        currency = _currency(config, locale)
        price = config.costs[currency].sms_segment if currency in config.costs else Decimal("0")
        mean_b = Decimal(sum(b for b, _ in pairs)) / len(pairs)
        mean_a = Decimal(sum(a for _, a in pairs)) / len(pairs)
        cost_b, cost_a = (mean_b * price * 1000).quantize(Decimal("0.01")), (mean_a * price * 1000).quantize(
            Decimal("0.01"))
        saved = f"{(1 - mean_a / mean_b) * 100:.0f} %" if mean_b else "–"
        lines.append(f"| {locale} | {len(pairs)} | {mean_b:.2f} → {mean_a:.2f} | {price} {currency} |"
                     f" {cost_b} {currency} | {cost_a} {currency} | {saved} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "dispatcher.toml")
    parser.add_argument("--before", type=Path, default=ROOT / "bench" / "sms_segments_before.json")
    parser.add_argument("--record", type=Path, help="write the measurements of the current tree here")
    parser.add_argument("--payment-link", help="the sample payment link (default: the linter's)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    current = measure(config, args.payment_link)
    if args.record:
        args.record.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print(f"recorded {len(current)} SMS templates in {args.record}")
        return 0
    before = json.loads(args.before.read_text(encoding="utf-8"))
    print(table(config, before, current))
    return 0


if __name__ == "__main__":
    sys.exit(main())
