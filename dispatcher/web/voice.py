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
#: How often an invalid menu choice is answered with the menu again (and a date or its
#: confirmation asked again).
MENU_RETRIES = 2
#: Seconds <Gather> waits for the keys of a date.
DATE_TIMEOUT = 10

_TEXT: dict[str, dict[str, str]] = {
    "en-US": {
        "options": (
            "Press 1 to receive a payment link by text message. Press 2 to promise to pay by a date you choose."
            " Press 3 to speak to an agent. Press 4 to receive a link by text message where you can pay,"
            " promise a date or set up a repayment plan. Press 9 to stop these calls."
        ),
        "date_prompt": (
            "Please enter the date by which you will pay, as four digits: two for the month, then two for the"
            " day. For example, for {example}, press {keys}. You can choose any date from today to {last}."
        ),
        "date_invalid": "Sorry, that is not a date from today to {last}.",
        "date_none": "We did not receive a date.",
        "date_confirm": "You will pay by {date}. Press 1 to confirm, or press 2 to enter another date.",
        "date_failed": "We could not record a date. Please call us on {phone}. Goodbye.",
        "self_service_sent": (
            "We have sent a link to this phone by text message. With it you can pay, promise a date or set up"
            " a repayment plan. Thank you. Goodbye."
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
        "options": (
            "获取短信还款链接请按1；选择日期承诺还款请按2；转人工客服请按3；"
            "通过短信获取自助服务链接，可还款、承诺还款日期或申请分期，请按4；不再接收此类来电请按9。"
        ),
        "date_prompt": (
            "请输入您承诺还款的日期，共四位数字：两位月份，再加两位日期。例如{example}，请按{keys}。"
            "可选择今天至{last}之间的任一日期。"
        ),
        "date_invalid": "抱歉，这不是今天至{last}之间的日期。",
        "date_none": "我们没有收到日期。",
        "date_confirm": "您承诺在{date}前还款。确认请按1，重新输入日期请按2。",
        "date_failed": "未能记录还款日期，请拨打{phone}联系我们。再见。",
        "self_service_sent": "自助服务链接已通过短信发送到本机，您可在链接中还款、承诺还款日期或申请分期。谢谢，再见。",
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
    return spoken_day(day, ctx.locale)


def spoken_day(day: dt.date, locale: str | None) -> str:
    """A date as it is read out: `December 14` / `12月14日` (the caller knows the year)."""
    if language(locale) == "zh-CN":
        return f"{day.month}月{day.day}日"
    return f"{day:%B} {day.day}"


def keypad_date(day: dt.date) -> str:
    """The four keys of `day` on the keypad: month, then day (`1214`)."""
    return f"{day.month:02d}{day.day:02d}"


def parse_keypad_date(digits: str, first: dt.date, last: dt.date) -> dt.date | None:
    """The date a caller keyed in as MMDD (month, then day: the order both zh-CN and
    en-US say a date in), in the window `first`..`last` (the debtor's local dates); its
    year is the first one that puts it on or after `first`. None: not four digits, no
    such day, or outside the window."""
    if len(digits) != 4 or not digits.isdigit():
        return None
    month, day = int(digits[:2]), int(digits[2:])
    for year in (first.year, first.year + 1):
        try:
            candidate = dt.date(year, month, day)
        except ValueError:
            return None
        if candidate >= first:
            return candidate if candidate <= last else None
    return None


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


def script_and_options(ctx: CallContext, action_url: str, *, retry_text: bool = False,
                       with_script: bool = True) -> str:
    """Identity confirmed: the script (amount, penalty explanation), then the menu."""
    response = VoiceResponse()
    if with_script:
        _say(response, ctx.parts.get("script") or _t(ctx.locale, "script", phone=ctx.support_phone), ctx.locale)
    if retry_text:
        _say(response, _t(ctx.locale, "invalid"), ctx.locale)
    gather = Gather(num_digits=1, action=action_url, method="POST", timeout=GATHER_TIMEOUT)
    _say(gather, _t(ctx.locale, "options"), ctx.locale)
    response.append(gather)
    _say(response, _t(ctx.locale, "no_choice"), ctx.locale)
    response.hangup()
    return _xml(response)


def link_sent(ctx: CallContext, sent: bool) -> str:
    if sent:
        return _hangup(_t(ctx.locale, "link_sent"), ctx.locale)
    return _hangup(_t(ctx.locale, "link_failed", phone=ctx.support_phone), ctx.locale)


def promise_noted(ctx: CallContext, day: dt.date) -> str:
    """The promise is recorded: say the date back, then goodbye."""
    return _hangup(_t(ctx.locale, "promise", date=spoken_day(day, ctx.locale)), ctx.locale)


def ask_promise_date(ctx: CallContext, action_url: str, last: dt.date, *, problem: str | None = None) -> str:
    """Option 2: ask for the date (four keys, month then day; `#` ends early), with the
    last date the caller may choose and an example of it. `problem` (`invalid`, `none`)
    says first what was wrong with the previous try."""
    response = VoiceResponse()
    if problem == "invalid":
        _say(response, _t(ctx.locale, "date_invalid", last=spoken_day(last, ctx.locale)), ctx.locale)
    elif problem == "none":
        _say(response, _t(ctx.locale, "date_none"), ctx.locale)
    gather = Gather(num_digits=4, finish_on_key="#", action=action_url, method="POST", timeout=DATE_TIMEOUT,
                    action_on_empty_result=True)
    keys = " ".join(keypad_date(last))
    _say(gather, _t(ctx.locale, "date_prompt", example=spoken_day(last, ctx.locale), keys=keys,
                    last=spoken_day(last, ctx.locale)), ctx.locale)
    response.append(gather)
    return _xml(response)


def confirm_promise_date(ctx: CallContext, action_url: str, day: dt.date) -> str:
    """Read the date back: 1 confirms it, 2 asks again (no key: the gather's action decides)."""
    response = VoiceResponse()
    gather = Gather(num_digits=1, action=action_url, method="POST", timeout=GATHER_TIMEOUT,
                    action_on_empty_result=True)
    _say(gather, _t(ctx.locale, "date_confirm", date=spoken_day(day, ctx.locale)), ctx.locale)
    response.append(gather)
    return _xml(response)


def promise_failed(ctx: CallContext) -> str:
    """No usable date after the retries: nothing recorded, the support number, goodbye."""
    return _hangup(_t(ctx.locale, "date_failed", phone=ctx.support_phone), ctx.locale)


def self_service_sent(ctx: CallContext, sent: bool) -> str:
    """Option 4: the self-service link was queued, or could not be (the support number)."""
    if sent:
        return _hangup(_t(ctx.locale, "self_service_sent"), ctx.locale)
    return _hangup(_t(ctx.locale, "link_failed", phone=ctx.support_phone), ctx.locale)


def connect_agent(ctx: CallContext, available: bool) -> str:
    if not available:
        return _hangup(_t(ctx.locale, "agent_closed", phone=ctx.support_phone), ctx.locale)
    response = VoiceResponse()
    _say(response, _t(ctx.locale, "agent"), ctx.locale)
    response.dial("".join(ctx.support_phone.split()))
    return _xml(response)


def calls_stopped(ctx: CallContext) -> str:
    return _hangup(_t(ctx.locale, "stopped"), ctx.locale)
