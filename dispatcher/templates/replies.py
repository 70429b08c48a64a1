"""The automatic SMS replies: what the debtor asked for, written as templates.

An opt-out (STOP) and an opt-in (START) are confirmed, HELP is answered, option 1
of a call texts the payment link and option 4 the link to the debtor's self-service
page. Their words are templates like every other message, so compliance approves
them and lint checks them; they live under
``templates/sms/replies/<name>.<locale>.j2`` and their ids are ``sms/replies/<name>``.
``replies`` is a reserved folder name, not a stage: the replies are never chosen by
the planner or offered for one-off sends.

A reply sees only what it needs (`REPLY_CONTEXT_KEYS`): no amount, no penalty, no case
data. Lint holds each one to the rules that fit it (`REPLIES`): the organisation's name,
how to stop where the debtor is still subscribed, the link in the link reply, and the
SMS segment limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from dispatcher.config import Config
from dispatcher.domain import Channel
from dispatcher.templates.context import opt_out_text
from dispatcher.templates.rendering import REPLIES_FOLDER


@dataclass(frozen=True, slots=True)
class ReplySpec:
    """One automatic reply: its name (the file's variant) and what its text must contain."""

    name: str
    required: tuple[str, ...]
    with_link: bool = False

    @property
    def template_id(self) -> str:
        return f"{Channel.SMS.value}/{REPLIES_FOLDER}/{self.name}"


#: The opt-out confirmation needs no opt-out instruction (the number is already out):
#: it says how to come back instead, in words the lint cannot check.
OPT_OUT = ReplySpec("opt_out", ("org_name",))
#: The confirmation of a revocation phrase about calls too ("stop calling", "不要再打").
OPT_OUT_CALLS = ReplySpec("opt_out_calls", ("org_name",))
OPT_IN = ReplySpec("opt_in", ("org_name", "opt_out"))
HELP = ReplySpec("help", ("org_name", "support_phone", "opt_out"))
PAYMENT_LINK = ReplySpec("payment_link", ("org_name", "payment_link", "opt_out"), with_link=True)
#: Option 4 of a call: the link to the debtor's own page (pay, promise a date, choose a plan).
SELF_SERVICE = ReplySpec("self_service", ("org_name", "payment_link", "opt_out"), with_link=True)

REPLIES: dict[str, ReplySpec] = {
    spec.name: spec for spec in (OPT_OUT, OPT_OUT_CALLS, OPT_IN, HELP, PAYMENT_LINK, SELF_SERVICE)
}
#: The replies a caller asks for by a keypress: checked by the gate (`Gate.decide_requested`)
#: when asked for and again just before sending, unlike the confirmations.
REQUESTED_LINKS = frozenset({PAYMENT_LINK.template_id, SELF_SERVICE.template_id})

#: Every name a reply may use (`payment_link` only in the link reply).
REPLY_CONTEXT_KEYS = frozenset({"locale", "org_name", "support_phone", "opt_out", "payment_link"})


def build_reply_context(
    config: Config, jurisdiction: str | None, locale: str, *, payment_link: str | None = None
) -> dict[str, str]:
    """The variables of a reply in `locale`, for a debtor of profile `jurisdiction`
    (unknown: no support number). `payment_link` only for the link reply."""
    profile = config.jurisdictions.get(jurisdiction or "")
    context = {
        "locale": locale,
        "org_name": config.organisation.name_for(locale),
        "support_phone": profile.support_phone if profile else "",
        "opt_out": opt_out_text(Channel.SMS, locale, None),
    }
    if payment_link is not None:
        context["payment_link"] = payment_link
    return context
