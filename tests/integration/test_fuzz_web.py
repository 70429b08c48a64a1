"""Bad input everywhere, over the web (issue 16): every API endpoint from the OpenAPI
schema (schemathesis), every webhook with signed random forms (hypothesis), and bad
path parameters (issue 10: NUL bytes, over-long ids) — on SQLite and PostgreSQL.

Never a 5xx (the store is up, so not even 503), never a traceback, and a refused request
(4xx) writes nothing. The examples are bounded (`EXAMPLES`) so CI stays within its
budget; the requests tried per endpoint and their statuses are written to
`var/fuzz/web-<store>.json` (the table in BENCHMARKS.md: `bench/fuzz_table.py`)."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from twilio.request_validator import RequestValidator

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.store.tables import events_t, holds_t, messages_t
from dispatcher.templates import TemplateSet
from dispatcher.web.app import create_app
from dispatcher.wiring import Runtime
from tests.integration.test_collector_api import imported

ROOT = Path(__file__).resolve().parents[2]
TOKEN, AUTH_TOKEN, PUBLIC = "api-token-for-fuzz", "twilio-token-for-fuzz", "https://d.example"
EXAMPLES = int(os.environ.get("DISPATCHER_FUZZ_EXAMPLES", "10"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.filter_too_much, HealthCheck.data_too_large])


class Harness:
    """The real app over ASGI on one event loop, counting what it answered."""

    def __init__(self, engine: Engine, config: Config) -> None:
        self.engine = engine
        self.loop = asyncio.new_event_loop()
        clock = FakeClock(dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))))
        with engine.begin() as conn:
            repo.upsert_cases(conn, [imported("A1"), imported("B-2.x_3")], clock.now())
        settings_ = Settings(public_url=PUBLIC, api_token=TOKEN, signing_key="k", twilio_auth_token=AUTH_TOKEN)
        self.app = create_app(Runtime(settings_, clock, config=config, engine=engine,
                                      templates=TemplateSet(ROOT / "templates", config)).web())
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=PUBLIC)
        self.counts: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)

    def state(self) -> tuple[int, ...]:
        with self.engine.connect() as conn:
            return tuple(conn.execute(select(func.count()).select_from(t)).scalar_one()
                         for t in (messages_t, events_t, holds_t))

    def request(self, endpoint: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        before = self.state()
        response = self.loop.run_until_complete(self.client.request(method, url, **kwargs))
        self.counts[f"{method} {endpoint}"][response.status_code] += 1
        assert response.status_code < 500, (method, url, kwargs, response.status_code, response.text[:300])
        if response.status_code >= 400:
            assert self.state() == before, ("a refused request wrote something", method, url, kwargs)
        return response

    def close(self, store: str) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.run_until_complete(self.app.collaborators.receipts.aclose())
        self.loop.close()
        out = ROOT / "var" / "fuzz"
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"web-{store}.json"
        merged: dict[str, dict[str, int]] = json.loads(path.read_text()) if path.exists() else {}
        for endpoint, counter in self.counts.items():
            row = merged.setdefault(endpoint, {})
            for status, n in counter.items():
                row[str(status)] = row.get(str(status), 0) + n
        path.write_text(json.dumps(merged, indent=1, sort_keys=True))


@pytest.fixture
def harness(engine: Engine, config: Config, caplog: pytest.LogCaptureFixture) -> Iterator[Harness]:
    h = Harness(engine, config)
    with caplog.at_level(logging.WARNING):
        yield h
    h.close(engine.dialect.name)
    # errors the guard caught would be logged with a traceback: none may happen
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


# --------------------------------------------------------------- path parameters


BAD_IDS = ["%00", "A1%00", "%00%00%00", "x" * 65, "x" * 5000, "%E2%80%AE", "..%2F..%2Fetc", "%FF%FE", "%0A%0D"]


def test_bad_path_parameters_are_400_or_404_never_503(harness: Harness) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for bad in BAD_IDS:
        for method, url, endpoint, kwargs in [
            ("GET", f"/api/cases/{bad}", "/api/cases/{case_id}", {"headers": auth}),
            ("POST", f"/api/cases/{bad}/messages", "/api/cases/{case_id}/messages",
             {"headers": auth, "json": {"channel": "sms", "by": "agent7"}}),
            ("GET", f"/ui/cases/{bad}", "/ui/cases/{case_id}", {}),
            ("GET", f"/p/{bad}", "/p/{token}", {}),
            ("GET", f"/email/unsubscribe/{bad}", "/email/unsubscribe/{token}", {}),
            ("POST", f"/email/unsubscribe/{bad}", "/email/unsubscribe/{token}", {}),
        ]:
            response = harness.request(endpoint, method, url, **kwargs)
            assert response.status_code in (303, 400, 401, 404, 410), (url, response.status_code)
    # the one that was 503 with a traceback (issue 10): a clear 400
    response = harness.request("/api/cases/{case_id}", "GET", "/api/cases/%00", headers=auth)
    assert response.status_code == 400 and "control characters" in response.text
    assert harness.request("/api/cases/{case_id}", "GET", "/api/cases/" + "x" * 65, headers=auth).status_code == 404


# --------------------------------------------------------------- the API by its schema

_schema: Any = None


def _operations() -> list[Any]:
    from dispatcher.config import load_config

    config = load_config(ROOT / "config" / "dispatcher.toml")
    from sqlalchemy import create_engine

    app = create_app(Runtime(Settings(api_token=TOKEN, signing_key="k"), FakeClock(dt.datetime.now(dt.UTC)),
                             config=config, engine=create_engine("sqlite://"),
                             templates=TemplateSet(ROOT / "templates", config)).web())
    schema = schemathesis.openapi.from_dict(app.api.openapi())
    return [op.ok() for op in schema.get_all_operations()]


OPERATIONS = _operations()


@pytest.mark.parametrize("operation", OPERATIONS, ids=[f"{o.method.upper()} {o.path}" for o in OPERATIONS])
def test_every_api_operation_by_its_openapi_schema(harness: Harness, operation: Any) -> None:
    # the schema has the paths and parameters; bodies are not declared (handlers read
    # them themselves), so random JSON and form bodies are added
    anything = st.one_of(st.text(max_size=30), st.integers(), st.none(), st.booleans())
    meaningful = {"channel": st.sampled_from(["sms", "email", "voice", "fax", ""]) | anything,
                  "by": st.sampled_from(["agent7", " ", "x" * 100]) | anything,
                  "template": st.sampled_from(["sms/dpd30/v1", "email/dpd30/v2", "sms/dpd30/v99"]) | anything,
                  "reason": st.sampled_from(["collector_hold", "legal_hold", "case_closed", ""]) | anything,
                  "until": st.sampled_from(["2026-12-20", "2026-02-30", "2026-12-20T00:00:00+08:00"]) | anything,
                  "note": anything}
    bodies = st.none() | st.fixed_dictionaries({}, optional=meaningful) | st.dictionaries(st.text(max_size=8),
                                                                                          anything, max_size=4)

    @FUZZ
    @given(case=operation.as_strategy(), body=bodies, authorised=st.booleans(), form=st.booleans())
    def run(case: Any, body: dict[str, Any] | None, authorised: bool, form: bool) -> None:
        kwargs = case.as_transport_kwargs(base_url=PUBLIC)
        headers = {k: v for k, v in (kwargs.get("headers") or {}).items() if k.lower() != "connection"}
        if kwargs.get("cookies"):
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in kwargs["cookies"].items())
        headers = {k: v.encode("utf-8") if isinstance(v, str) else v for k, v in headers.items()}
        if authorised:
            headers["Authorization"] = f"Bearer {TOKEN}".encode()
        extra: dict[str, Any] = {}
        if body is not None and operation.method.upper() == "POST":
            extra = {"data": {k: str(v) for k, v in body.items()}} if form else {"json": body}
        harness.request(operation.path, operation.method.upper(), kwargs["url"], params=kwargs.get("params"),
                        headers=headers, **extra)

    run()


# --------------------------------------------------------------- webhooks, signed

TWILIO_FIELDS = ["MessageSid", "MessageStatus", "CallSid", "CallStatus", "AnsweredBy", "From", "To", "Body",
                 "Digits", "ErrorCode", "AccountSid", "SmsSid", "CallDuration", "Timestamp"]
values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["delivered", "sent", "failed", "undelivered", "completed", "ringing", "in-progress", "human",
                     "machine_start", "STOP", "PAID", "退订", "1", "2", "9", "30005", "21610", "+8613812345678",
                     "SM" + "0" * 32, "CA" + "f" * 32, "\x00", "x" * 3000, "-1", "1e309", ""]),
)
#: the fields each webhook needs, always present (with random or meaningful values) so that
#: most signed requests get past parsing into the handler; other fields come and go
TWILIO_PATHS = {"/twilio/sms/status": ["MessageSid", "MessageStatus"],
                "/twilio/sms/inbound": ["MessageSid", "From", "To", "Body"],
                "/twilio/voice/answer": ["CallSid", "AnsweredBy"],
                "/twilio/voice/gather": ["CallSid", "Digits"],
                "/twilio/voice/status": ["CallSid", "CallStatus"]}


def forms(path: str) -> st.SearchStrategy[dict[str, str]]:
    required = TWILIO_PATHS[path]
    return st.fixed_dictionaries({k: values for k in required},
                                 optional={k: values for k in TWILIO_FIELDS if k not in required}).flatmap(
        lambda form: st.dictionaries(st.text(min_size=1, max_size=12), values, max_size=2).map(
            lambda extra: {**extra, **form}))


@pytest.mark.parametrize("path", TWILIO_PATHS)
def test_twilio_webhooks_with_signed_random_forms(harness: Harness, path: str) -> None:
    validator = RequestValidator(AUTH_TOKEN)

    @FUZZ
    @given(form=forms(path), m=st.none() | st.text(max_size=20) | st.integers(-5, 10**12).map(str),
           signed=st.sampled_from([True, True, True, False]))
    def run(form: dict[str, str], m: str | None, signed: bool) -> None:
        url = f"{PUBLIC}{path}" + ("" if m is None else f"?{httpx.QueryParams({'m': m})}")
        signature = validator.compute_signature(url, form) if signed else "bogus"
        response = harness.request(path, "POST", url, data=form, headers={"X-Twilio-Signature": signature})
        if not signed:
            assert response.status_code in (400, 403)  # malformed before unsigned, or refused

    run()


@pytest.mark.parametrize("path", ["/email/bounce", "/email/unsubscribe/{token}", "/p/{token}"])
def test_email_and_link_webhooks_with_random_input(harness: Harness, path: str) -> None:
    import hashlib
    import hmac
    from urllib.parse import quote

    @FUZZ
    @given(form=st.dictionaries(st.sampled_from(["return_path", "recipient", "type", "diagnostic", "List-Unsubscribe"])
                                | st.text(max_size=10), values, max_size=6),
           token=st.text(max_size=40) | st.sampled_from(["", "a" * 16, "%00"]), signed=st.booleans(),
           raw=st.binary(max_size=200))
    def run(form: dict[str, str], token: str, signed: bool, raw: bytes) -> None:
        if path == "/email/bounce":
            body = httpx.QueryParams(form).__str__().encode() if form else raw
            mac = hmac.new(b"k", body, hashlib.sha256).hexdigest() if signed else "00"
            harness.request(path, "POST", path, content=body,
                            headers={"X-Dispatcher-Signature": mac,
                                     "Content-Type": "application/x-www-form-urlencoded"})
            return
        url = path.replace("{token}", quote(token, safe="") or "x")
        method = "POST" if path.startswith("/email") and signed else "GET"
        harness.request(path, method, url, content=raw if method == "POST" else None)

    run()
