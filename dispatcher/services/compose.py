"""What the sender hands a provider: a claimed row rendered from its approved template
(the case's locale, a short payment link minted for it, opt-out text, e-mail headers, VERP return path, the
status callback and TwiML URLs carrying the message id), or a system reply's stored body.
The rendered content is recorded (`Writes.rendered`) with the row."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from dispatcher.channels.base import OutboundMessage
from dispatcher.config import Config
from dispatcher.domain import PLAN_STAGE, CaseSnapshot, Channel
from dispatcher.links import LinkSigner
from dispatcher.policy.plans import plan_standing
from dispatcher.services.claims import Claimed, Writes
from dispatcher.services.links import link_url, links_base_url, token_row
from dispatcher.services.planner import zone_info
from dispatcher.templates import TemplateSet, build_context, opt_out_text, pick_locale
from dispatcher.templates.context import instalment_context
from dispatcher.templates.segments import sms_segments


class Composer:
    """Renders claimed rows into outbound messages, with one approved catalog per pass."""

    def __init__(self, config: Config, templates: TemplateSet, signer: LinkSigner, public_url: str) -> None:
        self.config = config
        self.templates = templates
        self.signer = signer
        self.public_url = public_url.rstrip("/")
        self.links_base = links_base_url(config, public_url)
        self._catalog_cache: Mapping[tuple[Channel, str, str], tuple[str, ...]] | None = None

    def new_pass(self) -> None:
        """Templates may have been edited or approved since the last pass."""
        self._catalog_cache = None

    def catalog(self) -> Mapping[tuple[Channel, str, str], tuple[str, ...]]:
        """The approved templates, read once per pass (it hashes every template file)."""
        if self._catalog_cache is None:
            self._catalog_cache = self.templates.approved_catalog()
        return self._catalog_cache

    def system_outbound(self, item: Claimed, snapshot: CaseSnapshot) -> OutboundMessage:
        profile = self.config.jurisdictions.get(snapshot.case.jurisdiction)
        return OutboundMessage(
            message_id=item.id,
            case_id=item.case_id,
            channel=item.channel,
            to=item.to_address or "",
            body=item.body or "",
            idempotency_key=f"m{item.id}",
            locale=snapshot.case.locale,
            sender=(profile.sms_from or None) if profile else None,
            messaging_service_sid=(profile.messaging_service_sid or None) if profile else None,
            status_callback=f"{self.public_url}/twilio/sms/status?m={item.id}",
        )

    def approved_locale(self, channel: Channel, template_id: str, case_locale: str, default: str) -> str:
        """`pick_locale(..., approved_only=True)` answered from this pass's approved
        catalog (it otherwise stats, reads and hashes the template file per message);
        `render(require_approved=True)` still checks the file it renders."""
        stage = template_id.split("/")[1] if template_id.count("/") == 2 else ""
        catalog = self.catalog()
        for locale in dict.fromkeys((case_locale, default)):
            if locale and template_id in catalog.get((channel, stage, locale), ()):
                return locale
        return pick_locale(self.templates, template_id, case_locale, default, approved_only=True)

    def _instalment(self, snapshot: CaseSnapshot, stage: str | None, today: dt.date,
                    locale: str) -> dict[str, Any] | None:
        """An instalment reminder's `instalment` variable: the plan's next unpaid one."""
        plan = snapshot.plan
        if stage != PLAN_STAGE or plan is None:
            return None
        nxt = plan_standing(plan, snapshot.case.paid_total, today, self.config.self_service.plan_grace_days).next_unpaid
        if nxt is None:
            return None
        return instalment_context(nxt.instalment.number, len(plan.instalments), nxt.instalment.due, nxt.remaining,
                                  snapshot.case.currency, locale)

    def render(self, item: Claimed, snapshot: CaseSnapshot, template_id: str, stage: str | None,
                now: dt.datetime, writes: Writes) -> OutboundMessage:
        case_ = snapshot.case
        profile = self.config.jurisdictions[case_.jurisdiction]
        zone = snapshot.zones[0] if snapshot.zones else profile.default_timezones[0]
        today = now.astimezone(zone_info(zone)).date()
        expires = now + dt.timedelta(days=self.config.links.payment_link_days)
        token = token_row(item.id, case_.case_id, now, expires)
        writes.links.append(token)
        payment_link = link_url(self.links_base, str(token["token"]))
        email = item.channel is Channel.EMAIL
        unsubscribe_url = (f"{self.public_url}/email/unsubscribe/{self.signer.unsubscribe_token(item.id)}"
                           if email else None)
        locale = self.approved_locale(item.channel, template_id, case_.locale, profile.default_locale)
        context = build_context(
            case_,
            config=self.config,
            channel=item.channel,
            today=today,
            payment_link=payment_link,
            opt_out=opt_out_text(item.channel, locale, unsubscribe_url),
            locale=locale,
            unsubscribe_url=unsubscribe_url,
            instalment=self._instalment(snapshot, stage or item.stage, today, locale),
        )
        rendered = self.templates.render(template_id, locale, context, require_approved=True)
        to = next((c.address for c in snapshot.contacts if c.channel is item.channel), None) or ""
        headers: dict[str, str] = {}
        return_path = message_ref = status_callback = voice_url = None
        sender: str | None
        if email:
            sender = self.config.organisation.email_from
            headers = {
                "List-Unsubscribe": f"<{unsubscribe_url}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            }
            return_path = self.signer.verp_address(item.id, self.config.organisation.bounce_domain)
            message_ref = f"<dispatcher-{item.id}@{self.config.organisation.bounce_domain}>"
        elif item.channel is Channel.SMS:
            sender = profile.sms_from or None
            status_callback = f"{self.public_url}/twilio/sms/status?m={item.id}"
        else:
            sender = profile.voice_from or None
            status_callback = f"{self.public_url}/twilio/voice/status?m={item.id}"
            voice_url = f"{self.public_url}/twilio/voice/answer?m={item.id}"
        writes.rendered.append({
            "b_id": item.id, "b_now": now, "b_template": template_id, "b_variant": rendered.variant, "b_locale": locale,
            "b_stage": stage or item.stage, "b_hash": rendered.content_hash, "b_subject": rendered.subject,
            "b_body": rendered.text, "b_html": rendered.html,
            # the IVR needs the voice blocks (identity, script, voicemail) when the call is
            # answered; an SMS or e-mail is all in body/subject/html already
            "b_parts": (json.dumps(dict(rendered.blocks), ensure_ascii=False)
                        if item.channel is Channel.VOICE and rendered.blocks else None),
            "b_to": to,
            "b_segments": sms_segments(rendered.text).segments if item.channel is Channel.SMS else None,
            "b_version": rendered.version,  # the approved version rendered: the message is pinned to it
        })
        return OutboundMessage(
            message_id=item.id,
            case_id=case_.case_id,
            channel=item.channel,
            to=to,
            body=rendered.text,
            idempotency_key=f"m{item.id}",
            locale=locale,
            subject=rendered.subject,
            html=rendered.html,
            sender=sender,
            messaging_service_sid=profile.messaging_service_sid or None,
            status_callback=status_callback,
            voice_url=voice_url,
            headers=headers,
            return_path=return_path,
            message_ref=message_ref,
        )
