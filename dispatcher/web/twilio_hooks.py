"""Twilio webhooks (SPEC section 6, contract paths): status callbacks, inbound SMS and
the IVR. Every request is checked against `X-Twilio-Signature` before anything else
is read from it; a failed check is a 403 that changes nothing."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dispatcher.domain import Channel
from dispatcher.policy.replies import is_machine
from dispatcher.services.receipts import Receipts
from dispatcher.web import voice
from dispatcher.web.security import (
    FormParams,
    Rejected,
    check_twilio_signature,
    parse_form,
    public_request_url,
)

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'

#: Twilio id fields are short ASCII; anything longer is not from Twilio.
_MAX_SID = 64


def twiml(body: str) -> Response:
    return Response(content=body, media_type="text/xml")


async def verified_form(request: Request) -> FormParams:
    """The request's form fields, after the signature check (403) and parsing (400)."""
    params = parse_form(await request.body(), request.headers.get("content-type"))
    state = request.app.state
    check_twilio_signature(state.validator, public_request_url(state.settings.public_url, request), params, request)
    return params


def _query_int(request: Request, name: str) -> int | None:
    values = request.query_params.getlist(name)
    if len(values) != 1:
        return None
    value = values[0]
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        return None
    return int(value)


def _sid(params: FormParams, *names: str) -> str | None:
    for name in names:
        value = (params.get(name) or "").strip()
        if value:
            if len(value) > _MAX_SID or not value.isascii():
                raise Rejected(400, "bad_request", f"{name} is not a provider id")
            return value
    return None


def _receipts(request: Request) -> Receipts:
    return request.app.state.receipts  # type: ignore[no-any-return]


# ------------------------------------------------------------------------ status


async def _status(request: Request, channel: Channel) -> Response:
    params = await verified_form(request)
    if channel is Channel.SMS:
        sid = _sid(params, "MessageSid", "SmsSid")
        status = params.get("MessageStatus") or params.get("SmsStatus")
    else:
        sid = _sid(params, "CallSid")
        status = params.get("CallStatus")
    if not sid or not status or len(status) > 40:
        raise Rejected(400, "bad_request", "status callback without an id or a status")
    outcome = await _receipts(request).apply_status_async(
        channel,
        sid,
        status,
        _query_int(request, "m"),
        answered_by=params.get("AnsweredBy"),
        error_code=params.get("ErrorCode"),
        duration=params.get("CallDuration"),
    )
    request.state.result = outcome.result
    return twiml(EMPTY_TWIML)


async def sms_status(request: Request) -> Response:
    return await _status(request, Channel.SMS)


async def voice_status(request: Request) -> Response:
    return await _status(request, Channel.VOICE)


# ------------------------------------------------------------------------ inbound SMS


async def sms_inbound(request: Request) -> Response:
    params = await verified_form(request)
    sid = _sid(params, "MessageSid", "SmsSid")
    sender = (params.get("From") or "").strip()
    if not sid or not sender:
        raise Rejected(400, "bad_request", "inbound SMS without MessageSid or From")
    outcome = await run_in_threadpool(_receipts(request).inbound_sms, sid, sender, params.get("Body") or "")
    request.state.result = "duplicate" if outcome.duplicate else outcome.intent.value
    return twiml(EMPTY_TWIML)


# ------------------------------------------------------------------------ IVR


def _gather_url(request: Request, message_id: int, step: str, attempt: int = 0) -> str:
    base = request.app.state.settings.public_url
    suffix = f"&try={attempt}" if attempt else ""
    return f"{base}/twilio/voice/gather?m={message_id}&step={step}{suffix}"


async def voice_answer(request: Request) -> Response:
    params = await verified_form(request)
    receipts = _receipts(request)
    ctx = await run_in_threadpool(receipts.call_context, _query_int(request, "m"))
    if ctx is None:
        request.state.result = "orphan"
        return twiml(voice.unknown_call())
    answered_by = (params.get("AnsweredBy") or "").strip() or None
    call_sid = _sid(params, "CallSid")
    if is_machine(answered_by):
        await run_in_threadpool(receipts.record_answer, ctx, call_sid, answered_by, "voicemail")
        request.state.result = "voicemail"
        return twiml(voice.voicemail(ctx))
    # no AnsweredBy (detection off, or asynchronous): a status callback may bring it later
    await run_in_threadpool(receipts.record_answer, ctx, call_sid, answered_by, "identity_check")
    request.state.result = "identity_check"
    return twiml(voice.identity_check(ctx, _gather_url(request, ctx.message_id, "identity")))


async def voice_gather(request: Request) -> Response:
    params = await verified_form(request)
    receipts = _receipts(request)
    ctx = await run_in_threadpool(receipts.call_context, _query_int(request, "m"))
    if ctx is None:
        request.state.result = "orphan"
        return twiml(voice.unknown_call())
    step = request.query_params.get("step", "")
    digits = (params.get("Digits") or "").strip()[:8]
    config = request.app.state.config
    promise_days = config.replies.promise_to_pay_days

    if step == "identity":
        confirmed = digits == "1"
        await run_in_threadpool(receipts.record_keypress, ctx, "identity", digits, identity_confirmed=confirmed)
        request.state.result = "identity_confirmed" if confirmed else "identity_refused"
        if not confirmed:
            return twiml(voice.goodbye(ctx))
        return twiml(voice.script_and_options(ctx, _gather_url(request, ctx.message_id, "options"), promise_days))

    if step == "options":
        await run_in_threadpool(receipts.record_keypress, ctx, "options", digits)
        request.state.result = f"option_{digits}" if digits in {"1", "2", "3", "9"} else "option_invalid"
        if digits == "1":
            queued = await run_in_threadpool(receipts.send_payment_link, ctx)
            return twiml(voice.link_sent(ctx, queued is not None))
        if digits == "2":
            until = await run_in_threadpool(receipts.promise_to_pay, ctx)
            return twiml(voice.promise_noted(ctx, until))
        if digits == "3":
            return twiml(voice.connect_agent(ctx, receipts.agent_available(ctx)))
        if digits == "9":
            await run_in_threadpool(receipts.stop_calls, ctx)
            return twiml(voice.calls_stopped(ctx))
        attempt = (_query_int(request, "try") or 0) + 1
        if attempt > voice.MENU_RETRIES:
            return twiml(voice.goodbye(ctx))
        url = _gather_url(request, ctx.message_id, "options", attempt)
        return twiml(voice.script_and_options(ctx, url, promise_days, retry_text=True, with_script=False))

    request.state.result = "bad_step"
    return twiml(voice.goodbye(ctx))


routes = [
    Route("/twilio/sms/status", sms_status, methods=["POST"]),
    Route("/twilio/voice/status", voice_status, methods=["POST"]),
    Route("/twilio/sms/inbound", sms_inbound, methods=["POST"]),
    Route("/twilio/voice/answer", voice_answer, methods=["POST"]),
    Route("/twilio/voice/gather", voice_gather, methods=["POST"]),
]

#: Served without FastAPI's middleware stack and router (see `web.app.DispatcherApp`):
#: every Twilio webhook is a POST with a form body and the same error handling.
fast_routes = {route.path: route.endpoint for route in routes}
