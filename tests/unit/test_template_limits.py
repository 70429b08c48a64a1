"""Time and size limits on rendering templates (`dispatcher.templates.limits`).

Staff write templates in a browser; the studio previews them live and the daemon renders
the approved ones for every message. A loop of a billion steps or a string of ten billion
characters must be refused within a short bound with a message that says what to change,
and every shipped template must render exactly as it did in Jinja's stock sandbox.

The attacks run in a child process with a deadline and a memory cap, so a regression
fails this test instead of hanging it or exhausting the machine.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from dispatcher.config import Config
from dispatcher.domain import Channel
from dispatcher.templates.limits import MAX_OUTPUT_CHARS, RENDER_SECONDS, deadline, render_bounded
from dispatcher.templates.lint import _per_profile, _sample_context, _samples
from dispatcher.templates.rendering import REPLIES_FOLDER, REQUIRED_BLOCKS, RenderError, TemplateSet, make_environment
from dispatcher.templates.replies import REPLIES, build_reply_context
from dispatcher.templates.stored import StoredTemplate, StoredTemplateSet
from dispatcher.testing import sample_payment_link

ROOT = Path(__file__).resolve().parents[2]
BIG = "{% set s = 'x' * 99999 %}"
NESTED3 = ("{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(1000) %}"
           "{% endfor %}{% endfor %}{% endfor %}")

#: (template text, a phrase its refusal must contain): each was seen to hang a worker
#: or to ask for gigabytes before the limits.
ATTACKS: list[tuple[str, str]] = [
    ("{% for i in range(10**9) %}x{% endfor %}", "range() of 1,000,000,000 numbers"),
    ("{% for i in range(1001) %}{% endfor %}", "at most 1,000"),
    ("{{ 'x' * 10**10 }}", "at most 100,000 characters"),
    (NESTED3, "took longer than 1 s"),
    ("{% set x = range(1000)|list %}{% for a in x %}{% for b in x %}{% for c in x %}{% endfor %}{% endfor %}"
     "{% endfor %}", "took longer than 1 s"),
    ("{% macro m() %}{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}{% endmacro %}"
     "{% for i in range(1000) %}{{ m() }}{% endfor %}", "took longer than 1 s"),
    ("{% set b %}{% for i in range(1000) %}{% for j in range(1000) %}{{ 'x' * 1000 }}{% endfor %}{% endfor %}"
     "{% endset %}{{ b|length }}", "characters"),
    ("{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
     "at most 100,000 characters"),
    ("{% set a = 'xxxxxxxxxx' %}" + "{% set a = a ~ a %}" * 40, "at most 100,000 characters"),
    ("{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}", "bits"),
    ("{{ 2 ** (10**9) }}", "bits"),
    ("{{ 'x'|center(999999999) }}", "a width of 999,999,999"),
    ("{{ 'x'.ljust(999999999) }}", "a width of 999,999,999"),
    ("{{ '%999999999d' % 1 }}", "999,999,999"),
    ("{{ '%*d' % (999999999, 1) }}", "999,999,999"),
    ("{{ '{:>999999999}'.format(1) }}", "999,999,999"),
    ("{{ '{:>{}}'.format(1, '999999999') }}", "999,999,999"),
    (BIG + "{{ ('{0}' * 1000).format(s) }}", "the formatted text"),
    (BIG + "{{ '%(a)s%(a)s%(a)s' % {'a': s} }}", "the formatted text"),
    (BIG + "{{ [" + "s," * 3000 + "]|join }}", "at most 100,000 characters"),
    (BIG + "{{ [" + "s," * 3000 + "] }}", "a value written out"),
    (BIG + "{{ [" + "s," * 3000 + "]|tojson }}", "tojson"),
    (BIG + "{{ s.join(range(1000)|map('string')) }}", "the joined text"),
    (BIG + "{{ s.replace('x', s) }}", "the text after replace"),
    (BIG + "{{ s|replace('x', s) }}", "the text after replace"),
    (BIG + "{{ s|wordwrap(1, wrapstring=s) }}", "the wrapped text"),
    (BIG + "{{ [s] * 1000 }}", "the repeated text or list"),
    (BIG + "{{ s ~ s }}", "the joined text"),
    (BIG + "{% set d = {" + ", ".join(f"{i}: s" for i in range(2000)) + "} %}{{ d.items() }}", "the result of a call"),
    ("{% set s = 'x\n' * 40000 %}{{ s|indent(100000) }}", "the indented text"),
    ("{{ range(3)|batch(999999999, 'x')|list }}", "a count of 999,999,999"),
    ("{{ lipsum(1000, max=1000) }}", "the filler text"),
    ("{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}", "nested too deeply"),
    ("{{ 1" + "+1" * 20000 + " }}", "nested too deeply"),
    ("{% if 1 %}" * 300 + "{% endif %}" * 300, "nested too deeply"),
    ("{{ 'x' * 1601 }}", "longer than 1,600 characters"),
    (BIG + "{{ s.translate({120: s}) }}", "the translated text"),
    ("{% set s = 'http://a.co ' * 8000 %}{{ s|urlize(target='x' * 99999) }}", "the text with links"),
    ("{% for i in range(1) %}{{ 'x'.ljust(999999999) }}{% endfor %}", "a width of 999,999,999"),
    ("{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}", "a macro calls itself without end"),
    ("{{ 'x'.encode() * 10**10 }}", "the repeated text or list"),
    ("{{ '%999999999d'.encode() % 1 }}", "999,999,999"),
    ("{{ 'x'.encode().ljust(999999999) }}", "a width of 999,999,999"),
    (BIG + "{% set b = s.encode() %}{{ b.replace('x'.encode(), b) }}", "the text after replace"),
    ("{% set t = ('\t' * 99999).encode() %}{{ t.expandtabs(99999) }}", "the text with tabs expanded"),
]

#: The child: renders each attack as an SMS through the real `StoredTemplateSet` and then
#: lints it as saving would, printing one JSON line per attack as it finishes.
CHILD = r"""
import json, resource, sys, time
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
from dispatcher.config import load_config
from dispatcher.templates.lint import _sample_context, lint_text
from dispatcher.templates.rendering import RenderError, parse_relpath
from dispatcher.templates.stored import StoredTemplate, StoredTemplateSet
from dispatcher.testing import SAMPLE_CASES
root = Path(sys.argv[1])
config = load_config(root / "config" / "dispatcher.toml")
phrases = root / "config" / "forbidden_phrases.txt"
ctx = _sample_context(SAMPLE_CASES[1], config, parse_relpath("sms/dpd30/zz.en-US.j2"))
for source in json.load(sys.stdin):
    templates = StoredTemplateSet(config, [StoredTemplate("sms/dpd30/zz", "en-US", source)], where="t")
    start = time.monotonic()
    try:
        templates.render("sms/dpd30/zz", "en-US", ctx)
        outcome = {"kind": "rendered", "detail": ""}
    except RenderError as exc:
        outcome = {"kind": exc.kind, "detail": exc.detail}
    rendered = time.monotonic() - start
    start = time.monotonic()
    problems = [p.message for p in lint_text("sms/dpd30/zz", "en-US", source, config, phrases)]
    print(json.dumps(dict(outcome, seconds=rendered, lint_seconds=time.monotonic() - start, lint=problems)),
          flush=True)
