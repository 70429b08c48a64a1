"""Builds the collaborators from `Settings`: the one wiring path of the composition root.

Every command of `cli.py`, the webhook server (`web.app.create_app_from_env`), the web
process of the demo (`web.process`) and the demo itself build their database engine,
configuration, compliance gate, clock, link signer, templates, channels, sender and
receipts service
here, one way (STYLE principle 5); everything else receives them in its constructor.

`Runtime` builds each part on first use (a command that only reads the configuration
never opens the database) and `close()` releases what it opened. A part that cannot be
built raises `SetupError` with what to set or check.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING

from dispatcher.clock import Clock, FakeClock, StartedClock, SystemClock, parse_instant
from dispatcher.config import Config, ConfigError, load_config
from dispatcher.settings import Settings

if TYPE_CHECKING:  # the heavy parts are imported when first built: `dispatcher --help` stays quick
    from sqlalchemy.engine import Engine

    from dispatcher.channels.base import ChannelAdapter
    from dispatcher.channels.guarded import Circuits
    from dispatcher.credentials import Passwords
    from dispatcher.domain import Channel
    from dispatcher.links import LinkSigner
    from dispatcher.policy import Gate
    from dispatcher.services.outbox import Sender
    from dispatcher.services.people import People
    from dispatcher.services.receipts import Receipts
    from dispatcher.services.template_versions import TemplateVersions
    from dispatcher.templates import TemplateSet
    from dispatcher.web.dependencies import WebCollaborators

#: The signing key of offline runs (file transport, sandbox); production must set its own.
DEV_SIGNING_KEY = "dev-only-signing-key"


class SetupError(Exception):
    """A collaborator cannot be built; the message says what to set or check.
    `usage` marks the operator's input (the configuration file) rather than the
    environment (database, secrets, providers)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def build_clock(settings: Settings, *, advancing: bool) -> Clock:
    """The system clock, or, with `now` set (DISPATCHER_NOW, --now), a clock that starts
    there: running on from it for a server (`advancing`), standing still for a one-shot
    command. Raises ValueError for an unreadable `now`."""
    if not settings.now:
        return SystemClock()
    start = parse_instant(settings.now)
    return StartedClock(start) if advancing else FakeClock(start)


