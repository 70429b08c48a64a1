"""The revocation phrase classifier (SPEC section 13): a table of examples in each
language — revocations, with the channels they revoke, and texts that must stay free
text for a collector — and properties of the matching (NFKC, case, whole words)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.domain import Channel
from dispatcher.policy.replies import ReplyIntent, classify_reply
from dispatcher.policy.revocation import PHRASES, find_revocation

S = "sms"  # revokes SMS
SV = "sms+voice"  # revokes SMS and calls
FREE = None  # free text: no revocation

ENGLISH: list[tuple[str, str | None]] = [
    ("Please stop", S),
    ("stop texting me!!", S),
    ("STOP sending these", S),
    ("Stop. I will pay on Friday", S),
    ("'STOP'", S),
    ("pls stop", S),
    ("I want to unsubscribe", S),
    ("Unsubscribe me from this list", S),
    ("opt out", S),
    ("Opt-out please", S),
    ("OPTOUT now", S),
    ("I opt out of these messages", S),
    ("remove me from your list", S),
    ("Please remove me", S),
    ("do not text this number again", S),
    ("Don't text me", S),
    ("don’t text me anymore", S),  # typographic apostrophe
    ("dont text me", S),
    ("No more texts please", S),
    ("no more text messages", S),
    ("I quit these messages", S),
    ("I revoke my consent", S),
    ("stop messaging me", S),
    ("Do not call me", SV),
    ("don't call this number", SV),
    ("DONT CALL", SV),
    ("stop calling me at work", SV),
    ("Stop calling!", SV),
    ("no more calls", SV),
    ("stop contacting me", SV),
    ("Do not contact me again", SV),
    ("leave me alone", SV),
    ("stop texting, and don't call", SV),
    ("ＳＴＯＰ　ｃａｌｌｉｎｇ", SV),  # full width, ideographic space
    ("Stop\ncalling", SV),
    # must stay free text
    ("I paid yesterday", FREE),
    ("can I pay next month?", FREE),
    ("I'll stop by the branch tomorrow", S),  # a whole-word "stop": a false opt-out is the safe error
    ("I'm stopping by the branch tomorrow", FREE),
    ("nonstop overtime this week, will pay Friday", FREE),
    ("Who is this?", FREE),
    ("I will pay at the end of the month", FREE),
    ("can you cancel the late fee?", FREE),
    ("call me back after 6pm", FREE),
    ("Please call me tomorrow", FREE),
    ("my textbook payment is late, sorry", FREE),
    ("unstoppable", FREE),
    ("Paid", FREE),  # the keyword PAID, not a revocation
    ("", FREE),
    ("What is my balance", FREE),
    ("the optician took my money", FREE),
]

CHINESE: list[tuple[str, str | None]] = [
    ("退订", S),
    ("我要退订", S),
    ("退订谢谢", S),
    ("请帮我取消订阅", S),
    ("取消订阅！", S),
    ("拒收", S),
    ("拒收此类短信", S),
    ("不要再发了", S),
    ("不要再发短信了", S),
    ("别再发了", S),
    ("别再发这种信息", S),
    ("不要发短信给我", S),
    ("别发短信了", S),
    ("不要再给我发消息", S),
    ("别再给我发了", S),
    ("请停止发送", S),
    ("请STOP", S),
    ("ｓｔｏｐ谢谢", S),
    ("不要再打了", SV),
    ("不要再打电话了", SV),
    ("别再打了！", SV),
    ("别再打电话", SV),
    ("不要打电话给我", SV),
    ("别打电话了，我会还", SV),
    ("不要再给我打电话", SV),
    ("别再给我打了", SV),
    ("不要再联系我", SV),
    ("别再联系我了", SV),
    ("不要联系我", SV),
    ("不要再打扰我", SV),
    # must stay free text
    ("我下个月还", FREE),
    ("我已经还了", FREE),
    ("明天还款", FREE),
    ("这个月工资发了就还", FREE),
    ("我打电话给你们客服", FREE),
    ("打错了", FREE),
    ("请问还款账号是多少？", FREE),
    ("能不能分期", FREE),
    ("我在开会，晚点打给我", FREE),
    ("罚息怎么算的", FREE),
    ("请发一下还款链接", FREE),
    ("收到", FREE),
    ("已还", FREE),  # the keyword, not a revocation
    ("我会尽快还款，谢谢", FREE),
    ("订单号是多少", FREE),
    ("谁啊", FREE),
]


def _expected(kind: str | None) -> frozenset[Channel] | None:
    if kind is None:
        return None
    return frozenset({Channel.SMS, Channel.VOICE}) if kind == SV else frozenset({Channel.SMS})


def test_the_tables_are_big_enough_and_hold_the_named_free_texts() -> None:
    assert len(ENGLISH) >= 40 and len(CHINESE) >= 40
    free = {text for text, kind in ENGLISH + CHINESE if kind is None}
    assert {"I paid yesterday", "can I pay next month?", "我下个月还"} <= free


@pytest.mark.parametrize(("text", "kind"), ENGLISH + CHINESE)
def test_examples(text: str, kind: str | None) -> None:
    found = find_revocation(text)
    if kind is None:
        assert found is None, f"{text!r} must stay free text, matched {found}"
    else:
        assert found is not None, f"{text!r} is a revocation"
        assert found.channels == _expected(kind), (text, found)
        assert found.phrase in PHRASES and found.phrase in found.phrases


def test_the_spec_phrases_are_all_recognised() -> None:
    spec = ["stop", "unsubscribe", "opt out", "opt-out", "remove me", "do not text", "don't text", "no more texts",
            "do not call", "don't call", "stop calling", "退订", "取消订阅", "拒收", "不要再发", "别再发",
            "不要发短信", "不要再给我发", "别再给我发", "不要再打", "别再打", "不要打电话", "不要再给我打"]
    about_calls = {"do not call", "don't call", "stop calling", "不要再打", "别再打", "不要打电话", "不要再给我打"}
    for phrase in spec:
        found = find_revocation(f"hi, {phrase} thanks")
        assert found is not None, phrase
        assert found.about_calls == (phrase in about_calls), phrase


def test_the_phrase_and_what_it_matched_are_reported() -> None:
    found = find_revocation("OK. Please Don’t  Call me again; stop texting")
    assert found is not None
    assert (found.phrase, found.matched) == ("don't call", "don't call")
    assert found.phrases == ("don't call", "stop texting")
    assert find_revocation("Opt-Out") is not None and find_revocation("Opt-Out").matched == "opt-out"  # type: ignore[union-attr]


def test_exact_keywords_stay_keywords() -> None:
    # the whole-message keywords of section 6 keep their own path (STOP, 退订, PAID ...)
    assert classify_reply("STOP") is ReplyIntent.OPT_OUT
    assert classify_reply("please stop") is ReplyIntent.FREE_TEXT  # ... and the phrase classifier takes it


# -- properties --------------------------------------------------------------------

LATIN = sorted(p for p in PHRASES if p.isascii())
HAN = sorted(p for p in PHRASES if not p.isascii())
SEPARATORS = st.sampled_from([" ", ", ", ". ", "! ", "\n", "，", "。", "…", " - "])
FILLER = st.sampled_from(["", "hi", "please", "ok", "I said", "谢谢", "好的", "thanks", "now", "123"])


@given(st.sampled_from(LATIN), FILLER, FILLER, SEPARATORS, SEPARATORS, st.sampled_from([str.upper, str.title, str]))
def test_a_latin_phrase_is_found_as_a_whole_word_anywhere(
    phrase: str, before: str, after: str, sep1: str, sep2: str, case: object
) -> None:
    text = f"{before}{sep1}{case(phrase)}{sep2}{after}"  # type: ignore[operator]
    found = find_revocation(text)
    assert found is not None and phrase in found.phrases
    assert found.channels >= PHRASES[phrase]


@given(st.sampled_from(HAN), FILLER, FILLER)
def test_a_chinese_phrase_is_found_anywhere(phrase: str, before: str, after: str) -> None:
    found = find_revocation(f"{before}{phrase}{after}")
    assert found is not None and found.channels >= PHRASES[phrase]


@given(st.sampled_from(LATIN + HAN))
def test_full_width_forms_match_as_their_nfkc_form(phrase: str) -> None:
    wide = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else ("\u3000" if c == " " else c) for c in phrase)
    assert unicodedata.normalize("NFKC", wide) == phrase
    found = find_revocation(wide.upper())
    assert found is not None and phrase in found.phrases


@given(st.sampled_from(LATIN), st.sampled_from(["x", "un", "re", "9"]), st.sampled_from(["x", "ing", "s", "7"]))
def test_a_latin_phrase_inside_a_longer_word_is_not_that_phrase(phrase: str, prefix: str, suffix: str) -> None:
    found = find_revocation(f"{prefix}{phrase.replace(' ', '')}{suffix}")
    assert found is None or phrase not in found.phrases


@given(st.text(alphabet=st.sampled_from("0123456789 .,!?¥$-:/+年月日号元块还款我你他的了吗"), max_size=60))
def test_text_without_any_phrase_stays_free(text: str) -> None:
    assert find_revocation(text) is None
