"""`GET /p/{token}`: the payment link of a message (a short stored token or an old signed
one, both read by `services.links.resolve`). A valid click is logged on the case and
redirected to the organisation's payment page; a bad or expired link gets a friendly
page, never an error, and never the debtor's data."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from dispatcher.services.links import resolve
from dispatcher.web.dependencies import ClockDep, ConfigDep, EngineDep, ReceiptsDep, SignerDep
from dispatcher.web.html import link_problem

router = APIRouter()


def payment_redirect(payment_page: str, case_id: str) -> str:
    """The payment page with `ref=<case id>` added to its own query."""
    parts = urlsplit(payment_page)
    query = [*parse_qsl(parts.query, keep_blank_values=True), ("ref", case_id)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _expired() -> Response:
    return link_problem(
        410,
        "This payment link has expired",
        "For your security, payment links work for a limited time. A newer reminder carries a fresh link,"
        " or contact customer service.",
        "为了您的安全，还款链接有时效。请使用最新提醒中的链接，或联系客服。",
    )


@router.get("/p/{token}")
async def payment_link(request: Request, token: str, engine: EngineDep, signer: SignerDep, clock: ClockDep,
                       receipts: ReceiptsDep, config: ConfigDep) -> Response:
    target = await run_in_threadpool(resolve, engine, signer, token, clock.now())
    if target is None:
        request.state.result = "bad_token"
        return link_problem(
            400,
            "This payment link is not valid",
            "The link may have been cut off when it was copied. Open it from the latest reminder.",
            "链接无效，可能复制不完整。请从最新的提醒中打开。",
        )
    if target.expired:
        request.state.result = "expired"
        return _expired()
    case_id = await run_in_threadpool(receipts.record_click, target.message_id)
    if case_id is None:
        request.state.result = "unknown_message"
        return _expired()
    request.state.result = "redirected"
    return RedirectResponse(payment_redirect(config.organisation.payment_page, case_id), status_code=302)
