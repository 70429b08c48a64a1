"""The web app: webhooks (Twilio, e-mail), payment links, health and metrics.

A composition root (STYLE principle 5): `create_app` receives every collaborator;
`create_app_from_env` builds them from the environment for
`uvicorn --factory dispatcher.web.app:create_app_from_env` (several worker processes).

Guarantees: no request gets a 500 (the guard answers 400, or 503 when the store is
unreachable, and logs one line); bodies over `max_body_bytes` get 413; malformed
requests 400; a Twilio request whose signature fails gets 403 before anything is read
from or written to the store.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from twilio.request_validator import RequestValidator

from dispatcher.clock import Clock
from dispatcher.config import Config
from dispatcher.links import LinkSigner
from dispatcher.policy import Gate
from dispatcher.services.receipts import Receipts
from dispatcher.settings import Settings
from dispatcher.web import api, console, email_hooks, payment_links, twilio_hooks
from dispatcher.web.guard import GuardMiddleware
from dispatcher.web.metrics import WebhookMetrics
from dispatcher.web.security import Rejected

log = logging.getLogger("dispatcher.web")

DEFAULT_MAX_BODY_BYTES = 64 * 1024


def create_app(
    *,
    engine: Engine,
    config: Config,
    clock: Clock,
    settings: Settings,
    signer: LinkSigner,
    templates: Any = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    gate: Gate | None = None,
) -> FastAPI:
    """The FastAPI app wired to its collaborators. `templates` is kept for pages that
    render approved content (unused by the webhooks). On PostgreSQL the status hot path
    keeps a few connections of its own: they are released at lifespan shutdown, or by
    `app.state.receipts.close()` when the server runs with lifespan off."""
    receipts = Receipts(engine, config, clock, signer, settings.public_url)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await receipts.aclose()  # the status hot path's own pool, closed on its loop

    app = DispatcherApp(title="dispatcher", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    metrics = WebhookMetrics(receipts.message_counts)
    if not settings.twilio_auth_token:
        log.warning("TWILIO_AUTH_TOKEN is not set: every /twilio/* request will be refused with 403")
    app.state.engine = engine
    app.state.config = config
    app.state.gate = gate if gate is not None else Gate(config)  # the one-off and case pages' gate
    app.state.clock = clock
    app.state.settings = settings
    app.state.signer = signer
    app.state.templates = templates
    app.state.receipts = receipts
    app.state.metrics = metrics
    app.state.validator = RequestValidator(settings.twilio_auth_token) if settings.twilio_auth_token else None

    app.router.routes.extend(twilio_hooks.routes)
    app.include_router(email_hooks.router)
    app.include_router(payment_links.router)
    app.include_router(api.router)
    app.include_router(console.router)

    @app.exception_handler(Rejected)
    async def _rejected(request: Request, exc: Rejected) -> Response:
        return rejected_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        request.state.result = "bad_request"
        return PlainTextResponse("malformed request", status_code=400)

    @app.get("/healthz")
    async def healthz(request: Request) -> Response:
        try:
            await run_in_threadpool(receipts.ping)
        except Exception as exc:  # any driver error means "not ready"
            log.error("health check: store unreachable (%s)", type(exc).__name__)
            request.state.result = "unavailable"
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics_page() -> Response:
        text = await run_in_threadpool(metrics.render)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    known = frozenset(r.path for r in twilio_hooks.routes)
    app.add_middleware(GuardMiddleware, max_body_bytes=max_body_bytes, metrics=metrics, known_paths=known)
    app.fast_routes = {path: endpoint for path, endpoint in twilio_hooks.fast_routes.items()}
    app.fast_guard = {"max_body_bytes": max_body_bytes, "metrics": metrics, "known_paths": known}
    return app


def rejected_response(request: Request, exc: Rejected) -> Response:
    """The answer to a request a handler refused (`Rejected`), counted as its result."""
    request.state.result = exc.result
    if exc.status == 403:
        log.warning("%s %s refused: %s", request.method, request.url.path, exc.detail)
    return PlainTextResponse(exc.detail, status_code=exc.status)


class DispatcherApp(FastAPI):
    """FastAPI with a short way in for the status callbacks.

    Twilio's webhooks are most of the traffic (two to six status callbacks per message,
    plus the IVR's TwiML requests), and FastAPI's middleware stack and router cost more
    CPU per request than the handler. They go through the same `GuardMiddleware` (body
    limit, no 500s, counters) straight to the same handler, with the same answer to a
    refused request; every other request takes the full stack."""

    fast_routes: dict[str, Any]
    fast_guard: dict[str, Any]

    def build_middleware_stack(self) -> Any:
        full = super().build_middleware_stack()
        routes = getattr(self, "fast_routes", None)
        if not routes:
            return full

        async def endpoint(scope: Any, receive: Any, send: Any) -> None:
            request = Request(scope, receive)
            try:
                response = await routes[scope["path"]](request)
            except Rejected as exc:
                response = rejected_response(request, exc)
            await response(scope, receive, send)

        fast = GuardMiddleware(endpoint, **self.fast_guard)

        async def dispatch(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in routes:
                await fast(scope, receive, send)
            else:
                await full(scope, receive, send)

        return dispatch


def create_app_from_env() -> FastAPI:
    """Build the app from the environment (DISPATCHER_* variables, `.env`): the factory
    for running the webhook server alone, e.g. with several uvicorn workers."""
    from dispatcher.clock import StartedClock, SystemClock, parse_instant
    from dispatcher.config import load_config
    from dispatcher.store.db import ensure_schema, make_engine

    settings = Settings.from_env()
    engine = make_engine(settings.db_url)
    ensure_schema(engine)
    clock: Clock = StartedClock(parse_instant(settings.now)) if settings.now else SystemClock()
    return create_app(
        engine=engine,
        config=load_config(settings.config_path),
        clock=clock,
        settings=settings,
        signer=LinkSigner(settings.signing_key),
    )
