"""How every console page is rendered: the one place the console's Jinja environment
lives (the case pages, the queue, the reports and the template studio all render
through it), in the page's language.

There is one environment per language (`jinja2.ext.i18n` with that language's Babel
catalogue installed), so pages mark text with `{{ _("...") }}` and a request never
changes another's language. Times are shown with `{{ t | when(zone) }}`: the moment in
`zone` (the debtor's) with its offset, to the minute, in a `<time>` element whose
`datetime` lets the page's script show the collector's own time alongside.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from dispatcher.policy.zones import zone_info
from dispatcher.roles import Permission, Principal
from dispatcher.web.auth import SESSION_COOKIE, csrf_token
from dispatcher.web.i18n import LOCALE_COOKIE, LOCALE_NAMES, LOCALES, choose_locale, translator

PAGES = Path(__file__).resolve().parent / "pages"


def _moment(value: dt.datetime | str | None) -> dt.datetime | None:
    if value is None or value == "":
        return None
    moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def local_text(value: dt.datetime | str | None, zone: str) -> str:
    """`2026-12-07 10:00 +08:00`: the moment in `zone`, to the minute, with the offset."""
    moment = _moment(value)
    if moment is None:
        return ""
    local = moment.astimezone(zone_info(zone))
    offset = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M} {offset[:3]}:{offset[3:]}"


def when(value: dt.datetime | str | None, zone: str) -> Markup:
    """A `<time>` element: the debtor's local time; the page's script adds the reader's."""
    moment = _moment(value)
    if moment is None:
        return Markup("")
    utc = moment.astimezone(dt.UTC).isoformat(timespec="seconds")
    return Markup('<time datetime="{}" title="{}">{}</time>').format(utc, zone, local_text(moment, zone))


_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}:\d{2}|Z)$")


def detail(value: object, zone: str) -> object:
    """An event's detail value for people: an instant (ISO 8601 with an offset) in `zone`
    to the minute; a text with instants in it (a deferral's reason) as `explain` shows
    it; anything else as it is."""
    if isinstance(value, str) and _INSTANT.match(value):
        try:
            return local_text(value.replace("Z", "+00:00"), zone)
        except ValueError:
            return value
    if isinstance(value, str):
        return explain(value, zone)
    return value


#: Instants inside a decision's `detail` (its wording is the pure core's and the `plan`
#: contract's; only the page shows them otherwise): an ISO 8601 instant with an offset,
#: or a local time named by its zone, `Mon 2026-12-07 09:00 Asia/Shanghai` (the gate's
#: "next legal moment") and `07:00 Mon 2026-12-07 Asia/Shanghai` (why now is outside hours).
_DETAIL_INSTANT = re.compile(
    r"(?P<iso>\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2}))"
    r"|(?:\b(?P<before>\d{2}:\d{2}) )?\b(?P<weekday>Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?P<date>\d{4}-\d{2}-\d{2})"
    r"(?: (?P<after>\d{2}:\d{2}))? (?P<zone>UTC|[A-Za-z_]+(?:/[A-Za-z0-9_+-]+)+)\b"
)


def _zoned(found: re.Match[str]) -> dt.datetime | None:
    """The instant of a local time named by its zone, or None when the text is not one
    (a date without a time, an unknown zone) or the clock reading is ambiguous (the hour
    a summer time ends happens twice: the text stays as the core wrote it)."""
    clock = found["before"] or found["after"]
    if clock is None or (found["before"] and found["after"]):
        return None
    try:
        tz = zone_info(found["zone"])
        naive = dt.datetime.fromisoformat(f"{found['date']}T{clock}")
    except (ValueError, KeyError, LookupError):
        return None
    first, second = naive.replace(tzinfo=tz), naive.replace(tzinfo=tz, fold=1)
    if first.utcoffset() != second.utcoffset():
        return None
    return first


def explain(text: str | None, zone: str) -> Markup:
    """A decision's `detail` for the page: each instant in it as the page shows times
    (`when`: to the minute with the offset, the reader's own time on hover): an ISO
    instant in `zone` (the debtor's primary zone), a zone-named local time in its own
    zone, named when it is not `zone`. The rest of the text is escaped as it is."""
    if not text:
        return Markup("")
    out, end = [], 0
    for found in _DETAIL_INSTANT.finditer(text):
        if found["iso"]:
            try:
                shown = when(found["iso"].replace("Z", "+00:00"), zone)
            except ValueError:
                continue
        else:
            moment = _zoned(found)
            if moment is None:
                continue
            shown = Markup("{} {}").format(found["weekday"], when(moment, found["zone"]))
            if found["zone"] != zone:
                shown += Markup(" ({})").format(found["zone"])
        out.append(Markup.escape(text[end:found.start()]))
        out.append(shown)
        end = found.end()
    out.append(Markup.escape(text[end:]))
    return Markup("").join(out)


def local_date(value: dt.datetime | str | None, zone: str) -> str:
    moment = _moment(value)
    return "" if moment is None else moment.astimezone(zone_info(zone)).date().isoformat()


@functools.cache
def environment(locale: str) -> Environment:
    """The console's Jinja environment for one language (autoescaped HTML)."""
    env = Environment(loader=FileSystemLoader(PAGES), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.i18n"])
    env.install_gettext_translations(translator(locale), newstyle=True)  # type: ignore[attr-defined]
    env.filters["when"] = when
    env.filters["local_text"] = local_text
    env.filters["local_date"] = local_date
    env.filters["detail"] = detail
    env.filters["explain"] = explain
    env.globals.update(ui_locales=[(code, LOCALE_NAMES[code]) for code in LOCALES], ui_locale=locale)
    return env


def render(name: str, locale: str, status: int = 200, **values: Any) -> HTMLResponse:
    html = environment(locale).get_template(name).render(**values)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                                            "Content-Language": locale, "Vary": "Accept-Language"})


def page_locale(request: Request, principal: Principal | None = None) -> str:
    """The language of the page for this request (the user's, the browser's, English)."""
    return choose_locale(principal.locale if principal is not None else None, request.cookies.get(LOCALE_COOKIE),
                         request.headers.get("accept-language"))


def gettext_for(request: Request, principal: Principal | None = None) -> Any:
    """`gettext` in the request's language, for text made in Python (banners, errors)."""
    return translator(page_locale(request, principal)).gettext


def console_page(request: Request, principal: Principal, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    """A page for a signed-in user: their name, their language and the CSRF token every
    form carries (the sign-out button's and the language switcher's too)."""
    csrf = csrf_token(request.cookies.get(SESSION_COOKIE, ""))
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return render(name, page_locale(request, principal), status, user=principal.name, roles=sorted(principal.roles),
                  csrf=csrf, here=here if request.method == "GET" else "",
                  # the header's links, from the permissions their pages check (web.auth)
                  can_templates=principal.can(Permission.TEMPLATES_READ),
                  can_queue=principal.can(Permission.TASKS_WORK),
                  can_cases=principal.can(Permission.CASES_READ),
                  can_reports=principal.can(Permission.REPORTS_READ),
                  **values)