"""


@pytest.fixture(scope="module")
def attacked() -> list[dict[str, Any]]:
    """Each attack's outcome, from a child process that may not take more than 3 minutes."""
    sources = json.dumps([source for source, _ in ATTACKS])
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(ROOT)], input=sources, capture_output=True,
                              text=True, timeout=180, check=False)
    except subprocess.TimeoutExpired as exc:
        finished = (exc.stdout or b"").count(b"\n") if isinstance(exc.stdout, bytes) else (exc.stdout or "").count("\n")
        pytest.fail(f"rendering hung on attack {finished}: {ATTACKS[finished][0][:120]!r}")
    lines = done.stdout.splitlines()
    assert len(lines) == len(ATTACKS), f"the child stopped after {len(lines)} attacks:\n{done.stderr[-3000:]}"
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("index", range(len(ATTACKS)), ids=[a[0][:40] for a in ATTACKS])
def test_each_attack_is_refused_quickly_with_what_to_change(attacked: list[dict[str, Any]], index: int) -> None:
    source, phrase = ATTACKS[index]
    result = attacked[index]
    assert result["kind"] in {"limit", "syntax"}, result
    assert phrase in result["detail"], result["detail"]
    assert result["seconds"] < RENDER_SECONDS + 2.0, result  # the deadline, and some slack for a busy machine
    # saving lints it: refused with the same explanation, and lint stops at the first sample that hits a limit
    assert any(phrase in message for message in result["lint"]), result["lint"]
    assert result["lint_seconds"] < 2 * RENDER_SECONDS + 3.0, result


