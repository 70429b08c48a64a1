"""People's roles and what each may do (SPEC section 14). Pure: no I/O.

The web app checks permissions in one place (`web.auth`), the API and the console
alike, by asking `Principal.can(permission)`; a new endpoint names the permission it
needs (`Depends(api_permission(Permission.TEMPLATES_APPROVE))`), and giving a role a new
permission is one line of `ROLE_PERMISSIONS`.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    COLLECTOR = "collector"
    AUTHOR = "author"
    COMPLIANCE = "compliance"
    ADMIN = "admin"
    OPS = "ops"


class Permission(StrEnum):
    CASES_READ = "cases.read"  # search, case pages, timelines
    CASES_WRITE = "cases.write"  # one-offs, payments, promises, notes
    HOLDS_PLACE = "holds.place"
    HOLDS_RELEASE = "holds.release"
    #: releasing a legal hold or a cease-communication hold (compliance only)
    HOLDS_RELEASE_PROTECTED = "holds.release_protected"
    TASKS_WORK = "tasks.work"  # claim and close collector tasks
    CONTACTS_REVEAL = "contacts.reveal"  # see a debtor's full phone number (audited: contact_revealed)
    TEMPLATES_READ = "templates.read"
    TEMPLATES_DRAFT = "templates.draft"  # save a new version, preview
    TEMPLATES_APPROVE = "templates.approve"  # four eyes: approve or reject (never one's own version)
    USERS_MANAGE = "users.manage"  # users and API tokens
    METRICS_READ = "metrics.read"
    REPORTS_READ = "reports.read"  # the KPI dashboard (aggregates, no debtor data)


_READ_EVERYTHING = frozenset({Permission.CASES_READ, Permission.TEMPLATES_READ, Permission.METRICS_READ,
                              Permission.REPORTS_READ})

#: SPEC 14: collector — cases, tasks, one-offs, holds, promises, payments, notes; author —
#: templates (draft, preview); compliance — templates (approve, reject), holds and releases,
#: read everything; admin — users and tokens; ops — read-only and metrics.
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.COLLECTOR: frozenset({Permission.CASES_READ, Permission.CASES_WRITE, Permission.HOLDS_PLACE,
                               Permission.HOLDS_RELEASE, Permission.TASKS_WORK, Permission.CONTACTS_REVEAL}),
    Role.AUTHOR: frozenset({Permission.TEMPLATES_READ, Permission.TEMPLATES_DRAFT}),
    Role.COMPLIANCE: _READ_EVERYTHING | {Permission.TEMPLATES_APPROVE, Permission.HOLDS_PLACE,
                                         Permission.HOLDS_RELEASE, Permission.HOLDS_RELEASE_PROTECTED},
    Role.ADMIN: frozenset({Permission.USERS_MANAGE}),
    Role.OPS: _READ_EVERYTHING,
}

#: Holds only compliance may lift: a legal hold (the case is with lawyers) and a
#: cease-communication hold (the debtor told us to stop). A collector places them, never
#: releases them.
PROTECTED_HOLD_REASONS = frozenset({"legal_hold", "cease_communication"})


def release_permission(reason: str) -> Permission:
    """The permission that releasing a hold with this reason needs."""
    return Permission.HOLDS_RELEASE_PROTECTED if reason in PROTECTED_HOLD_REASONS else Permission.HOLDS_RELEASE


#: What a named person's judgement is for: the bootstrap credential (DISPATCHER_API_TOKEN,
#: nobody in particular) never holds these, so four eyes always means two people.
PERSONAL_PERMISSIONS = frozenset({Permission.TEMPLATES_APPROVE})

#: The audit name of the bootstrap credential.
BOOTSTRAP = "bootstrap"

#: Actor names the dispatcher itself writes on events; no person may take them.
RESERVED_NAMES = frozenset({BOOTSTRAP, "system", "sms", "ivr", "email", "import", "cli", "repair"})

NAME_MAX = 64
_NAME_PUNCTUATION = frozenset("._@-' ")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a user (with an id) or the bootstrap credential (id None)."""

    name: str
    roles: frozenset[Role]
    user_id: int | None = None
    locale: str | None = None  # the console language the user chose (None: their browser's)

    @property
    def permissions(self) -> frozenset[Permission]:
        if self.user_id is None and self.name == BOOTSTRAP:
            return frozenset(Permission) - PERSONAL_PERMISSIONS
        return frozenset().union(*(ROLE_PERMISSIONS[r] for r in self.roles)) if self.roles else frozenset()

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions


def bootstrap_principal() -> Principal:
    """The holder of DISPATCHER_API_TOKEN: every permission but the personal ones."""
    return Principal(BOOTSTRAP, frozenset(Role), None)


class InvalidName(ValueError):
    """A user name that cannot be used; the message says what is allowed."""


def normalise_name(raw: str) -> str:
    """A person's name as stored and shown: NFC, trimmed, inner runs of spaces made one.

    Any script's letters, marks and digits, and `. _ @ - '` and inner spaces; 1 to 64
    characters. Raises `InvalidName` with what is allowed."""
    name = " ".join(unicodedata.normalize("NFC", raw).split())
    if not name:
        raise InvalidName("a user name cannot be empty")
    if len(name) > NAME_MAX:
        raise InvalidName(f"a user name has at most {NAME_MAX} characters")
    for char in name:
        if char not in _NAME_PUNCTUATION and unicodedata.category(char)[0] not in "LMN":
            raise InvalidName(f"a user name may not contain {char!r}: use letters, digits and . _ @ - ' or spaces")
    if name_key(name) in RESERVED_NAMES:
        raise InvalidName(f"{name!r} is reserved for the dispatcher's own actions; choose another name")
    return name


def name_key(name: str) -> str:
    """The key two names are the same person by: NFC, case-folded (`Alice` = `alice`)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def parse_roles(values: list[str]) -> frozenset[Role]:
    """Role names to roles; `ValueError` naming the allowed ones."""
    if not values:
        raise ValueError(f"give at least one --role: {', '.join(r.value for r in Role)}")
    roles = set()
    for value in values:
        try:
            roles.add(Role(value.strip().lower()))
        except ValueError:
            raise ValueError(f"unknown role {value!r}: use {', '.join(r.value for r in Role)}") from None
    return frozenset(roles)
