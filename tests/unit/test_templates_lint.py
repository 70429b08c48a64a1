"""The template linter: each rule, on a broken template in a copy of the shipped tree."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dispatcher.config import Config
from dispatcher.templates import LintProblem, lint_path, lint_template, lint_tree

ROOT = Path(__file__).resolve().parents[2]
PHRASES = ROOT / "config" / "forbidden_phrases.txt"

GOOD_SMS_EN = (
    "{{ org_name }}: {{ outstanding }} is overdue. {{ penalty_explanation }}"
    " Pay: {{ payment_link }} Call {{ support_phone }}. {{ opt_out }}\n"
)
GOOD_SMS_ZH = (
    "【{{ org_name }}】应还{{ outstanding }}。{{ penalty_explanation }}"
    "还款：{{ payment_link }} 客服{{ support_phone }} {{ opt_out }}\n"
)
GOOD_VOICE_EN = """\
{% block identity %}
This is {{ org_name }} for {{ case.name }}. If you are {{ case.first_name }}, press 1.
{% endblock %}
{% block script %}
The amount due is {{ outstanding }}. {{ penalty_explanation }}
Press 1 for a payment link by text, press 2 to promise to pay by a date you choose, press 3 for an agent,
press 4 for a self-service link by text, press 9 to stop these calls. Call us at {{ support_phone }}.
{% endblock %}
{% block voicemail %}
This is a message for {{ case.name }} from {{ org_name }}. Please call us back at {{ support_phone }}.
{% endblock %}
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", target)
    return target


def write(tree: Path, rel: str, text: str) -> Path:
    path = tree / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def lint(tree: Path, config: Config) -> list[str]:
    return [str(p) for p in lint_tree(tree, config, PHRASES)]


def about(tree: Path, config: Config, rel: str) -> list[str]:
    """The problems of one file of the tree, as `line: message` (what `lint_tree`
    reports for it, without linting the other files)."""
    prefix = f"{tree / rel}:"
    problems = [str(p) for p in lint_template(tree / rel, config, PHRASES, root=tree)]
    assert all(p.startswith(prefix) for p in problems), problems
    return [p[len(prefix):] for p in problems]


def test_the_copy_lints_clean(tree: Path, config: Config) -> None:
    assert lint(tree, config) == []