def test_jinjas_stock_sandbox_folds_a_huge_constant_while_compiling_and_ours_does_not() -> None:
    """Why `*` is intercepted: Jinja evaluates constant expressions at compile time, so
    saving `{{ 'x' * 10**10 }}` alone would ask for 10 GB (shown here with 10**7)."""
    source = "{{ 'x' * 10**7 }}"
    stock = ImmutableSandboxedEnvironment().compile(source, raw=True)
    assert len(stock) > 10**7
    ours = make_environment(autoescape=False).compile(source, raw=True)
    assert len(ours) < 10_000


def _stock(autoescape: bool) -> ImmutableSandboxedEnvironment:
    """The environment templates were rendered in before the limits."""
    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=autoescape, trim_blocks=True,
                                         lstrip_blocks=True, keep_trailing_newline=False, auto_reload=False)


def _raw_blocks(plain: Any, html: Any, channel: Channel, ctx: dict[str, Any], bounded: bool) -> dict[str, str]:
    """Each block's text as the compiled template renders it (SMS: the whole file as `text`)."""
    out = {}
    for name in REQUIRED_BLOCKS[channel] or ("text",):
        t = html if name == "html" else plain
        parts = t.root_render_func(t.new_context(ctx)) if channel is Channel.SMS else \
            t.blocks[name](t.new_context(ctx))
        with deadline(RENDER_SECONDS):
            out[name] = render_bounded(parts, channel.value) if bounded else "".join(parts)
    return out


def test_every_shipped_template_renders_exactly_as_in_the_stock_sandbox(config: Config) -> None:
    shipped = TemplateSet(ROOT / "templates", config)
    stock = (_stock(False), _stock(True))
    ours = (make_environment(autoescape=False), make_environment(autoescape=True))
    compared = 0
    for ref in shipped.refs():
        source = (ROOT / "templates" / ref.relpath).read_text(encoding="utf-8")
        before_env = [env.from_string(source) for env in stock]
        after_env = [env.from_string(source) for env in ours]
        if ref.stage == REPLIES_FOLDER:
            spec = REPLIES[ref.variant]
            link = sample_payment_link(config.links.base_url) if spec.with_link else None
            contexts = [build_reply_context(config, name, ref.locale, payment_link=link)
                        for name in sorted(config.jurisdictions)]
        else:
            contexts = [_sample_context(dataclasses.replace(case, locale=ref.locale), config, ref)
                        for case in _per_profile(_samples(config, ref), config)]
        for ctx in contexts:
            before = _raw_blocks(*before_env, ref.channel, ctx, bounded=False)
            assert _raw_blocks(*after_env, ref.channel, ctx, bounded=True) == before, ref.relpath
            compared += 1
    assert compared > 1000  # every file, with every sample case of its stage and profile


