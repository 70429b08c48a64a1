"""E-mail endpoints: RFC 8058 one-click unsubscribe (POST), its confirmation page
(GET), and bounce intake matched by the VERP return path."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from dispatcher.config import Config
from dispatcher.links import LinkError
from dispatcher.web.dependencies import ConfigDep, ReceiptsDep, SettingsDep, SignerDep
from dispatcher.web.html import link_problem, render_page
from dispatcher.web.security import Rejected, check_bounce_signature, parse_form

router = APIRouter()

_BOUNCE_TYPES = {"hard", "soft"}


def _bad_unsubscribe_link() -> HTMLResponse:
    return link_problem(
        400,
        "This unsubscribe link is not valid",
        "The link may have been cut off. Use the unsubscribe link in the latest e-mail, or reply to it.",
        "链接无效，可能不完整。请使用最新邮件中的退订链接。",
    )


def _gone_unsubscribe_link() -> HTMLResponse:
    return link_problem(
        410,
        "This unsubscribe link has expired",
        "The e-mail it came from is no longer on file. Use the unsubscribe link in a newer e-mail.",
        "该链接已失效，请使用较新邮件中的退订链接。",
    )


def _org(config: Config) -> tuple[str, str]:
    names = config.organisation
    return names.name_for("en-US"), names.name_for("zh-CN")


@router.get("/email/unsubscribe/{token}")
async def unsubscribe_page(request: Request, token: str, signer: SignerDep, receipts: ReceiptsDep,
                           config: ConfigDep) -> Response:
    try:
        message_id = signer.verify_unsubscribe_token(token)
    except LinkError:
        request.state.result = "bad_token"
        return _bad_unsubscribe_link()
    if await run_in_threadpool(receipts.message_for_link, message_id) is None:
        request.state.result = "unknown_message"
        return _gone_unsubscribe_link()
    org, org_zh = _org(config)
    request.state.result = "page"
    return render_page("unsubscribe_confirm.html", "Unsubscribe", org=org, org_zh=org_zh)


@router.post("/email/unsubscribe/{token}")
async def unsubscribe_one_click(request: Request, token: str, signer: SignerDep, receipts: ReceiptsDep,
                                config: ConfigDep) -> Response:
    # RFC 8058: the body is "List-Unsubscribe=One-Click"; the token alone authorises it,
    # so a mail provider's POST without that body is honoured too.
    try:
        message_id = signer.verify_unsubscribe_token(token)
    except LinkError:
        request.state.result = "bad_token"
        return _bad_unsubscribe_link()
    cases = await run_in_threadpool(receipts.unsubscribe_email, message_id)
    if cases is None:
        request.state.result = "unknown_message"
        return _gone_unsubscribe_link()
    org, org_zh = _org(config)
    request.state.result = "unsubscribed"
    return render_page("unsubscribed.html", "Unsubscribed", org=org, org_zh=org_zh)


@router.post("/email/bounce")
async def bounce(request: Request, settings: SettingsDep, receipts: ReceiptsDep) -> Response:
    body = await request.body()
    check_bounce_signature(settings.signing_key, body, request)
    params = parse_form(body, request.headers.get("content-type"))
    return_path = (params.get("return_path") or "").strip()
    kind = (params.get("type") or "").strip().lower()
    if not return_path or len(return_path) > 320 or kind not in _BOUNCE_TYPES:
        raise Rejected(400, "bad_request", "a bounce needs return_path and type (hard|soft)")
    outcome = await run_in_threadpool(receipts.bounce, return_path, kind, params.get("diagnostic"))
    request.state.result = outcome.result
    return JSONResponse({"result": outcome.result, "message_id": outcome.message_id})
