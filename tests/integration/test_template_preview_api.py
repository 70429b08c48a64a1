"""`POST /api/templates/preview` over the real ASGI app, on SQLite and PostgreSQL: the
text a debtor would get for a sample or a real case, the SMS encoding and segments
(a GSM-7 and a UCS-2 text), the cost of one message from `[costs.<CURRENCY>]`, lint
problems by line, and who may ask (templates.read; a real case also cases.read)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.credentials import light_passwords
from dispatcher.roles import Role
from dispatcher.services.people import People
from dispatcher.services.template_files import import_tree
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.templates import TemplateSet
from dispatcher.templates.segments import sms_segments
from dispatcher.testing import sample_payment_link
from dispatcher.web.app import create_app
from dispatcher.wiring import Runtime
from tests.integration.test_collector_api import imported

ROOT = Path(__file__).resolve().parents[2]
URL = "/api/templates/preview"

#: An English SMS with everything lint asks for, in the GSM-7 alphabet.
GSM_SMS = ("{{ org_name }}: {{ outstanding }} is {{ days_past_due }} days overdue. {{ penalty_explanation }}"
           " Pay: {{ payment_link }} Call {{ support_phone }}. {{ opt_out }}")
#: The same in Chinese: UCS-2.
UCS_SMS = ("【{{ org_name }}】您的账户已逾期{{ days_past_due }}天，应还{{ outstanding }}。{{ penalty_explanation }}"
           "还款：{{ payment_link }} 客服{{ support_phone }} {{ opt_out }}")


@dataclass
class Client:
    http: httpx.AsyncClient
    people: People

    def token_of(self, name: str, *roles: Role) -> dict[str, str]:
        self.people.add_user(name, frozenset(roles), "test-admin")
        return {"Authorization": f"Bearer {self.people.create_token(name, 30, 'test-admin').token}"}


async def _client(engine: Engine, config: Config) -> AsyncIterator[Client]:
    clock = FakeClock(dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))))
    with engine.begin() as conn:
        repo.upsert_cases(conn, [imported("A1")], clock.now())
    settings = Settings(public_url="https://d.example", signing_key="k")
    runtime = Runtime(settings, clock, config=config, engine=engine, passwords=light_passwords(),
                      templates=TemplateSet(ROOT / "templates", config))
    import_tree(runtime.template_versions, ROOT / "templates", "test-admin")  # the shipped set, approved
    app = create_app(runtime.web())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield Client(http, app.collaborators.people)
    await app.collaborators.receipts.aclose()


@pytest.fixture
async def client(engine: Engine, config: Config) -> AsyncIterator[Client]:
    async for c in _client(engine, config):
        yield c


async def test_no_token_is_401_and_a_collector_is_403(client: Client) -> None:
    body = {"template_id": "sms/dpd30/v1", "locale": "zh-CN"}
    assert (await client.http.post(URL, json=body)).status_code == 401
    r = await client.http.post(URL, json=body, headers=client.token_of("agent7", Role.COLLECTOR))
    assert r.status_code == 403
    assert "templates.read" in r.json()["error"]


async def test_the_current_version_for_a_sample_case_with_ucs2_segments_and_cost(
        client: Client, config: Config) -> None:
    auth = client.token_of("writer", Role.AUTHOR)
    r = await client.http.post(URL, json={"template_id": "sms/dpd30/v1", "locale": "zh-CN"}, headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["sample"] is True and body["case_id"].startswith("sample-cn-")
    assert "张伟" not in body["text"]  # the SMS does not name the debtor, but states the amount:
    assert "¥" in body["text"] and sample_payment_link(config.links.base_url) in body["text"]
    info = sms_segments(body["text"])
    assert (body["encoding"], body["segments"], body["units"]) == ("UCS-2", info.segments, info.units)
    assert body["encoding"] == "UCS-2" and body["segments"] >= 2  # a Chinese SMS of this length
    price = config.costs["CNY"].sms_segment
    assert body["currency"] == "CNY"
    assert body["cost"] == str((info.segments * price).quantize(Decimal("0.0001")))
    assert body["problems"] == [] and body["error"] is None
    assert body["diff"] == []  # the shipped text is the approved one
    assert "subject" not in body and "html" not in body


async def test_gsm7_content_counts_septets_and_its_cost_follows_the_segments(client: Client, config: Config) -> None:
    auth = client.token_of("writer", Role.AUTHOR)
    r = await client.http.post(URL, json={"template_id": "sms/dpd30/v1", "locale": "en-US", "content": GSM_SMS},
                               headers=auth)
    assert r.status_code == 200, r.text
    one = r.json()
    assert one["encoding"] == "GSM-7" and one["currency"] == "USD"
    assert (one["segments"], one["units"]) == (sms_segments(one["text"]).segments, len(one["text"]))
    price = config.costs["USD"].sms_segment
    assert one["cost"] == str((one["segments"] * price).quantize(Decimal("0.0001")))
    assert one["problems"] == []
    assert any(line.startswith("-") for line in one["diff"])  # differs from the approved text

    longer = GSM_SMS + " We are here to help: reply HELP for options, or call us any working day." * 2
    r = await client.http.post(URL, json={"template_id": "sms/dpd30/v1", "locale": "en-US", "content": longer},
                               headers=auth)
    two = r.json()
    assert two["encoding"] == "GSM-7" and two["segments"] == one["segments"] + 1
    assert Decimal(two["cost"]) == Decimal(one["cost"]) + price

    r = await client.http.post(URL, json={"template_id": "sms/dpd30/v1", "locale": "zh-CN", "content": UCS_SMS},
                               headers=auth)
    zh = r.json()
    info = sms_segments(zh["text"])
    assert (zh["encoding"], zh["segments"]) == ("UCS-2", info.segments)
    assert zh["cost"] == str((info.segments * config.costs["CNY"].sms_segment).quantize(Decimal("0.0001")))


async def test_lint_problems_come_with_their_line_numbers(client: Client) -> None:
    auth = client.token_of("writer", Role.AUTHOR)
    content = GSM_SMS + "\nOr the police will call.\n"
    r = await client.http.post(URL, json={"template_id": "sms/dpd30/v1", "locale": "en-US", "content": content},
                               headers=auth)
    assert r.status_code == 200
    assert {"line": 2, "message": "forbidden phrase 'police'"} in r.json()["problems"]

    missing = "{{ org_name }}: please pay {{ outstanding }}.\n{{ payment_link }}"
    r = await client.http.post(URL, json={"template_id": "sms/dpd30/v1", "locale": "en-US", "content": missing},
                               headers=auth)
    messages = [p["message"] for p in r.json()["problems"]]
    assert any(m.startswith("missing opt_out") for m in messages), messages


async def test_problems_are_422_with_a_clear_message(client: Client) -> None:
    auth = client.token_of("writer", Role.AUTHOR)
    post = client.http.post
    r = await post(URL, json={"template_id": "sms/dpd30/v1", "locale": "en-US", "content": "Hi {{ nobody.x }}"},
                   headers=auth)
    assert r.status_code == 422
    assert r.json()["error"].startswith("line 1: undefined name")
    r = await post(URL, json={"template_id": "sms/dpd30/v1", "locale": "en-US", "content": "A\n{% if %}"},
                   headers=auth)
    assert r.status_code == 422 and r.json()["error"].startswith("line 2: syntax error")
    assert (await post(URL, json={"template_id": "sms/dpd30", "locale": "en-US"}, headers=auth)).json() == {
        "error": "template_id 'sms/dpd30' is not a template id; ids look like sms/dpd30/v1"
                 " (<channel>/<stage>/<variant>)"}
    r = await post(URL, json={"template_id": "sms/dpd30/v1", "locale": "fr-FR"}, headers=auth)
    assert r.status_code == 422 and "use en-US or zh-CN" in r.json()["error"]
    r = await post(URL, json={"template_id": "sms/dpd30/v9", "locale": "en-US"}, headers=auth)
    assert r.status_code == 422 and r.json()["error"].startswith("sms/dpd30/v9 has no version in en-US")
    r = await post(URL, json=["sms/dpd30/v1"], headers=auth)
    assert r.status_code == 422 and "JSON object" in r.json()["error"]
    r = await post(URL, json={"template_id": "sms/dpd30/v1", "locale": "en-US", "content": 5}, headers=auth)
    assert r.status_code == 422 and r.json()["error"] == "content must be a string"


async def test_a_real_case_needs_cases_read(client: Client) -> None:
    body = {"template_id": "sms/dpd30/v1", "locale": "zh-CN", "case_id": "A1"}
    r = await client.http.post(URL, json=body, headers=client.token_of("writer", Role.AUTHOR))
    assert r.status_code == 403 and "cases.read" in r.json()["error"]
    checker = client.token_of("checker", Role.COMPLIANCE)
    r = await client.http.post(URL, json=body, headers=checker)
    assert r.status_code == 200, r.text
    assert (r.json()["case_id"], r.json()["sample"]) == ("A1", False)
    assert "10,325.00" in r.json()["text"]  # the case's own amount
    r = await client.http.post(URL, json={**body, "case_id": "NOPE"}, headers=checker)
    assert r.status_code == 422 and r.json()["error"].startswith("no case NOPE")


async def test_email_and_voice_previews(client: Client, config: Config) -> None:
    auth = client.token_of("writer", Role.AUTHOR)
    r = await client.http.post(URL, json={"template_id": "email/dpd30/v1", "locale": "en-US"}, headers=auth)
    body = r.json()
    assert r.status_code == 200 and body["subject"] and "<" in body["html"]
    assert (body["encoding"], body["segments"]) == (None, None)
    assert body["cost"] == str(config.costs["USD"].email.quantize(Decimal("0.0001")))
    voice = next(p for p in sorted((ROOT / "templates" / "voice").glob("*/*.en-US.j2")))
    template_id = f"voice/{voice.parent.name}/{voice.name.split('.')[0]}"
    r = await client.http.post(URL, json={"template_id": template_id, "locale": "en-US"}, headers=auth)
    assert r.status_code == 200, r.text
    assert Decimal(r.json()["cost"]) >= config.costs["USD"].voice_minute
    assert "minute" in r.json()["cost_basis"]


async def test_without_prices_the_cost_is_null(engine: Engine, config: Config) -> None:
    async for c in _client(engine, config.model_copy(update={"costs": {}})):
        r = await c.http.post(URL, json={"template_id": "sms/dpd30/v1", "locale": "zh-CN"},
                              headers=c.token_of("writer", Role.AUTHOR))
        assert r.status_code == 200
        assert r.json()["cost"] is None and "no [costs.CNY]" in r.json()["cost_basis"]
