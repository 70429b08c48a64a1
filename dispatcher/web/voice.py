"""The IVR script as TwiML, built in code (SPEC section 6 and 7).

The message's rendered voice blocks (`identity`, `script`, `voicemail`, approved
templates) carry what is said about the debtor; the menu and the closing sentences are
fixed here, in both locales, and never name a debt: they may be heard by someone who is
not the debtor until the identity is confirmed.
"""

from __future__ import annotations

import datetime as dt

from twilio.twiml.voice_response import Gather, VoiceResponse

from dispatcher.policy.zones import zone_info
from dispatcher.services.receipts import CallContext

#: Seconds <Gather> waits for a key.
GATHER_TIMEOUT = 6
#: How often an invalid menu choice is answered with the menu again.
MENU_RETRIES = 2

_TEXT: dict[str, dict[str, str]] = {
    "en-US": {
        "options": (
            "Press 1 to receive a payment link by text message. Press 2 to promise to pay within {days} days."
            " Press 3 to speak to an agent. Press 9 to stop these calls."
        ),
        "link_sent": "We have sent a payment link to this phone by text message. Thank you. Goodbye.",
        "link_failed": "We could not send a text message to this number. Please call us on {phone}. Goodbye.",
        "promise": "Thank you. We have noted your promise to pay by {date}. Goodbye.",
        "agent": "Please hold while we connect you to an agent.",
        "agent_closed": "Our agents are not available right now. Please call us back on {phone}. Goodbye.",
        "stopped": "You will not receive any more calls from us at this number. Goodbye.",
        "invalid": "Sorry, that is not a valid choice.",
        "no_choice": "We did not receive a choice. Goodbye.",
        "goodbye": "Sorry to have disturbed you. Goodbye.",
        "unknown_call": "Sorry, this call cannot continue. Goodbye.",
        "identity": "Please press 1 if you are the person we are calling for.",
        "voicemail": "Hello, this is a message from {org}. Please call us back on {phone}. Thank you.",
        "script": "Please call us on {phone} about your account.",
    },
    "zh-CN": {
        "options": "获取短信还款链接请按1；承诺在{days}天内还款请按2；转人工客服请按3；不再接收此类来电请按9。",
        "link_sent": "还款链接已通过短信发送到本机。谢谢，再见。",
        "link_failed": "无法向本号码发送短信，请拨打{phone}联系我们。再见。",
        "promise": "谢谢。我们已记录您承诺于{date}前还款。再见。",
        "agent": "正在为您转接人工客服，请稍候。",
        "agent_closed": "现在不是人工服务时间，请稍后回拨{phone}。再见。",
        "stopped": "我们将不再拨打此号码。再见。",
        "invalid": "抱歉，您的输入无效。",
        "no_choice": "我们没有收到您的选择。再见。",
        "goodbye": "抱歉打扰您了，再见。",
        "unknown_call": "抱歉，本次通话无法继续。再见。",
        "identity": "如果您是我们要找的本人，请按1。",
        "voicemail": "您好，这里是{org}。请回拨{phone}。谢谢。",
        "script": "请拨打{phone}咨询您的账户。",
    },
}


def language(locale: str | None) -> str:
    """The <Say language> of a locale: zh-CN or en-US."""
    return "zh-CN" if (locale or "").lower().startswith("zh") else "en-US"


def _t(locale: str | None, key: str, **values: object) -> str:
    return _TEXT[language(locale)][key].format(**values)


def _xml(response: VoiceResponse) -> str:
    return str(response)


def _say(target: VoiceResponse | Gather, text: str, locale: str | None) -> None:
    target.say(text, language=language(locale))


def _local_date(when: dt.datetime, ctx: CallContext) -> str:
    zone = ctx.zones[0] if ctx.zones else "UTC"
    try:
        day = when.astimezone(zone_info(zone)).date()
    except (ValueError, KeyError, OSError):
        day = when.date()
    if language(ctx.locale) == "zh-CN":
        return f"{day.month}月{day.day}日"
    return f"{day:%B} {day.day}"


def _hangup(text: str, locale: str | None) -> str:
    response = VoiceResponse()
    _say(response, text, locale)
    response.hangup()
    return _xml(response)


def unknown_call(locale: str | None = None) -> str:
    """A call we cannot place: a neutral goodbye."""
    return _hangup(_t(locale, "unknown_call"), locale)


def voicemail(ctx: CallContext) -> str:
    """Answering machine or fax: the limited-content voicemail block, then hang up."""
    text = ctx.parts.get("voicemail") or _t(ctx.locale, "voicemail", org=ctx.org_name, phone=ctx.support_phone)
    return _hangup(text, ctx.locale)


def identity_check(ctx: CallContext, action_url: str) -> str:
    """A person (or unknown): ask them to confirm who they are before anything else."""
    response = VoiceResponse()
    gather = Gather(num_digits=1, action=action_url, method="POST", timeout=GATHER_TIMEOUT)
    _say(gather, ctx.parts.get("identity") or _t(ctx.locale, "identity"), ctx.locale)
    response.append(gather)
    _say(response, _t(ctx.locale, "goodbye"), ctx.locale)  # no key pressed
    response.hangup()
    return _xml(response)


def goodbye(ctx: CallContext | None) -> str:
    """Identity not confirmed: a polite goodbye that names no debt."""
    locale = ctx.locale if ctx else None
    return _hangup(_t(locale, "goodbye"), locale)


def script_and_options(ctx: CallContext, action_url: str, promise_days: int, *, retry_text: bool = False,
                       with_script: bool = True) -> str:
    """Identity confirmed: the script (amount, penalty explanation), then the menu."""
    response = VoiceResponse()
    if with_script:
        _say(response, ctx.parts.get("script") or _t(ctx.locale, "script", phone=ctx.support_phone), ctx.locale)
    if retry_text:
        _say(response, _t(ctx.locale, "invalid"), ctx.locale)
    gather = Gather(num_digits=1, action=action_url, method="POST", timeout=GATHER_TIMEOUT)
    _say(gather, _t(ctx.locale, "options", days=promise_days), ctx.locale)
    response.append(gather)
    _say(response, _t(ctx.locale, "no_choice"), ctx.locale)
    response.hangup()
    return _xml(response)


def link_sent(ctx: CallContext, sent: bool) -> str:
    if sent:
        return _hangup(_t(ctx.locale, "link_sent"), ctx.locale)
    return _hangup(_t(ctx.locale, "link_failed", phone=ctx.support_phone), ctx.locale)


def promise_noted(ctx: CallContext, until: dt.datetime) -> str:
    return _hangup(_t(ctx.locale, "promise", date=_local_date(until, ctx)), ctx.locale)


def connect_agent(ctx: CallContext, available: bool) -> str:
    if not available:
        return _hangup(_t(ctx.locale, "agent_closed", phone=ctx.support_phone), ctx.locale)
    response = VoiceResponse()
    _say(response, _t(ctx.locale, "agent"), ctx.locale)
    response.dial("".join(ctx.support_phone.split()))
    return _xml(response)


def calls_stopped(ctx: CallContext) -> str:
    return _hangup(_t(ctx.locale, "stopped"), ctx.locale)