def test_good_minimal_templates_lint_clean(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v9.en-US.j2", GOOD_SMS_EN)
    write(tree, "sms/dpd30/v9.zh-CN.j2", GOOD_SMS_ZH)
    write(tree, "voice/dpd60/v9.en-US.j2", GOOD_VOICE_EN)
    for rel in ("sms/dpd30/v9.en-US.j2", "sms/dpd30/v9.zh-CN.j2", "voice/dpd60/v9.en-US.j2"):
        assert about(tree, config, rel) == []


def test_problem_format_is_path_line_message(tree: Path, config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tree, "sms/dpd30/v9.en-US.j2", GOOD_SMS_EN + "{{ oops }}\n")
    monkeypatch.chdir(tree.parent)
    problems = lint_tree(Path("templates"), config, PHRASES)
    assert [str(p) for p in problems] == ["templates/sms/dpd30/v9.en-US.j2:2: undefined name: 'oops' is undefined"]
    assert problems[0] == LintProblem(Path("templates/sms/dpd30/v9.en-US.j2"), 2, "undefined name: 'oops' is undefined")


# -- required content ---------------------------------------------------------------


def test_missing_payment_link(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v1.en-US.j2", GOOD_SMS_EN.replace(" Pay: {{ payment_link }}", ""))
    assert about(tree, config, "sms/dpd30/v1.en-US.j2") == [
        "1: missing payment_link: the SMS must contain the payment link ({{ payment_link }})"
    ]


def test_missing_payment_link_in_an_email_html_body_points_at_the_block(tree: Path, config: Config) -> None:
    path = tree / "email/dpd30/v1.en-US.j2"
    source = path.read_text(encoding="utf-8")
    head, html = source.split("{% block html %}")
    path.write_text(head + "{% block html %}" + html.replace("{{ payment_link }}", "#"), encoding="utf-8")
    html_line = head.count("\n") + 1
    assert about(tree, config, "email/dpd30/v1.en-US.j2") == [
        f"{html_line}: missing payment_link: the html block must contain the payment link ({{{{ payment_link }}}})"
    ]


@pytest.mark.parametrize("field", ["outstanding", "penalty_explanation", "opt_out"])
def test_missing_required_sms_fields(tree: Path, config: Config, field: str) -> None:
    write(tree, "sms/dpd30/v1.zh-CN.j2", GOOD_SMS_ZH.replace("{{ " + field + " }}", ""))
    [problem] = about(tree, config, "sms/dpd30/v1.zh-CN.j2")
    assert problem.startswith(f"1: missing {field}: ")


def test_spec7_amount_due_is_the_outstanding_amount_too(tree: Path, config: Config) -> None:
    # SPEC 7's name renders the same outstanding amount: a template written with it is fine
    write(tree, "sms/dpd30/v1.zh-CN.j2", GOOD_SMS_ZH.replace("{{ outstanding }}", "{{ amount_due }}"))
    assert about(tree, config, "sms/dpd30/v1.zh-CN.j2") == []


def test_stating_the_imported_amount_instead_of_the_outstanding_one_fails(tree: Path, config: Config) -> None:
    # lint renders partly paid sample cases: the imported amount is not what is owed then
    write(tree, "sms/dpd30/v1.zh-CN.j2", GOOD_SMS_ZH.replace("{{ outstanding }}", "{{ original_amount }}"))
    [problem] = about(tree, config, "sms/dpd30/v1.zh-CN.j2")
    assert problem.startswith("1: missing outstanding: the SMS must contain the outstanding amount")


def test_a_value_hidden_for_some_cases_is_still_missing(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v1.en-US.j2", GOOD_SMS_EN.replace(
        "{{ penalty_explanation }}", "{% if currency == 'CNY' %}{{ penalty_explanation }}{% endif %}"))
    [problem] = about(tree, config, "sms/dpd30/v1.en-US.j2")
    assert problem.startswith("1: missing penalty_explanation")


def test_email_missing_a_block(tree: Path, config: Config) -> None:
    write(tree, "email/dpd30/v1.en-US.j2", "{% block subject %}Hi{% endblock %}\n{% block text %}x{% endblock %}\n")
    assert about(tree, config, "email/dpd30/v1.en-US.j2") == [
        "1: missing block 'html': email templates define subject, text, html"
    ]


def test_voice_script_needs_the_callback_number_and_the_options(tree: Path, config: Config) -> None:
    bad = (GOOD_VOICE_EN.replace(" Call us at {{ support_phone }}.", "").replace("press 9 to stop these calls", "")
           .replace("press 4 for a self-service link by text, ", ""))
    write(tree, "voice/dpd60/v1.en-US.j2", bad)
    assert about(tree, config, "voice/dpd60/v1.en-US.j2") == [
        "4: missing support_phone: the script block must contain the callback number ({{ support_phone }})",
        "4: the script must offer option 4 (self-service link by SMS)",
        "4: the script must offer option 9 (stop calls)",
    ]


def test_voicemail_must_not_name_the_debt(tree: Path, config: Config) -> None:
    write(tree, "voice/dpd60/v1.en-US.j2", GOOD_VOICE_EN.replace(
        "Please call us back", "It is about your overdue loan. Please call us back"))
    assert about(tree, config, "voice/dpd60/v1.en-US.j2") == [
        "9: the voicemail must not name the debt: found 'loan', 'overdue'"
    ]


def test_voicemail_must_not_state_the_amount(tree: Path, config: Config) -> None:
    write(
        tree,
        "voice/dpd60/v1.en-US.j2",
        GOOD_VOICE_EN.replace("Please call us back", "{{ amount_due }}. Please call us back"),
    )
    assert about(tree, config, "voice/dpd60/v1.en-US.j2") == ["9: the voicemail must not state an amount"]


def test_chinese_voicemail_naming_the_debt(tree: Path, config: Config) -> None:
    path = tree / "voice/dpd60/v1.zh-CN.j2"
    path.write_text(
        path.read_text(encoding="utf-8").replace("请您方便时回电", "关于您的欠款，请回电"), encoding="utf-8"
    )
    [problem] = about(tree, config, "voice/dpd60/v1.zh-CN.j2")
    assert "voicemail must not name the debt: found '欠'" in problem


def test_identity_check_must_not_name_the_debt(tree: Path, config: Config) -> None:
    write(
        tree,
        "voice/dpd60/v1.en-US.j2",
        GOOD_VOICE_EN.replace("for {{ case.name }}.", "about a debt of {{ case.name }}."),
    )
    assert about(tree, config, "voice/dpd60/v1.en-US.j2") == ["1: the identity must not name the debt: found 'debt'"]


# -- forbidden phrases ---------------------------------------------------------------


def test_a_threat_phrase_in_the_source(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v1.en-US.j2", "{# reminder #}\nPay now or we may ARREST you. " + GOOD_SMS_EN)
    assert about(tree, config, "sms/dpd30/v1.en-US.j2") == ["2: forbidden phrase 'arrest'"]


def test_a_chinese_threat_phrase(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v1.zh-CN.j2", GOOD_SMS_ZH.replace("应还", "再不还款就报警，应还"))
    assert about(tree, config, "sms/dpd30/v1.zh-CN.j2") == ["1: forbidden phrase '报警'"]


def test_a_phrase_spread_over_lines_and_tags_is_found(tree: Path, config: Config) -> None:
    path = tree / "email/dpd30/v2.en-US.j2"
    source = path.read_text(encoding="utf-8")
    path.write_text(source.replace("Sincerely,", "We will tell\nyour employer.\nSincerely,"), encoding="utf-8")
    problems = about(tree, config, "email/dpd30/v2.en-US.j2")
    assert problems and all("forbidden phrase" in p for p in problems)
    assert {p.split(":")[1].strip() for p in problems} >= {"forbidden phrase 'tell your employer'"}


def test_a_phrase_assembled_at_render_time_is_found(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v1.en-US.j2", "{{ 'ja' ~ 'il' }} " + GOOD_SMS_EN)
    assert about(tree, config, "sms/dpd30/v1.en-US.j2") == ["1: forbidden phrase 'jail' in the rendered text"]


def test_phrases_match_at_word_starts_only(tree: Path, config: Config) -> None:
    # "policy" is not "police", "scumble" starts with "scum" (a prefix match, on purpose).
    write(tree, "sms/dpd30/v1.en-US.j2", "See our policy. " + GOOD_SMS_EN)
    assert about(tree, config, "sms/dpd30/v1.en-US.j2") == []


def test_a_custom_phrase_list(tree: Path, config: Config, tmp_path: Path) -> None:
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("# comment line\n\n  overdue  # trailing comment\n", encoding="utf-8")
    write(tree, "sms/dpd30/v9.en-US.j2", GOOD_SMS_EN)
    found = [str(p) for p in lint_tree(tree, config, phrases) if "v9" in str(p)]
    assert found == [f"{tree}/sms/dpd30/v9.en-US.j2:1: forbidden phrase 'overdue'"]


def test_a_missing_phrase_list_is_a_problem(tree: Path, config: Config, tmp_path: Path) -> None:
    problems = [str(p) for p in lint_tree(tree, config, tmp_path / "nope.txt")]
    assert problems == [f"{tmp_path / 'nope.txt'}:1: forbidden phrase list not found; restore it or fix"
                        " templates.forbidden_phrases in the configuration"]


# -- names, syntax, sandbox ----------------------------------------------------------


def test_an_undefined_variable(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v1.en-US.j2", "{% set x = 1 %}\n" + GOOD_SMS_EN.rstrip() + "\n{{ debtor_name }}\n")
    assert about(tree, config, "sms/dpd30/v1.en-US.j2") == ["3: undefined name: 'debtor_name' is undefined"]


def test_an_undefined_variable_in_a_branch_never_taken(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v1.en-US.j2", GOOD_SMS_EN + "{% if days_past_due > 100000 %}{{ typo }}{% endif %}\n")
    assert about(tree, config, "sms/dpd30/v1.en-US.j2") == ["2: undefined name: 'typo' is undefined"]


def test_an_unknown_case_attribute(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v1.en-US.j2", GOOD_SMS_EN + "{{ case.phone }}\n")
    assert about(tree, config, "sms/dpd30/v1.en-US.j2") == [
        "2: undefined name: case.phone (case has case_id, name, first_name, product, product_name)"
    ]


def test_a_syntax_error(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v1.en-US.j2", GOOD_SMS_EN + "{% if amount_due %}\n")
    [problem] = about(tree, config, "sms/dpd30/v1.en-US.j2")
    assert problem.startswith("2: syntax error: ")


def test_class_mro_is_a_sandbox_violation(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v1.en-US.j2", GOOD_SMS_EN + "{{ ''.__class__.__mro__ }}\n")
    assert about(tree, config, "sms/dpd30/v1.en-US.j2") == [
        "2: sandbox violation: access to attribute '__class__' is not allowed in templates",
        "2: sandbox violation: access to attribute '__mro__' is not allowed in templates",
    ]


def test_sandbox_violations_in_dead_branches_and_subscripts(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v1.en-US.j2",
          GOOD_SMS_EN + "{% if false %}{{ lipsum.__globals__ }}{% endif %}\n{{ case['__class__'] }}\n")
    assert about(tree, config, "sms/dpd30/v1.en-US.j2") == [
        "2: sandbox violation: access to attribute '__globals__' is not allowed in templates",
        "3: sandbox violation: access to attribute '__class__' is not allowed in templates",
    ]


def test_include_is_not_allowed(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v1.en-US.j2", GOOD_SMS_EN + "{% include 'sms/dpd30/v2.en-US.j2' %}\n")
    problems = about(tree, config, "sms/dpd30/v1.en-US.j2")
    assert problems and problems[0].startswith("2: not allowed: include, extends and import")


def test_runtime_errors_are_reported(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v1.en-US.j2", GOOD_SMS_EN + "{{ 1 // 0 }}\n")
    assert about(tree, config, "sms/dpd30/v1.en-US.j2") == [
        "2: render error: ZeroDivisionError: integer division or modulo by zero"
    ]


# -- SMS length ----------------------------------------------------------------------


def test_an_sms_over_the_segment_limit(tree: Path, config: Config) -> None:
    write(
        tree,
        "sms/dpd30/v1.zh-CN.j2",
        GOOD_SMS_ZH.replace("应还", "尊敬的客户您好，这是一条很长的提醒短信。" * 3 + "应还"),
    )
    [problem] = about(tree, config, "sms/dpd30/v1.zh-CN.j2")
    assert problem.startswith("1: SMS is 3 segments (UCS-2, ")
    assert problem.endswith("; the limit is 2 (templates.sms_max_segments)")


def test_the_segment_limit_comes_from_the_config(tree: Path, config: Config) -> None:
    strict = config.model_copy(update={"templates": config.templates.model_copy(update={"sms_max_segments": 1})})
    problems = [str(p) for p in lint_tree(tree, strict, PHRASES)]
    assert problems and all("segments" in p for p in problems)
    # every shipped reminder SMS needs more than one part; with a short link, the
    # automatic replies (the link replies too) fit in one; the 2 instalment reminders do not
    assert len(problems) == 32


def test_a_typographic_apostrophe_makes_english_sms_ucs2(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v1.en-US.j2", GOOD_SMS_EN.replace(" is overdue.", " is overdue. We’d like to help you "
                                                             "find a way to bring the account up to date today."))
    [problem] = about(tree, config, "sms/dpd30/v1.en-US.j2")
    assert problem.startswith("1: SMS is 5 segments (UCS-2, 272 units)")


# -- placement and configuration -----------------------------------------------------


def test_misplaced_files(tree: Path, config: Config) -> None:
    write(tree, "sms/notes.txt", "x")
    write(tree, "sms/dpd30/V1.en-US.j2", GOOD_SMS_EN)
    write(tree, "sms/dpd30/v1.en_US.j2", GOOD_SMS_EN)
    write(tree, "fax/dpd30/v1.en-US.j2", GOOD_SMS_EN)
    problems = lint(tree, config)
    for rel in ("sms/notes.txt", "sms/dpd30/V1.en-US.j2", "sms/dpd30/v1.en_US.j2", "fax/dpd30/v1.en-US.j2"):
        assert any(p.startswith(f"{tree / rel}:1: misplaced file") for p in problems), rel
    assert len(problems) == 4


def test_top_level_approvals_and_readme_and_dotfiles_are_fine(tree: Path, config: Config) -> None:
    write(tree, "README.md", "# templates")
    write(tree, "sms/dpd30/.v1.en-US.j2.swp", "x")
    assert lint(tree, config) == []


def test_a_stage_or_channel_not_in_the_config(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd120/v1.en-US.j2", GOOD_SMS_EN)
    write(tree, "voice/pre_due/v1.en-US.j2", GOOD_VOICE_EN)
    assert about(tree, config, "sms/dpd120/v1.en-US.j2") == [
        "1: stage 'dpd120' is not in the configuration (stages: pre_due, early, dpd30, dpd60, dpd90)"
    ]
    assert about(tree, config, "voice/pre_due/v1.en-US.j2") == [
        "1: stage pre_due has no voice channel in the configuration (it uses sms, email)"
    ]


def test_an_unsupported_locale(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v1.fr-FR.j2", GOOD_SMS_EN)
    assert about(tree, config, "sms/dpd30/v1.fr-FR.j2") == ["1: locale fr-FR is not supported (use en-US or zh-CN)"]


def test_every_stage_channel_needs_a_template_in_each_default_locale(tree: Path, config: Config) -> None:
    for path in (tree / "voice" / "dpd60").glob("*.en-US.j2"):
        path.unlink()
    assert lint(tree, config) == [
        f"{tree / 'voice/dpd60'}:1: no en-US template for voice/dpd60 (en-US is the default locale of"
        " profiles us, us-ma, us-nyc, us-wa); add a variant"
    ]


def test_a_broken_approvals_file(tree: Path, config: Config) -> None:
    (tree / "approvals.toml").write_text("[oops\n", encoding="utf-8")
    [problem] = lint(tree, config)
    assert problem.startswith(f"{tree / 'approvals.toml'}:1: ") and "not valid TOML" in problem


def test_an_empty_support_phone_in_the_config(tree: Path, config: Config) -> None:
    us = config.jurisdictions["us"].model_copy(update={"support_phone": ""})
    broken = config.model_copy(update={"jurisdictions": {**config.jurisdictions, "us": us}})
    problems = [str(p) for p in lint_tree(tree, broken, PHRASES)]
    assert (
        f"{config.source}:1: jurisdictions.us.support_phone is empty; every message needs a customer-service number"
        in problems
    )


# -- one file ------------------------------------------------------------------------


def test_lint_template_checks_one_file(tree: Path, config: Config) -> None:
    good = tree / "sms/dpd30/v2.en-US.j2"
    assert lint_template(good, config, PHRASES) == []
    bad = write(tree, "sms/dpd30/v9.en-US.j2", "{{ nope }}")
    messages = [str(p) for p in lint_template(bad, config, PHRASES)]
    assert f"{bad}:1: undefined name: 'nope' is undefined" in messages


def test_problems_are_reported_once_not_per_sample_case(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v1.en-US.j2", GOOD_SMS_EN.replace("{{ opt_out }}", ""))
    assert about(tree, config, "sms/dpd30/v1.en-US.j2") == [
        "1: missing opt_out: the SMS must contain the opt-out instruction ({{ opt_out }})"
    ]


def test_a_directory_that_does_not_exist(config: Config, tmp_path: Path) -> None:
    assert [str(p) for p in lint_tree(tmp_path / "nope", config, PHRASES)] == [
        f"{tmp_path / 'nope'}:1: no such template directory"
    ]


# -- `templates lint [PATH]` ---------------------------------------------------------


def test_lint_path_takes_the_root_a_folder_or_a_file(tree: Path, config: Config) -> None:
    bad = write(tree, "sms/dpd30/v9.en-US.j2", GOOD_SMS_EN + "{{ nope }}\n")
    expected = f"{bad}:2: undefined name: 'nope' is undefined"
    assert [str(p) for p in lint_path(tree, config, PHRASES)] == [expected]
    assert [str(p) for p in lint_path(tree / "sms", config, PHRASES)] == [expected]
    assert [str(p) for p in lint_path(tree / "sms" / "dpd30", config, PHRASES)] == [expected]
    assert [str(p) for p in lint_path(bad, config, PHRASES)] == [expected]
    assert lint_path(tree / "email" / "dpd90", config, PHRASES) == []
    assert lint_path(tree / "sms/dpd30/v1.zh-CN.j2", config, PHRASES) == []


def test_every_profile_is_rendered_with_its_own_support_number(tree: Path, config: Config) -> None:
    # a profile whose number is longer than its family's can push an SMS over the limit
    long_number = "+1 212 555 0199, then dial extension 4471 and choose option 3 " * 6
    nyc = config.jurisdictions["us-nyc"].model_copy(update={"support_phone": long_number})
    wordy = config.model_copy(update={"jurisdictions": {**config.jurisdictions, "us-nyc": nyc}})
    text = GOOD_SMS_EN.replace(" is overdue.", " is overdue. Call {{ support_phone }}.")
    write(tree, "sms/dpd30/v1.en-US.j2", text)
    assert about(tree, config, "sms/dpd30/v1.en-US.j2") == []
    [problem] = about(tree, wordy, "sms/dpd30/v1.en-US.j2")
    assert problem.startswith("1: SMS is ") and "-us-nyc" in problem, problem
