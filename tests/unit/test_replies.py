"""Pure reply rules: keyword classification (SPEC section 6, both languages), provider
status mapping and the monotonic status order, the broken-promise test."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.domain import MessageStatus
from dispatcher.policy.replies import (
    KEYWORDS,
    STATUS_RANK,
    TERMINAL_STATUSES,
    ReplyIntent,
    UnknownStatusError,
    classify_reply,
    final_status,
    is_machine,
    map_provider_status,
    promise_broken,
    status_rank,
    supersedes,
)

CONTRACT = {
    ReplyIntent.OPT_OUT: ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "退订",
                          "TD", "T"],
    ReplyIntent.OPT_IN: ["START", "UNSTOP", "YES"],
    ReplyIntent.HELP: ["HELP", "INFO"],
    ReplyIntent.PAID: ["PAID", "已还", "已还款"],
    ReplyIntent.DISPUTE: ["DISPUTE", "有异议", "不是我"],
}


def _variants(word: str) -> list[str]:
    return [word, word.lower(), word.capitalize(), f"  {word}  ", f"\t{word}\n", f"\u3000{word}\u3000",
            f"{word}.", f"{word}!", f"{word}。"]


@pytest.mark.parametrize(("intent", "word"), [(i, w) for i, words in CONTRACT.items() for w in words])
def test_every_contract_keyword_in_every_spelling(intent: ReplyIntent, word: str) -> None:
    for text in _variants(word):
        assert classify_reply(text) is intent, repr(text)


def test_keyword_table_is_exactly_the_contract() -> None:
    assert {i: sorted(ws) for i, ws in KEYWORDS.items()} == {
        i: sorted(w.casefold() for w in ws) for i, ws in CONTRACT.items()
    }


@pytest.mark.parametrize("text", ["Td", "tD", "t", " T ", "Stop", "sToP", "ＳＴＯＰ", "ｔｄ", "Paid", "Help", "yEs"])
def test_case_and_width_variants_count(text: str) -> None:
    assert classify_reply(text) is not ReplyIntent.FREE_TEXT


@pytest.mark.parametrize(
    "text",
    [
        "stop calling me later",
        "please stop",
        "STOP STOP",
        "I have paid",
        "paid yesterday",
        "我已还款了",
        "退订 谢谢",
        "not me",
        "yes please",
        "tt",
        "",
        "   ",
        "?",
        "S T O P",
        "help me understand the penalty",
        "end of month",
    ],
)
def test_anything_but_a_whole_keyword_is_free_text(text: str) -> None:
    assert classify_reply(text) is ReplyIntent.FREE_TEXT


@given(st.text(max_size=40))
def test_classifier_is_total(text: str) -> None:
    assert isinstance(classify_reply(text), ReplyIntent)


# ---------------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    ("provider", "ours"),
    [
        ("queued", MessageStatus.QUEUED),
        ("accepted", MessageStatus.QUEUED),
        ("sending", MessageStatus.SENDING),
        ("sent", MessageStatus.SENT),
        ("delivered", MessageStatus.DELIVERED),
        ("undelivered", MessageStatus.UNDELIVERED),
        ("failed", MessageStatus.FAILED),
        ("read", MessageStatus.READ),
        ("canceled", MessageStatus.CANCELLED),
        ("initiated", MessageStatus.SENT),
        ("ringing", MessageStatus.RINGING),
        ("in-progress", MessageStatus.IN_PROGRESS),
        ("completed", MessageStatus.COMPLETED),
        ("busy", MessageStatus.BUSY),
        ("no-answer", MessageStatus.NO_ANSWER),
        ("Delivered", MessageStatus.DELIVERED),
    ],
)
def test_provider_statuses_map(provider: str, ours: MessageStatus) -> None:
    assert map_provider_status(provider) is ours


def test_inbound_statuses_say_nothing_and_unknown_ones_are_flagged() -> None:
    assert map_provider_status("received") is None
    with pytest.raises(UnknownStatusError):
        map_provider_status("teleported")


def test_rank_covers_every_status_and_is_a_total_order() -> None:
    assert set(STATUS_RANK) == set(MessageStatus)
    assert len(set(STATUS_RANK.values())) == len(STATUS_RANK)


def test_message_ladder() -> None:
    ladder = ["queued", "sending", "sent", "delivered", "read"]
    assert [status_rank(s) for s in ladder] == sorted(status_rank(s) for s in ladder)
    assert supersedes("read", "delivered")
    assert not supersedes("sent", "delivered")  # a late `sent` never overwrites `delivered`
    assert not supersedes("delivered", "delivered")  # duplicates change nothing
    for terminal in ("delivered", "undelivered", "failed", "read"):
        for in_flight in ("queued", "sending", "sent"):
            assert supersedes(terminal, in_flight)
            assert not supersedes(in_flight, terminal)


def test_call_ladder() -> None:
    ladder = ["queued", "sending", "sent", "ringing", "in-progress"]
    assert [status_rank(s) for s in ladder] == sorted(status_rank(s) for s in ladder)
    for terminal in ("completed", "busy", "no-answer", "failed", "cancelled"):
        assert MessageStatus(terminal) in TERMINAL_STATUSES
        for in_flight in ladder:
            assert supersedes(terminal, in_flight)
            assert not supersedes(in_flight, terminal)
    assert supersedes("completed", "no-answer")


@given(st.lists(st.sampled_from(list(MessageStatus)), min_size=1, max_size=30), st.randoms())
def test_any_order_ends_at_the_highest_rank(statuses: list[MessageStatus], rnd) -> None:  # type: ignore[no-untyped-def]
    expected = max([MessageStatus.QUEUED, *statuses], key=status_rank)
    shuffled = statuses[:]
    rnd.shuffle(shuffled)
    duplicated = shuffled + shuffled[: len(shuffled) // 3]
    assert final_status(statuses, MessageStatus.QUEUED) is expected
    assert final_status(duplicated, MessageStatus.QUEUED) is expected


@given(st.lists(st.sampled_from(list(MessageStatus)), max_size=20))
def test_status_never_moves_backwards(statuses: list[MessageStatus]) -> None:
    current = MessageStatus.QUEUED
    for status in statuses:
        nxt = final_status([status], current)
        assert status_rank(nxt) >= status_rank(current)
        current = nxt


# ---------------------------------------------------------------------- voice, promises


@pytest.mark.parametrize(
    ("answered_by", "machine"),
    [("machine_start", True), ("machine_end_beep", True), ("machine_end_silence", True),
     ("machine_end_other", True), ("fax", True), ("human", False), ("unknown", False), (None, False), ("", False)],
)
def test_is_machine(answered_by: str | None, machine: bool) -> None:
    assert is_machine(answered_by) is machine


NOW = dt.datetime(2026, 12, 14, 2, 0, tzinfo=dt.UTC)


def test_promise_broken() -> None:
    past = NOW - dt.timedelta(seconds=1)
    assert promise_broken(past, NOW, paid_since_promise=False)
    assert promise_broken(NOW, NOW, paid_since_promise=False)  # the date itself has passed
    assert not promise_broken(past, NOW, paid_since_promise=True)
    assert not promise_broken(NOW + dt.timedelta(seconds=1), NOW, paid_since_promise=False)
    assert not promise_broken(None, NOW, paid_since_promise=False)