#: Ordinary template code near the limits: it must render as in the stock sandbox.
BENIGN = [
    "{% for i in range(1000) %}{{ i % 10 }}{% endfor %}",
    "{{ '-' * 40 }} {{ [1, 2] * 3 }} {{ 2 ** 100 }} {{ 7 * 6 }} {{ 'a' + 'b' }} {{ [1] + [2] }} {{ 10 % 3 }}",
    "{{ '%05.2f' % 3.14159 }} {{ '%s and %s' % ('a', 'b') }} {{ '%(x)s' % {'x': 1} }} {{ '%d%%' % 5 }}",
    "{{ '{:>10}|{:.3f}|{}'.format('x', 2.5, case.name) }} {{ '{n}'.format_map({'n': 1}) }}",
    "{{ 'x'|center(20) }}|{{ ['a', 'b']|join(', ') }}|{{ 'a\nb'|indent(2, true) }}|{{ 'a b c'|wordwrap(3) }}",
    "{{ 'abc'|replace('b', 'BB') }} {{ '%s-%s'|format(1, 2) }} {{ range(7)|batch(3, 0)|list }}"
    " {{ range(7)|slice(2)|list }} {{ [[1], [2]]|sum(start=[]) }} {{ range(5)|map('string')|join }}",
    "{{ 'x'.ljust(5) }}|{{ '7'.zfill(3) }}|{{ 'a\tb'.expandtabs(4) }}|{{ ', '.join(['a', 'b']) }}"
    "|{{ 'aXa'.replace('X', 'yy') }}|{{ '-'.join(range(3)|map('string')) }}",
    "{% set ns = namespace(s='') %}{% for i in range(10) %}{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.s }}",
    "{% macro m(n) %}<{{ n }}>{% endmacro %}{% set b %}{% for i in range(3) %}{{ m(i) }}{% endfor %}{% endset %}"
    "{{ b }}{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}{{ lipsum(1, false, 5, 6)|length > 0 }}",
    "{% for row in [[1, 2], [3]] recursive %}{{ loop.index }}/{{ loop.length }}{% if row is iterable %}"
    "{{ loop(row) }}{% endif %}{% else %}none{% endfor %}{% for x in [] %}{% else %}empty{% endfor %}",
    "{% for i in range(2) %}{{ 'x'.ljust(3) }}{{ 'ab'.replace('a', 'c') }}{{ ','.join(['a', 'b']) }}"
    "{{ 'a'.translate({97: 'bc'}) }}{{ '{}'.format(i) }}{{ '7'.zfill(3) ~ 'a\tb'.expandtabs(2) }}{% endfor %}"
    "{% block b %}{{ 'x'.center(5) }}{{ 'ab'.replace('a', 'c') }}{% endblock %}",
    "{% set y = '<i>' ~ case.name %}{{ y|length }}{{ y|safe }}{{ y }}",
    "{{ (case.name ~ '<b>')|e }} {{ ('<b>{}</b>'|safe).format('<i>') }} {{ '<i>' ~ ('<b>'|safe) }}",
]


@pytest.mark.parametrize("source", BENIGN, ids=[b[:30] for b in BENIGN])
@pytest.mark.parametrize("autoescape", [False, True])
def test_ordinary_template_code_renders_as_in_the_stock_sandbox(source: str, autoescape: bool) -> None:
    ctx = {"case": {"name": "O'Brien & Sons"}}
    expected = _stock(autoescape).from_string(source).render(ctx)
    template = make_environment(autoescape=autoescape).from_string(source)
    with deadline(RENDER_SECONDS):
        assert render_bounded(template.root_render_func(template.new_context(ctx)), "email") == expected


@pytest.mark.parametrize("channel,block", [(Channel.SMS, None), (Channel.VOICE, "script"), (Channel.EMAIL, "html")])
def test_each_channel_has_its_own_output_limit(config: Config, channel: Channel, block: str | None) -> None:
    limit = MAX_OUTPUT_CHARS[channel.value]

    def content(n: int) -> str:
        half = n // 2  # in two parts: one value of the largest e-mail would hit the limit on values
        body = f"{{{{ 'x' * {half} }}}}{{{{ 'x' * {n - half} }}}}"
        names = REQUIRED_BLOCKS[channel] or ("text",)
        blocks = {name: (body if name == (block or "text") else "x") for name in names}
        if channel is Channel.SMS:
            return blocks["text"]
        return "".join(f"{{% block {name} %}}{body}{{% endblock %}}" for name, body in blocks.items())

    template_id = f"{channel.value}/dpd60/zz"
    ok = StoredTemplateSet(config, [StoredTemplate(template_id, "en-US", content(limit))])
    assert len(ok.render(template_id, "en-US", {}).blocks[block or "text"]) == limit
    over = StoredTemplateSet(config, [StoredTemplate(template_id, "en-US", content(limit + 1))])
    with pytest.raises(RenderError) as refused:
        over.render(template_id, "en-US", {})
    assert refused.value.kind == "limit"
    assert f"the {channel.value} text is longer than {limit:,} characters" in refused.value.detail
