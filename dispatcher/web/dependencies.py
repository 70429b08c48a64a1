"""What the web app's handlers work with, and how they receive it.

`WebCollaborators` is built once by the composition root (`dispatcher.wiring`) and
given to `web.app.create_app`, which keeps it on the FastAPI app (`DispatcherAPI`).
The API, the console and the e-mail and payment-link pages declare the parts they use
as typed FastAPI dependencies (`engine: EngineDep`, `clock: ClockDep`, ...), so no
handler reads an untyped state bag. The Twilio webhooks are bound to their
collaborators instead (`web.twilio_hooks.TwilioHooks`): they are served on a fast path
outside FastAPI, where no dependency injection runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from sqlalchemy.engine import Engine

from dispatcher.channels.guarded import Circuits
from dispatcher.clock import Clock
from dispatcher.config import Config
from dispatcher.links import LinkSigner
from dispatcher.policy import Gate
from dispatcher.services.case_actions import CaseActions
from dispatcher.services.people import People
from dispatcher.services.receipts import Receipts
from dispatcher.services.tasks import Tasks
from dispatcher.services.template_versions import TemplateVersions
from dispatcher.settings import Settings
from dispatcher.templates import TemplateSet
from dispatcher.web.rate_limit import PageLimiter


@dataclass(frozen=True, slots=True)
class WebCollaborators:
    """Everything the web app's handlers need, built by the composition root."""

    engine: Engine
    config: Config
    gate: Gate  # the compliance gate of the case pages and one-off messages
    clock: Clock
    settings: Settings
    signer: LinkSigner
    templates: TemplateSet
    receipts: Receipts
    people: People  # users, API tokens, console sessions (web.auth checks them)
    circuits: Circuits | None = None  # the providers' circuit breakers of this process (/metrics)
    template_versions: TemplateVersions | None = None  # drafts, four-eyes approval (the templates API, studio)


class DispatcherAPI(FastAPI):
    """FastAPI holding the collaborators its dependencies hand out."""

    def __init__(self, collaborators: WebCollaborators, **options: Any) -> None:
        super().__init__(**options)
        self.collaborators = collaborators
        #: the debtor's page's rate limit, this app's own (`web.rate_limit`)
        ss = collaborators.config.self_service
        self.page_limiter = PageLimiter(ss.requests_per_minute, ss.client_requests_per_minute)


def collaborators(request: Request) -> WebCollaborators:
    """The collaborators of the app serving `request` (FastAPI caches it per request)."""
    app = request.app
    if not isinstance(app, DispatcherAPI):  # a router mounted in some other app
        raise TypeError("dispatcher's web routes must be served by web.app.create_app")
    return app.collaborators


Web = Annotated[WebCollaborators, Depends(collaborators)]


def _engine(web: Web) -> Engine:
    return web.engine


def _config(web: Web) -> Config:
    return web.config


def _gate(web: Web) -> Gate:
    return web.gate


def _clock(web: Web) -> Clock:
    return web.clock


def _settings(web: Web) -> Settings:
    return web.settings


def _signer(web: Web) -> LinkSigner:
    return web.signer


def _templates(web: Web) -> TemplateSet:
    return web.templates


def _receipts(web: Web) -> Receipts:
    return web.receipts


def _tasks(web: Web) -> Tasks:
    return Tasks(web.engine, web.config, web.clock)  # stateless: cheap to make per request


def _case_actions(web: Web) -> CaseActions:
    return CaseActions(web.engine, web.config, web.clock)


def _template_versions(web: Web) -> TemplateVersions:
    if web.template_versions is None:
        raise RuntimeError("the web app was built without template versions (Runtime.web() provides them)")
    return web.template_versions


EngineDep = Annotated[Engine, Depends(_engine)]
ConfigDep = Annotated[Config, Depends(_config)]
GateDep = Annotated[Gate, Depends(_gate)]
ClockDep = Annotated[Clock, Depends(_clock)]
SettingsDep = Annotated[Settings, Depends(_settings)]
SignerDep = Annotated[LinkSigner, Depends(_signer)]
TemplatesDep = Annotated[TemplateSet, Depends(_templates)]
ReceiptsDep = Annotated[Receipts, Depends(_receipts)]
TasksDep = Annotated[Tasks, Depends(_tasks)]
CaseActionsDep = Annotated[CaseActions, Depends(_case_actions)]
TemplateVersionsDep = Annotated[TemplateVersions, Depends(_template_versions)]
