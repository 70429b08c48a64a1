"""The console's languages: zh-CN and en-US, from Babel message catalogues.

The catalogues live in `web/locale/<ll_CC>/LC_MESSAGES/messages.po` and are compiled to
`messages.mo` next to them (both committed, so `pip install` ships them; `make messages`
extracts, updates and compiles them again — see the README's translators' section).
Pages mark text with `{{ _("...") }}` (`jinja2.ext.i18n`), Python code with
`translator(locale).gettext("...")`.

Which language a page is in: the signed-in user's stored choice (the header's
switcher), else the choice cookie of a browser not signed in yet, else the browser's
Accept-Language, else English.
"""

from __future__ import annotations

import functools
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.support import NullTranslations, Translations

#: The console's languages, as shown to people and stored on users (BCP 47).
LOCALES = ("zh-CN", "en-US")
DEFAULT_LOCALE = "en-US"
#: What the switcher shows for each language (in that language).
LOCALE_NAMES = {"zh-CN": "中文", "en-US": "English"}
#: The cookie that keeps the choice of a browser not signed in (the sign-in page).
LOCALE_COOKIE = "dispatcher_locale"

LOCALE_DIR = Path(__file__).resolve().parent / "locale"


def _gettext_name(locale: str) -> str:
    """`zh-CN` -> `zh_CN`, the directory name gettext and Babel use."""
    return locale.replace("-", "_")


@functools.cache
def translator(locale: str) -> NullTranslations:
    """The compiled catalogue of `locale` (English's msgstrs are empty: the source text)."""
    if locale not in LOCALES:
        return NullTranslations()
    return Translations.load(str(LOCALE_DIR), [_gettext_name(locale)], domain="messages")


def supported(value: str | None) -> str | None:
    """`value` as one of `LOCALES` if it names one of them (`zh`, `zh_cn`, `en` too), else None."""
    if not value:
        return None
    try:
        parsed = Locale.parse(value.strip().replace("-", "_"))
    except (ValueError, UnknownLocaleError):
        return None
    for locale in LOCALES:
        if parsed.language == locale.split("-")[0]:
            return locale
    return None


def from_accept_language(header: str | None) -> str | None:
    """The best of `LOCALES` for an Accept-Language header, or None."""
    if not header:
        return None
    wanted: list[tuple[float, str]] = []
    for position, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if tag and tag != "*" and quality > 0:
            wanted.append((-quality + position * 1e-6, tag.strip()))
    # a language is enough: zh-TW and zh-HK read the Chinese console, en-GB the English one
    return next((found for _, tag in sorted(wanted) if (found := supported(tag))), None)


def choose_locale(stored: str | None, cookie: str | None, accept_language: str | None) -> str:
    """The language of a page (see the module's docstring for the order)."""
    return supported(stored) or supported(cookie) or from_accept_language(accept_language) or DEFAULT_LOCALE


def N_(text: str) -> str:  # the name gettext tools look for
    """Mark `text` for the catalogue where it is defined; translate it where it is shown."""
    return text
