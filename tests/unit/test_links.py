"""Signed payment links, unsubscribe tokens and VERP addresses."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from dispatcher.links import LinkError, LinkSigner
from dispatcher.testing import SAMPLE_PAYMENT_LINK

NOW = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)
EXPIRES = NOW + dt.timedelta(days=14)


@pytest.fixture
def signer() -> LinkSigner:
    return LinkSigner("test-signing-key-0123456789")


def _flip(token: str, index: int) -> str:
    ch = token[index]
    return token[:index] + ("A" if ch != "A" else "B") + token[index + 1 :]


# -- payment links ------------------------------------------------------------------


def test_payment_token_round_trip(signer: LinkSigner) -> None:
    token = signer.payment_token(123456, EXPIRES)
    assert signer.verify_payment_token(token, NOW) == 123456
    assert re.fullmatch(r"[A-Za-z0-9_.\-]+", token), "tokens must be URL-safe"


def test_tokens_are_deterministic_and_read_no_clock(signer: LinkSigner) -> None:
    assert signer.payment_token(7, EXPIRES) == signer.payment_token(7, EXPIRES)
    assert signer.payment_token(7, EXPIRES) != signer.payment_token(8, EXPIRES)


def test_expiry_is_checked_against_the_given_now(signer: LinkSigner) -> None:
    token = signer.payment_token(42, EXPIRES)
    assert signer.verify_payment_token(token, EXPIRES - dt.timedelta(seconds=1)) == 42
    for late in (EXPIRES, EXPIRES + dt.timedelta(days=1)):
        with pytest.raises(LinkError, match="expired") as info:
            signer.verify_payment_token(token, late)
        assert info.value.reason == "expired"


def test_expiry_respects_offsets(signer: LinkSigner) -> None:
    shanghai = dt.timezone(dt.timedelta(hours=8))
    token = signer.payment_token(1, dt.datetime(2026, 12, 21, 10, 0, tzinfo=shanghai))  # 02:00 UTC
    assert signer.verify_payment_token(token, dt.datetime(2026, 12, 21, 1, 59, tzinfo=dt.UTC)) == 1
    with pytest.raises(LinkError):
        signer.verify_payment_token(token, dt.datetime(2026, 12, 21, 2, 0, tzinfo=dt.UTC))


@pytest.mark.parametrize("where", ["payload", "signature"])
def test_tampering_is_a_bad_signature_not_an_expiry(signer: LinkSigner, where: str) -> None:
    token = signer.payment_token(42, EXPIRES)
    index = 0 if where == "payload" else len(token) - 3
    with pytest.raises(LinkError, match="signature is invalid") as info:
        signer.verify_payment_token(_flip(token, index), NOW)
    assert info.value.reason == "bad_signature"


def test_a_longer_expiry_cannot_be_forged(signer: LinkSigner) -> None:
    token = signer.payment_token(42, EXPIRES)
    payload, sig = token.rsplit(".", 1)
    msg_hex, _exp = payload.split("-")
    forged = f"{msg_hex}-{0x7FFFFFFF:x}.{sig}"
    with pytest.raises(LinkError) as info:
        signer.verify_payment_token(forged, NOW)
    assert info.value.reason == "bad_signature"


def test_another_key_does_not_verify(signer: LinkSigner) -> None:
    token = signer.payment_token(42, EXPIRES)
    with pytest.raises(LinkError, match="signature"):
        LinkSigner("another-key").verify_payment_token(token, NOW)


def test_garbage_is_rejected(signer: LinkSigner) -> None:
    for junk in ("", "abc", "a.b.c", "不是令牌"):
        with pytest.raises(LinkError):
            signer.verify_payment_token(junk, NOW)


def test_rotated_keys_still_verify_old_links() -> None:
    old = LinkSigner("old-key")
    token = old.payment_token(9, EXPIRES)
    rotated = LinkSigner("new-key", previous_keys=["old-key"])
    assert rotated.verify_payment_token(token, NOW) == 9
    # New links are signed with the new key only.
    with pytest.raises(LinkError):
        old.verify_payment_token(rotated.payment_token(9, EXPIRES), NOW)


def test_payment_link_url_and_its_length(signer: LinkSigner) -> None:
    link = signer.payment_link("https://pay.bank.example/", 123, EXPIRES)
    assert link.startswith("https://pay.bank.example/p/")
    assert signer.verify_payment_token(link.rsplit("/", 1)[1], NOW) == 123
    # New links are short random tokens (services.links); the linter's sample link is as
    # long as one of those under the same base (tests/integration/test_short_links.py).
    far = signer.payment_link("https://pay.bank.example", 10**11, dt.datetime(2099, 1, 1, tzinfo=dt.UTC))
    assert len(SAMPLE_PAYMENT_LINK) < len(far)


def test_naive_datetimes_are_refused(signer: LinkSigner) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        signer.payment_token(1, dt.datetime(2026, 12, 21))
    with pytest.raises(ValueError, match="timezone-aware"):
        signer.verify_payment_token(signer.payment_token(1, EXPIRES), dt.datetime(2026, 12, 7))


def test_negative_ids_are_refused(signer: LinkSigner) -> None:
    with pytest.raises(ValueError):
        signer.payment_token(-1, EXPIRES)


# -- unsubscribe --------------------------------------------------------------------


def test_unsubscribe_round_trip_never_expires(signer: LinkSigner) -> None:
    token = signer.unsubscribe_token(77)
    assert signer.verify_unsubscribe_token(token) == 77
    assert signer.unsubscribe_link("https://x.example", 77) == f"https://x.example/email/unsubscribe/{token}"


def test_unsubscribe_tampering(signer: LinkSigner) -> None:
    with pytest.raises(LinkError) as info:
        signer.verify_unsubscribe_token(_flip(signer.unsubscribe_token(77), 0))
    assert info.value.reason == "bad_signature"


def test_tokens_of_one_kind_are_not_accepted_as_the_other(signer: LinkSigner) -> None:
    with pytest.raises(LinkError):
        signer.verify_unsubscribe_token(signer.payment_token(5, EXPIRES))
    with pytest.raises(LinkError):
        signer.verify_payment_token(signer.unsubscribe_token(5), NOW)


# -- VERP ---------------------------------------------------------------------------


def test_verp_round_trip(signer: LinkSigner) -> None:
    address = signer.verp_address(4711, "bounce.bank.example")
    assert re.fullmatch(r"b-4711-[0-9a-f]{12}@bounce\.bank\.example", address)
    assert signer.parse_verp(address) == 4711


def test_verp_survives_case_folding_and_brackets(signer: LinkSigner) -> None:
    address = signer.verp_address(4711, "bounce.bank.example")
    assert signer.parse_verp(address.upper()) == 4711
    assert signer.parse_verp(f" <{address}> ") == 4711


def test_verp_rejects_forgeries_and_strangers(signer: LinkSigner) -> None:
    address = signer.verp_address(4711, "bounce.bank.example")
    local, domain = address.split("@")
    _b, _id, sig = local.split("-")
    assert signer.parse_verp(f"b-4712-{sig}@{domain}") is None
    assert signer.parse_verp(f"b-4711-{'0' * 12}@{domain}") is None
    assert signer.parse_verp("reminders@bank.example") is None
    assert signer.parse_verp("not an address") is None
    assert LinkSigner("other").parse_verp(address) is None


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_key_tells_the_operator_what_to_set(key: str) -> None:
    with pytest.raises(ValueError, match="DISPATCHER_SIGNING_KEY"):
        LinkSigner(key)
