"""The web app: webhooks (Twilio, e-mail), the debtor's page behind payment links, the collectors' API and
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
from pathlib import Path

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from dispatcher.roles import Permission
from dispatcher.services.calendar_notice import metric_lines as calendar_metric_lines
from dispatcher.settings import Settings
from dispatcher.web import (
    api,
    case_actions_page,
    case_page,
    console,
    debtor_page,
    email_hooks,
    queue_page,
    reports_page,
    studio,
    template_preview,
    templates_api,
)
from dispatcher.web.auth import AccessDenied, CsrfFailed, api_permission
from dispatcher.web.dependencies import DispatcherAPI, WebCollaborators
from dispatcher.web.guard import GuardMiddleware, Receive, Scope, Send
from dispatcher.web.idempotency import IdempotencyMiddleware
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


def _extra_metric_lines(web: WebCollaborators) -> list[str]:
    """/metrics lines beyond the webhook counters: the calendar gauge and the providers' circuits."""
    lines = calendar_metric_lines(web.config, web.clock.now())
    if web.circuits is not None:
        lines += web.circuits.metric_lines()
    return lines


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

    app = DispatcherAPI(web, title="dispatcher", version=_version(), docs_url=None, redoc_url=None,
                        openapi_url="/openapi.json", lifespan=lifespan,
                        description="The collectors' HTTP API. Authenticate with `Authorization: Bearer <token>`"
                                    " (`dispatcher tokens create NAME`): 401 without a valid token, 403 when the"
                                    " token's roles lack the permission. Every POST takes an optional"
                                    " `Idempotency-Key` header: a retry with the same key and body gets the first"
                                    " answer again (`Idempotent-Replayed: true`), the same key with another body"
                                    " 422, a retry while the first is still running 409; keys last 24 hours.")
    metrics = WebhookMetrics(receipts.message_counts,
                             extra=lambda: _extra_metric_lines(web))
    if not web.settings.twilio_auth_token:
        log.warning("TWILIO_AUTH_TOKEN is not set: every /twilio/* request will be refused with 403")
    hooks = TwilioHooks(receipts, web.config, web.settings)

    app.router.routes.extend(hooks.routes())
    # OpenAPI (/openapi.json, /docs) documents the API; pages and webhooks are not part of it
    app.include_router(email_hooks.router, include_in_schema=False)
    app.include_router(debtor_page.router, include_in_schema=False)
    app.include_router(api.router)
    app.include_router(template_preview.router)  # before templates_api: /preview is not a template id
    app.include_router(templates_api.router)
    app.include_router(console.router, include_in_schema=False)
    app.include_router(case_page.router, include_in_schema=False)
    app.include_router(case_actions_page.router, include_in_schema=False)
    app.include_router(queue_page.router, include_in_schema=False)
    app.include_router(reports_page.router, include_in_schema=False)
    app.include_router(studio.router, include_in_schema=False)
    _add_docs(app)
    # the console's own scripts (the template studio's live preview), from this origin only
    app.mount("/ui/static", StaticFiles(directory=Path(__file__).resolve().parent / "static"), name="ui-static")

    @app.exception_handler(Rejected)
    async def _rejected(request: Request, exc: Rejected) -> Response:
        return rejected_response(request, exc)

    @app.exception_handler(AccessDenied)
    async def _denied(request: Request, exc: AccessDenied) -> Response:
        request.state.result = "unauthorized" if exc.status == 401 else "forbidden"
        if exc.console:
            return console.access_denied_response(request, exc)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.detail}, status_code=exc.status, headers=headers)

    @app.exception_handler(CsrfFailed)
    async def _csrf(request: Request, exc: CsrfFailed) -> Response:
        request.state.result = "forbidden"
        return console.csrf_failed_response(request, exc)

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

    @app.get("/metrics", dependencies=[Depends(api_permission(Permission.METRICS_READ))])
    async def metrics_page() -> Response:
        text = await run_in_threadpool(metrics.render)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    fast_routes = hooks.endpoints()
    # inside the guard (its body limit and no-500 answer come first)
    app.add_middleware(IdempotencyMiddleware, engine=web.engine, clock=web.clock)
    app.add_middleware(GuardMiddleware, max_body_bytes=max_body_bytes, metrics=metrics,
                       known_paths=frozenset(fast_routes))
    return WebApp(app, fast_routes, max_body_bytes=max_body_bytes, metrics=metrics)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dispatcher")
    except PackageNotFoundError:
        return "unknown"


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from files shipped in a package (`fastapi-offline`), not a CDN:
    the console and its docs must work on a bank's closed network."""
    import fastapi_offline
    from fastapi.openapi.docs import get_swagger_ui_html

    static = Path(fastapi_offline.__file__).resolve().parent / "static"
    app.mount("/docs/static", StaticFiles(directory=static), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="dispatcher API",
                                   swagger_js_url="/docs/static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/static/swagger-ui.css",
                                   swagger_favicon_url="/docs/static/favicon.png")


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
