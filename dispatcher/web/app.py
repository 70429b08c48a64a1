"""The web app: webhooks (Twilio, e-mail), payment links, the collectors' API and
console, health and metrics.

A composition root (STYLE principle 5): `create_app` receives its collaborators, built
by `dispatcher.wiring` (`Runtime.web()`, or `assemble_web` from parts);
`create_app_from_env` builds them from the environment for
`uvicorn --factory dispatcher.web.app:create_app_from_env` (several worker processes).
What a server runs is `WebApp`: the webhook fast path in front of the FastAPI app.

Guarantees: no request gets a 500 (the guard answers 400, or 503 when the store is
unreachable, and logs one line); bodies over `max_body_bytes` get 413; malformed
requests 400; a Twilio request whose signature fails gets 403 before anything is read
from or written to the store.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from dispatcher.settings import Settings
from dispatcher.web import api, console, email_hooks, payment_links, reports_page
from dispatcher.web.dependencies import DispatcherAPI, WebCollaborators
from dispatcher.web.guard import GuardMiddleware, Receive, Scope, Send
from dispatcher.web.metrics import WebhookMetrics
from dispatcher.web.security import Rejected
from dispatcher.web.twilio_hooks import Endpoint, TwilioHooks
from dispatcher.wiring import Runtime, build_clock

log = logging.getLogger("dispatcher.web")

DEFAULT_MAX_BODY_BYTES = 64 * 1024


class WebApp:
    """The ASGI app a server runs: a short way in for the Twilio webhooks, and the
    FastAPI app (`api`) for everything else.

    Twilio's webhooks are most of the traffic (two to six status callbacks per message,
    plus the IVR's TwiML requests), and FastAPI's middleware stack and router cost more
    CPU per request than the handler. A POST to one of their paths goes through its own
    `GuardMiddleware` (the same body limit, no-500 catch-all and counters as the full
    stack's) straight to the same handler, with the same answer to a refused request.
    Every other request, the lifespan included, goes to `api` unchanged."""

    def __init__(self, api: DispatcherAPI, fast_routes: Mapping[str, Endpoint], *, max_body_bytes: int,
                 metrics: WebhookMetrics) -> None:
        self.api = api
        self.collaborators = api.collaborators
        self.fast_routes = dict(fast_routes)
        self._fast = GuardMiddleware(self._endpoint, max_body_bytes=max_body_bytes, metrics=metrics,
                                     known_paths=frozenset(self.fast_routes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.fast_routes:
            await self._fast(scope, receive, send)
        else:
            await self.api(scope, receive, send)

    async def _endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self.fast_routes[scope["path"]](request)
        except Rejected as exc:
            response = rejected_response(request, exc)
        await response(scope, receive, send)


def create_app(web: WebCollaborators, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> WebApp:
    """The web app wired to its collaborators. On PostgreSQL the status hot path keeps
    a pool of its own: the lifespan's shutdown closes it on its loop; a server run with
    lifespan off (the daemon) or an async test calls `await web.receipts.aclose()`
    (`app.collaborators.receipts`) itself. Closing twice is harmless."""
    receipts = web.receipts

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await receipts.aclose()  # the status hot path's own pool, closed on its loop

    app = DispatcherAPI(web, title="dispatcher", docs_url=None, redoc_url=None, openapi_url=None,
                        lifespan=lifespan)
    metrics = WebhookMetrics(receipts.message_counts)
    if not web.settings.twilio_auth_token:
        log.warning("TWILIO_AUTH_TOKEN is not set: every /twilio/* request will be refused with 403")
    hooks = TwilioHooks(receipts, web.config, web.settings)

    app.router.routes.extend(hooks.routes())
    app.include_router(email_hooks.router)
    app.include_router(payment_links.router)
    app.include_router(api.router)
    app.include_router(console.router)
    app.include_router(reports_page.router)

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
        except Exception as exc:  # noqa: BLE001 - any driver error means "not ready"
            log.error("health check: store unreachable (%s)", type(exc).__name__)
            request.state.result = "unavailable"
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics_page() -> Response:
        text = await run_in_threadpool(metrics.render)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    fast_routes = hooks.endpoints()
    app.add_middleware(GuardMiddleware, max_body_bytes=max_body_bytes, metrics=metrics,
                       known_paths=frozenset(fast_routes))
    return WebApp(app, fast_routes, max_body_bytes=max_body_bytes, metrics=metrics)


def rejected_response(request: Request, exc: Rejected) -> Response:
    """The answer to a request a handler refused (`Rejected`), counted as its result."""
    request.state.result = exc.result
    if exc.status == 403:
        log.warning("%s %s refused: %s", request.method, request.url.path, exc.detail)
    return PlainTextResponse(exc.detail, status_code=exc.status)


def create_app_from_env() -> WebApp:
    """Build the app from the environment (DISPATCHER_* variables, `.env`): the factory
    for running the webhook server alone, e.g. with several uvicorn workers."""
    settings = Settings.from_env()
    return create_app(Runtime(settings, build_clock(settings, advancing=True)).web())
