"""Twilio webhooks (SPEC section 6, contract paths): status callbacks, inbound SMS and
the IVR. Every request is checked against `X-Twilio-Signature` before anything else
is read from it; a failed check is a 403 that changes nothing.

The handlers are bound to their collaborators (`TwilioHooks(receipts, config,
settings)`) rather than taking FastAPI dependencies: they are most of the traffic and
are served on a fast path outside FastAPI (`web.app.WebApp`), where no dependency
injection runs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from dispatcher.config import Config
from dispatcher.domain import Channel
from dispatcher.policy.replies import is_machine
from dispatcher.services.receipts import CallContext, Receipts
from dispatcher.settings import Settings
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


Endpoint = Callable[[Request], Awaitable[Response]]


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


class TwilioHooks:
    """The Twilio webhook handlers of one app."""

    def __init__(self, receipts: Receipts, config: Config, settings: Settings) -> None:
        self.receipts = receipts
        self.config = config
        self.public_url = settings.public_url
        # no token, no validator: every request is refused (403)
        token = settings.twilio_auth_token
        self.validator = RequestValidator(token) if token else None

    def endpoints(self) -> dict[str, Endpoint]:
        """Path (contract) -> handler, for the fast path and the router alike; each
        is a POST with a form body."""
        return {
            "/twilio/sms/status": self.sms_status,
            "/twilio/voice/status": self.voice_status,
            "/twilio/sms/inbound": self.sms_inbound,
            "/twilio/voice/answer": self.voice_answer,
            "/twilio/voice/gather": self.voice_gather,
        }

    def routes(self) -> list[Route]:
        """The same handlers as Starlette routes (what a request off the fast path meets:
        e.g. a GET gets 405)."""
        return [Route(path, endpoint, methods=["POST"]) for path, endpoint in self.endpoints().items()]

    async def verified_form(self, request: Request) -> FormParams:
        """The request's form fields, after the signature check (403) and parsing (400)."""
        params = parse_form(await request.body(), request.headers.get("content-type"))
        check_twilio_signature(self.validator, public_request_url(self.public_url, request), params, request)
        return params

    # -------------------------------------------------------------------- status

    async def _status(self, request: Request, channel: Channel) -> Response:
        params = await self.verified_form(request)
        if channel is Channel.SMS:
            sid = _sid(params, "MessageSid", "SmsSid")
            status = params.get("MessageStatus") or params.get("SmsStatus")
        else:
            sid = _sid(params, "CallSid")
            status = params.get("CallStatus")
        if not sid or not status or len(status) > 40:
            raise Rejected(400, "bad_request", "status callback without an id or a status")
        outcome = await self.receipts.apply_status_async(
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

    async def sms_status(self, request: Request) -> Response:
        """POST /twilio/sms/status: an SMS's delivery status."""
        return await self._status(request, Channel.SMS)

    async def voice_status(self, request: Request) -> Response:
        """POST /twilio/voice/status: a call's progress (and answering-machine detection)."""
        return await self._status(request, Channel.VOICE)

    # -------------------------------------------------------------------- inbound SMS

    async def sms_inbound(self, request: Request) -> Response:
        """POST /twilio/sms/inbound: a debtor's reply (STOP, PAID, HELP, free text ...)."""
        params = await self.verified_form(request)
        sid = _sid(params, "MessageSid", "SmsSid")
        sender = (params.get("From") or "").strip()
        if not sid or not sender:
            raise Rejected(400, "bad_request", "inbound SMS without MessageSid or From")
        outcome = await run_in_threadpool(self.receipts.inbound_sms, sid, sender, params.get("Body") or "")
        request.state.result = "duplicate" if outcome.duplicate else outcome.intent.value
        return twiml(EMPTY_TWIML)

    # -------------------------------------------------------------------- IVR

    def _gather_url(self, message_id: int, step: str, attempt: int = 0, day: dt.date | None = None) -> str:
        suffix = f"&try={attempt}" if attempt else ""
        if day is not None:  # the date being confirmed: Twilio's signature covers the URL
            suffix += f"&d={day.isoformat()}"
        return f"{self.public_url}/twilio/voice/gather?m={message_id}&step={step}{suffix}"

    async def voice_answer(self, request: Request) -> Response:
        """POST /twilio/voice/answer: the call was answered; TwiML for a machine or a person."""
        params = await self.verified_form(request)
        receipts = self.receipts
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
        return twiml(voice.identity_check(ctx, self._gather_url(ctx.message_id, "identity")))

    async def _promise_step(self, request: Request, ctx: CallContext, step: str, digits: str) -> Response:
        """Option 2: the date keyed in (MMDD, in the window, else asked again up to
        `MENU_RETRIES` times), then read back: 1 records the promise, 2 asks again."""
        receipts = self.receipts
        await run_in_threadpool(receipts.record_keypress, ctx, step, digits)
        attempt = (_query_int(request, "try") or 0) + 1
        first, last = await run_in_threadpool(receipts.promise_window, ctx)
        if step == "date":
            day = voice.parse_keypad_date(digits, first, last)
            if day is not None:
                request.state.result = "date_entered"
                return twiml(voice.confirm_promise_date(ctx, self._gather_url(ctx.message_id, "confirm", day=day), day))
            request.state.result = "date_invalid" if digits else "date_missing"
            if attempt > voice.MENU_RETRIES:
                return twiml(voice.promise_failed(ctx))
            return twiml(voice.ask_promise_date(ctx, self._gather_url(ctx.message_id, "date", attempt), last,
                                                problem="invalid" if digits else "none"))
        try:
            day = dt.date.fromisoformat(request.query_params.get("d", ""))
        except ValueError:
            request.state.result = "bad_step"
            return twiml(voice.goodbye(ctx))
        if digits == "1":
            promised = await run_in_threadpool(receipts.promise_to_pay, ctx, day)
            request.state.result = "promise" if promised is not None else "date_expired"
            if promised is None:  # the call crossed midnight: the date left the window
                return twiml(voice.ask_promise_date(ctx, self._gather_url(ctx.message_id, "date"), last,
                                                    problem="invalid"))
            return twiml(voice.promise_noted(ctx, promised))
        if digits == "2":
            request.state.result = "date_again"
            return twiml(voice.ask_promise_date(ctx, self._gather_url(ctx.message_id, "date"), last))
        request.state.result = "confirm_invalid"
        if attempt > voice.MENU_RETRIES:
            return twiml(voice.promise_failed(ctx))
        return twiml(voice.confirm_promise_date(ctx, self._gather_url(ctx.message_id, "confirm", attempt, day), day))

    async def voice_gather(self, request: Request) -> Response:
        """POST /twilio/voice/gather: a keypress of the IVR (identity, then the menu)."""
        params = await self.verified_form(request)
        receipts = self.receipts
        ctx = await run_in_threadpool(receipts.call_context, _query_int(request, "m"))
        if ctx is None:
            request.state.result = "orphan"
            return twiml(voice.unknown_call())
        step = request.query_params.get("step", "")
        digits = (params.get("Digits") or "").strip()[:8]

        if step == "identity":
            confirmed = digits == "1"
            await run_in_threadpool(receipts.record_keypress, ctx, "identity", digits, identity_confirmed=confirmed)
            request.state.result = "identity_confirmed" if confirmed else "identity_refused"
            if not confirmed:
                return twiml(voice.goodbye(ctx))
            return twiml(voice.script_and_options(ctx, self._gather_url(ctx.message_id, "options")))

        if step == "options":
            await run_in_threadpool(receipts.record_keypress, ctx, "options", digits)
            request.state.result = f"option_{digits}" if digits in {"1", "2", "3", "4", "9"} else "option_invalid"
            if digits == "1":
                queued = await run_in_threadpool(receipts.send_payment_link, ctx)
                return twiml(voice.link_sent(ctx, queued is not None))
            if digits == "2":
                _first, last = await run_in_threadpool(receipts.promise_window, ctx)
                return twiml(voice.ask_promise_date(ctx, self._gather_url(ctx.message_id, "date"), last))
            if digits == "4":
                queued = await run_in_threadpool(receipts.send_self_service_link, ctx)
                return twiml(voice.self_service_sent(ctx, queued is not None))
            if digits == "3":
                available = receipts.agent_available(ctx)
                if not available:  # a collector calls back (`call_back` task)
                    await run_in_threadpool(receipts.request_call_back, ctx)
                return twiml(voice.connect_agent(ctx, available))
            if digits == "9":
                await run_in_threadpool(receipts.stop_calls, ctx)
                return twiml(voice.calls_stopped(ctx))
            attempt = (_query_int(request, "try") or 0) + 1
            if attempt > voice.MENU_RETRIES:
                return twiml(voice.goodbye(ctx))
            url = self._gather_url(ctx.message_id, "options", attempt)
            return twiml(voice.script_and_options(ctx, url, retry_text=True, with_script=False))

        if step in ("date", "confirm"):
            return await self._promise_step(request, ctx, step, digits)

        request.state.result = "bad_step"
        return twiml(voice.goodbye(ctx))
