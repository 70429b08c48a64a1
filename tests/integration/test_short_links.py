"""Short payment links (`services.links`) on both stores: the token's length and
alphabet, uniqueness, expiry, and old signed links that still resolve until they expire."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from dispatcher.config import Config
from dispatcher.links import LinkSigner
from dispatcher.services.daemon import purge_before
from dispatcher.services.links import (
    TOKEN_LENGTH,
    link_url,
    links_base_url,
    mint,
    new_token,
    resolve,
)
from dispatcher.store import repository as repo
from dispatcher.store.repository import ImportedCase
from dispatcher.store.tables import link_tokens_t, messages_t
from dispatcher.testing import SAMPLE_PAYMENT_LINK, sample_case, sample_payment_link

NOW = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)
EXPIRES = NOW + dt.timedelta(days=14)
URL_SAFE = re.compile(r"^[A-Za-z0-9_-]{16}$")


def test_a_token_is_16_url_safe_characters_and_never_repeats() -> None:
    tokens = [new_token() for _ in range(20_000)]
    assert TOKEN_LENGTH == 16
    assert all(URL_SAFE.match(t) for t in tokens)
    assert len(set(tokens)) == len(tokens)
    # all 64 characters of the alphabet turn up: the tokens are random, not a counter
    assert len(set("".join(tokens))) == 64


def test_the_link_is_the_base_url_p_and_the_token(config: Config) -> None:
    assert link_url("https://bk.example/", "AbCdEfGhIjKlMnOp") == "https://bk.example/p/AbCdEfGhIjKlMnOp"
    # the shipped base_url is a short domain; unset, the public URL is the base
    assert links_base_url(config, "https://hooks.example.test") == config.links.base_url
    unset = config.model_copy(update={"links": config.links.model_copy(update={"base_url": None})})
    assert links_base_url(unset, "https://hooks.example.test/") == "https://hooks.example.test"


def test_the_linters_sample_link_is_as_long_as_a_real_one(config: Config) -> None:
    base = links_base_url(config, "https://unused.example")
    assert len(sample_payment_link(config.links.base_url)) == len(link_url(base, new_token()))
    assert len(SAMPLE_PAYMENT_LINK) == len(link_url("https://pay.bank.example", new_token()))


def _message(engine: Engine) -> tuple[str, int]:
    case = sample_case("cn", dpd=30, phone="+8613800138000")
    with engine.begin() as conn:
        imported = ImportedCase(case=case, zones=("Asia/Shanghai",), sms_consent=True, email_consent=True,
                                voice_consent=True)
        repo.upsert_cases(conn, [imported], NOW)
        message_id = conn.execute(
            insert(messages_t).values(case_id=case.case_id, channel="sms", stage="dpd30", kind="scheduled",
                                      status="sent", idempotency_key="k1", scheduled_at=NOW, created_at=NOW)
            .returning(messages_t.c.id)
        ).scalar_one()
    return case.case_id, int(message_id)


def test_a_minted_token_resolves_to_its_message_and_case_until_it_expires(engine: Engine) -> None:
    signer = LinkSigner("k" * 32)
    case_id, message_id = _message(engine)
    with engine.begin() as conn:
        token = mint(conn, message_id, case_id, NOW, EXPIRES)
        other = mint(conn, message_id, case_id, NOW, EXPIRES)
    assert URL_SAFE.match(token) and token != other
    with engine.connect() as conn:
        stored = conn.execute(select(link_tokens_t).where(link_tokens_t.c.token == token)).one()
    assert (stored.message_id, stored.case_id, stored.expires_at) == (message_id, case_id, EXPIRES)

    target = resolve(engine, signer, token, NOW)
    assert target is not None
    assert (target.case_id, target.message_id, target.expired, target.signed) == (case_id, message_id, False, False)
    assert resolve(engine, signer, token, EXPIRES - dt.timedelta(seconds=1)).expired is False  # type: ignore[union-attr]
    expired = resolve(engine, signer, token, EXPIRES)
    assert expired is not None and expired.expired is True
    assert resolve(engine, signer, "AAAAAAAAAAAAAAAA", NOW) is None  # unknown
    assert resolve(engine, signer, token[:-1], NOW) is None  # cut off
    assert resolve(engine, signer, "☃", NOW) is None


def test_old_signed_links_keep_working_until_they_expire(engine: Engine) -> None:
    signer = LinkSigner("k" * 32)
    case_id, message_id = _message(engine)
    token = signer.payment_token(message_id, EXPIRES)
    target = resolve(engine, signer, token, NOW)
    assert target is not None
    assert (target.case_id, target.message_id, target.expired, target.signed) == (case_id, message_id, False, True)
    assert target.expires_at == EXPIRES.replace(microsecond=0)
    later = resolve(engine, signer, token, EXPIRES + dt.timedelta(seconds=1))
    assert later is not None and later.expired is True
    # forged, another key's, or a message that is gone: nothing
    assert resolve(engine, signer, token[:-3] + "xyz", NOW) is None
    assert resolve(engine, LinkSigner("other" * 8), token, NOW) is None
    assert resolve(engine, signer, signer.payment_token(987_654, EXPIRES), NOW) is None


@pytest.mark.parametrize("bad", ["ftp://x.example", "bk.example", "https://bk.example/?q=1"])
def test_a_bad_links_base_url_is_refused(config: Config, bad: str) -> None:
    with pytest.raises(ValueError, match="links.base_url"):
        type(config.links)(base_url=bad)



def test_retention_deletes_old_messages_with_their_link_tokens(engine: Engine) -> None:
    case_id, message_id = _message(engine)
    with engine.begin() as conn:
        mint(conn, message_id, case_id, NOW, EXPIRES)
    assert purge_before(engine, NOW) == (0, 0)  # nothing older than the message
    with engine.connect() as conn:
        assert conn.execute(select(link_tokens_t.c.token)).all() != []
    messages, _events = purge_before(engine, NOW + dt.timedelta(days=1))
    assert messages == 1
    with engine.connect() as conn:
        assert conn.execute(select(link_tokens_t.c.token)).all() == []