def safe_url(url: str) -> str:
    """A database URL without its password (SQLAlchemy's own rendering)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@", 1)[-1]


class Runtime:
    """Everything a command or a server needs, built lazily from the settings.

    A part given here is used instead of being built: `config` replaces the file's (the
    demo raises its rate limits); an `engine` or `templates` given stays the caller's
    (tests share theirs) and is not closed by `close()`; `passwords` replaces the argon2
    parameters (tests use lighter ones)."""

    def __init__(self, settings: Settings, clock: Clock, *, config: Config | None = None,
                 engine: Engine | None = None, templates: TemplateSet | None = None,
                 passwords: Passwords | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self._given_config = config
        self._given_engine = engine
        self._given_templates = templates
        self._passwords = passwords
        self._closers: list[Callable[[], object]] = []

    @cached_property
    def config(self) -> Config:
        """The configuration file's content (validated)."""
        if self._given_config is not None:
            return self._given_config
        try:
            return load_config(self.settings.config_path)
        except ConfigError as exc:
            raise SetupError(str(exc), usage=True) from None

    @cached_property
    def gate(self) -> Gate:
        """The compliance gate, one per process: the planner, the sender, the one-off
        path and the web pages share its caches."""
        from dispatcher.policy import Gate

        return Gate(self.config)

    @cached_property
    def engine(self) -> Engine:
        """The database, its schema created or upgraded (disposed by `close()`)."""
        from dispatcher.store.db import ensure_schema, make_engine

        if self._given_engine is not None:
            return self._given_engine
        try:
            engine = make_engine(self.settings.db_url)
        except Exception as exc:  # noqa: BLE001 - a malformed URL: tell the operator what to check
            raise SetupError(f"cannot open the database {safe_url(self.settings.db_url)}: {exc}. "
                             "Check --db / DISPATCHER_DB_URL.") from None
        try:
            ensure_schema(engine)
        except Exception as exc:
            engine.dispose()
            raise SetupError(
                f"cannot open the database {safe_url(self.settings.db_url)}: {exc}. "
                "Check --db / DISPATCHER_DB_URL and that the server is running."
            ) from exc
        self._closers.append(engine.dispose)
        self._seed_templates(engine)
        return engine

    def _seed_templates(self, engine: Engine) -> None:
        """A new database gets the configuration's templates folder on first use (see
        `templates`), here already when it is opened, so that a first command that only
        reads (`plan`) writes nothing. Best effort: `templates` says what is missing."""
        from dispatcher.services.template_files import seed_if_empty
        from dispatcher.services.template_versions import TemplateVersions

        try:
            config = self.config
            directory = config.resolve(config.templates.directory)
            if directory.is_dir():
                seed_if_empty(TemplateVersions(engine, config, self.clock,
                                               config.resolve(config.templates.forbidden_phrases)), directory)
        except Exception:  # noqa: BLE001 - a broken configuration or folder is reported where it is needed
            pass

    @cached_property
    def template_versions(self) -> TemplateVersions:
        """Template versions in the database and four-eyes approval."""
        from dispatcher.services.template_versions import TemplateVersions

        return TemplateVersions(self.engine, self.config, self.clock,
                                self.config.resolve(self.config.templates.forbidden_phrases))

    @cached_property
    def templates(self) -> TemplateSet:
        """What is sent: the approved version of each template and locale in the database.

        The first time a database is used, the configuration's templates folder is
        imported into it (files matching `approvals.toml` approved as recorded there),
        so the shipped set is approved out of the box; later, the folder is not read."""
        from dispatcher.services.template_files import seed_if_empty, template_files
        from dispatcher.templates.stored import StoredTemplateSet

        if self._given_templates is not None:
            return self._given_templates
        versions = self.template_versions
        if not versions.fingerprint():
            directory = self.config.resolve(self.config.templates.directory)
            if not directory.is_dir() or not template_files(directory):
                # a daemon without templates would start and send nothing (every decision
                # no_approved_template): refuse instead, saying where it looked and why
                where = f" in {self.config.source}" if self.config.source else ""
                state = "has no templates (<channel>/<stage>/<variant>.<locale>.j2)" if directory.is_dir() \
                    else "does not exist"
                raise SetupError(
                    f"templates folder {directory} {state} and the database has no approved templates yet;"
                    f" set [templates] directory{where} to the templates folder (a relative path is relative"
                    " to the configuration file's folder), or run `dispatcher templates import PATH --by USER`",
                    usage=True)
            seed_if_empty(versions, directory)
        return StoredTemplateSet(self.config, source=versions)

    @cached_property
    def signer(self) -> LinkSigner:
        """Signs payment links, unsubscribe tokens and VERP addresses."""
        from dispatcher.links import LinkSigner

        key = self.settings.signing_key
        if not key:
            if self.settings.transport == "file" or self.settings.twilio_api_url:
                key = DEV_SIGNING_KEY
            else:
                raise SetupError("DISPATCHER_SIGNING_KEY is not set; set it (e.g. in .env) to sign links")
        return LinkSigner(key)

    @cached_property
    def receipts(self) -> Receipts:
        """What comes back from providers and debtors, applied to the store (its status
        hot path's own connections are released by `close()`)."""
        from dispatcher.services.receipts import Receipts

        receipts = Receipts(self.engine, self.config, self.clock, self.signer, self.settings.public_url,
                            templates=self.templates, gate=self.gate)
        self._closers.append(receipts.close)
        return receipts

    @cached_property
    def circuits(self) -> Circuits:
        """The providers' circuit breakers, one per channel for the whole process."""
        from dispatcher.channels.breaker import BreakerSettings
        from dispatcher.channels.guarded import Circuits

        breaker = self.config.sending.breaker
        return Circuits(BreakerSettings(breaker.failures_to_open, breaker.probe_seconds), self.clock)

    @cached_property
    def people(self) -> People:
        """Users, API tokens and console sessions."""
        from dispatcher.services.people import People

        return People(self.engine, self.clock, self._passwords)

    def channels(self) -> dict[Channel, ChannelAdapter]:
        """One adapter per channel, each behind its provider's circuit breaker; the caller
        owns them (`await adapter.aclose()`)."""
        from dispatcher.channels.guarded import guard_all
        from dispatcher.channels.registry import build_channels
        from dispatcher.services.ledger import StoreLedger

        try:
            built = build_channels(self.settings, timeout=self.config.sending.provider_timeout_seconds,
                                   clock=self.clock, ledger=StoreLedger(self.engine))
        except (ValueError, KeyError) as exc:
            raise SetupError(str(exc)) from None
        return guard_all(built, self.circuits)

    def sender(self, channels: dict[Channel, ChannelAdapter]) -> Sender:
        """The outbox's sender over `channels`."""
        from dispatcher.services.outbox import Sender

        return Sender(self.engine, self.config, self.templates, channels, self.clock, self.signer,
                      self.settings.public_url, self.settings.instance_id, gate=self.gate)

    def web(self) -> WebCollaborators:
        """The collaborators of the web app (`web.app.create_app`)."""
        from dispatcher.web.dependencies import WebCollaborators

        return WebCollaborators(engine=self.engine, config=self.config, gate=self.gate, clock=self.clock,
                                settings=self.settings, signer=self.signer, templates=self.templates,
                                receipts=self.receipts, people=self.people, circuits=self.circuits,
                                template_versions=self.template_versions)

    def close(self) -> None:
        """Release what was opened, newest first."""
        closers, self._closers = self._closers, []
        for closer in reversed(closers):
            closer()
