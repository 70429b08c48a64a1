"""Users, API tokens and console sessions (SPEC 14): who may sign in, and as whom.

Every change is an event (no case) with the acting person as `actor`: `user_added`,
`user_disabled`, `password_set`, `token_created`, `token_revoked`, `signed_in`,
`sign_in_refused`, `signed_out`.

A disabled user is refused at once: every token and session lookup joins the user and
checks it, and disabling also deletes the user's sessions. Console sign-ins are rate
limited per name and per client (failures counted in the database, so the limit holds
across instances); an unknown name costs the same argon2 verification as a known one
and gets the same answer, so sign-in does not tell which names exist.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection, Engine, Row

from dispatcher.clock import Clock
from dispatcher.credentials import Passwords, check_new_password, new_api_token, new_session_id, token_digest
from dispatcher.roles import Principal, Role, name_key, normalise_name
from dispatcher.store.events import EventKind, record_event
from dispatcher.store.tables import api_tokens_t, console_sessions_t, sign_in_failures_t, users_t

SESSION_HOURS = 12
TOKEN_DAYS_DEFAULT = 90
TOKEN_DAYS_MAX = 3650


class PeopleError(ValueError):
    """A request about users or tokens that cannot be done; the message says what to do."""


class UnknownUser(PeopleError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no user {name!r}; see `dispatcher users list`, or add one with `dispatcher users add`")


@dataclass(frozen=True, slots=True)
class SignInLimits:
    """At most `per_name` failed sign-ins for one name and `per_client` from one client
    in `window`; past that, sign-ins are refused without checking the password."""

    per_name: int = 5
    per_client: int = 20
    window: dt.timedelta = dt.timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class UserView:
    id: int
    name: str
    roles: tuple[Role, ...]
    created_at: dt.datetime
    created_by: str
    disabled_at: dt.datetime | None
    has_password: bool

    @property
    def state(self) -> str:
        if self.disabled_at is not None:
            return "disabled"
        return "active" if self.has_password else "no password"


@dataclass(frozen=True, slots=True)
class TokenView:
    id: int
    user: str
    created_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None

    def state(self, now: dt.datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= now else "active"


@dataclass(frozen=True, slots=True)
class NewToken:
    id: int
    user: str
    token: str  # shown once, never stored
    expires_at: dt.datetime


class Refusal(StrEnum):
    BAD_CREDENTIALS = "bad_credentials"  # wrong name, wrong password, no password or disabled: one answer
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True, slots=True)
class SignIn:
    principal: Principal | None
    session: str | None  # the new session's secret, for the cookie
    refusal: Refusal | None


_ROLE_NAMES = frozenset(r.value for r in Role)


def _roles_text(roles: frozenset[Role]) -> str:
    return ",".join(sorted(r.value for r in roles))


def _roles_of(text: str) -> frozenset[Role]:
    return frozenset(Role(r) for r in text.split(",") if r in _ROLE_NAMES)


def _user_view(row: Row[tuple[object, ...]]) -> UserView:
    m = row._mapping
    return UserView(id=m["id"], name=m["name"], roles=tuple(sorted(_roles_of(m["roles"]))),
                    created_at=m["created_at"], created_by=m["created_by"], disabled_at=m["disabled_at"],
                    has_password=m["password_hash"] is not None)


class People:
    """Users, tokens and sessions over the store, on the injected clock."""

    def __init__(self, engine: Engine, clock: Clock, passwords: Passwords | None = None,
                 limits: SignInLimits | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.passwords = passwords or Passwords()
        self.limits = limits or SignInLimits()

    # ------------------------------------------------------------------ users

    def add_user(self, name: str, roles: frozenset[Role], by: str) -> UserView:
        """A new user (no password yet: `set_password`). `PeopleError` if the name is taken."""
        display = normalise_name(name)
        now = self.clock.now()
        with self.engine.begin() as conn:
            if self._user_row(conn, display) is not None:
                raise PeopleError(f"user {display!r} exists already (names are compared ignoring case)")
            conn.execute(insert(users_t).values(name=display, name_key=name_key(display), roles=_roles_text(roles),
                                                created_at=now, created_by=by))
            record_event(conn, EventKind.USER_ADDED, now, actor=by, user=display, roles=sorted(roles))
            row = self._user_row(conn, display)
        assert row is not None
        return _user_view(row)

    def list_users(self) -> list[UserView]:
        with self.engine.connect() as conn:
            return [_user_view(r) for r in conn.execute(select(users_t).order_by(users_t.c.name_key))]

    def disable_user(self, name: str, by: str) -> UserView:
        """Disable a user: their tokens and sessions stop working at once."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            row = self._require_user(conn, name)
            if row.disabled_at is None:
                conn.execute(update(users_t).where(users_t.c.id == row.id).values(disabled_at=now, disabled_by=by))
                conn.execute(delete(console_sessions_t).where(console_sessions_t.c.user_id == row.id))
                record_event(conn, EventKind.USER_DISABLED, now, actor=by, user=row.name)
            row = self._require_user(conn, name)
        return _user_view(row)

    def set_password(self, name: str, password: str, by: str) -> None:
        """Set a user's password (argon2id); their open console sessions end."""
        hashed = self.passwords.hash(check_new_password(password))
        now = self.clock.now()
        with self.engine.begin() as conn:
            row = self._require_user(conn, name)
            conn.execute(update(users_t).where(users_t.c.id == row.id).values(password_hash=hashed))
            conn.execute(delete(console_sessions_t).where(console_sessions_t.c.user_id == row.id))
            record_event(conn, EventKind.PASSWORD_SET, now, actor=by, user=row.name)

    # ----------------------------------------------------------------- tokens

    def create_token(self, name: str, days: int, by: str) -> NewToken:
        """A new API token for `name`, valid `days` days; the token itself is returned once."""
        if not 1 <= days <= TOKEN_DAYS_MAX:
            raise PeopleError(f"--days {days}: a token lives 1 to {TOKEN_DAYS_MAX} days")
        now = self.clock.now()
        token = new_api_token()
        expires = (now + dt.timedelta(days=days)).astimezone(dt.UTC)
        with self.engine.begin() as conn:
            row = self._require_user(conn, name)
            if row.disabled_at is not None:
                raise PeopleError(f"user {row.name!r} is disabled; a token for them would not work")
            result = conn.execute(insert(api_tokens_t).values(user_id=row.id, digest=token_digest(token),
                                                              created_at=now, created_by=by, expires_at=expires))
            token_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            record_event(conn, EventKind.TOKEN_CREATED, now, actor=by, user=row.name, token_id=token_id,
                         expires_at=expires.isoformat())
        return NewToken(token_id, row.name, token, expires)

    def list_tokens(self) -> list[TokenView]:
        query = (select(api_tokens_t.c.id, users_t.c.name, api_tokens_t.c.created_at, api_tokens_t.c.expires_at,
                        api_tokens_t.c.revoked_at)
                 .join(users_t, users_t.c.id == api_tokens_t.c.user_id).order_by(api_tokens_t.c.id))
        with self.engine.connect() as conn:
            return [TokenView(*r) for r in conn.execute(query)]

    def revoke_token(self, token_id: int, by: str) -> TokenView:
        now = self.clock.now()
        with self.engine.begin() as conn:
            row = conn.execute(select(api_tokens_t.c.revoked_at).where(api_tokens_t.c.id == token_id)).first()
            if row is None:
                raise PeopleError(f"no token {token_id}; see `dispatcher tokens list`")
            if row.revoked_at is None:
                conn.execute(update(api_tokens_t).where(api_tokens_t.c.id == token_id)
                             .values(revoked_at=now, revoked_by=by))
                record_event(conn, EventKind.TOKEN_REVOKED, now, actor=by, token_id=token_id)
        return next(t for t in self.list_tokens() if t.id == token_id)

    def principal_for_token(self, token: str) -> Principal | None:
        """The user a bearer token stands for: None if unknown, revoked, expired or disabled."""
        query = (select(users_t.c.id, users_t.c.name, users_t.c.roles, users_t.c.locale)
                 .join(api_tokens_t, api_tokens_t.c.user_id == users_t.c.id)
                 .where(api_tokens_t.c.digest == token_digest(token), api_tokens_t.c.revoked_at.is_(None),
                        api_tokens_t.c.expires_at > self.clock.now(), users_t.c.disabled_at.is_(None)))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else Principal(row.name, _roles_of(row.roles), row.id, row.locale)

    # --------------------------------------------------------------- sessions

    def sign_in(self, name: str, password: str, client: str) -> SignIn:
        """Check a console sign-in; on success a brand-new session (any earlier cookie is
        replaced, so a session id planted before sign-in is worthless)."""
        now = self.clock.now()
        key = name_key(" ".join(name.split()))[:256]
        client = client[:64]
        since = now - self.limits.window
        with self.engine.connect() as conn:
            by_name = conn.execute(select(func.count()).select_from(sign_in_failures_t).where(
                sign_in_failures_t.c.name_key == key, sign_in_failures_t.c.at > since)).scalar_one()
            by_client = conn.execute(select(func.count()).select_from(sign_in_failures_t).where(
                sign_in_failures_t.c.client == client, sign_in_failures_t.c.at > since)).scalar_one()
            row = conn.execute(select(users_t).where(users_t.c.name_key == key)).first()
        if by_name >= self.limits.per_name or by_client >= self.limits.per_client:
            with self.engine.begin() as conn:
                record_event(conn, EventKind.SIGN_IN_REFUSED, now, name=key[:64], client=client,
                             reason=Refusal.RATE_LIMITED.value)
            return SignIn(None, None, Refusal.RATE_LIMITED)
        # the same argon2 work whether or not the name exists (a dummy hash stands in)
        matches = self.passwords.verify(row.password_hash if row is not None else None, password)
        if row is None or not matches or row.disabled_at is not None:
            with self.engine.begin() as conn:
                conn.execute(sign_in_failures_t.delete().where(sign_in_failures_t.c.at < now - dt.timedelta(days=1)))
                conn.execute(insert(sign_in_failures_t).values(name_key=key, client=client, at=now))
                record_event(conn, EventKind.SIGN_IN_REFUSED, now, name=key[:64], client=client,
                             reason=Refusal.BAD_CREDENTIALS.value)
            return SignIn(None, None, Refusal.BAD_CREDENTIALS)
        session = new_session_id()
        with self.engine.begin() as conn:
            conn.execute(insert(console_sessions_t).values(digest=token_digest(session), user_id=row.id,
                                                           created_at=now,
                                                           expires_at=now + dt.timedelta(hours=SESSION_HOURS)))
            conn.execute(delete(sign_in_failures_t).where(sign_in_failures_t.c.name_key == key))
            conn.execute(delete(console_sessions_t).where(console_sessions_t.c.expires_at <= now))
            if self.passwords.needs_rehash(row.password_hash):
                conn.execute(update(users_t).where(users_t.c.id == row.id)
                             .values(password_hash=self.passwords.hash(password)))
            record_event(conn, EventKind.SIGNED_IN, now, actor=row.name, client=client)
        return SignIn(Principal(row.name, _roles_of(row.roles), row.id, row.locale), session, None)

    def principal_for_session(self, session: str) -> Principal | None:
        """The signed-in user of a session cookie: None if unknown, expired, signed out or disabled."""
        query = (select(users_t.c.id, users_t.c.name, users_t.c.roles, users_t.c.locale)
                 .join(console_sessions_t, console_sessions_t.c.user_id == users_t.c.id)
                 .where(console_sessions_t.c.digest == token_digest(session),
                        console_sessions_t.c.expires_at > self.clock.now(), users_t.c.disabled_at.is_(None)))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else Principal(row.name, _roles_of(row.roles), row.id, row.locale)

    def sign_out(self, session: str, by: str) -> None:
        """End a session; the event names its owner (`by` is who ended it, when another
        user's sign-in in the same browser replaced it)."""
        now = self.clock.now()
        digest = token_digest(session)
        with self.engine.begin() as conn:
            owner = conn.execute(select(users_t.c.name).join(console_sessions_t,
                                                            console_sessions_t.c.user_id == users_t.c.id)
                                 .where(console_sessions_t.c.digest == digest)).scalar()
            if owner is None:
                return
            conn.execute(delete(console_sessions_t).where(console_sessions_t.c.digest == digest))
            extra = {} if owner == by else {"session_of": owner}
            record_event(conn, EventKind.SIGNED_OUT, now, actor=by, **extra)

    def set_locale(self, user_id: int, locale: str | None) -> None:
        """Keep the console language a user chose (None: follow their browser again)."""
        with self.engine.begin() as conn:
            conn.execute(update(users_t).where(users_t.c.id == user_id).values(locale=locale))

    def anyone_can_sign_in(self) -> bool:
        """Whether some active user has a password (else the console is unusable)."""
        query = select(func.count()).select_from(users_t).where(users_t.c.disabled_at.is_(None),
                                                                users_t.c.password_hash.is_not(None))
        with self.engine.connect() as conn:
            return bool(conn.execute(query).scalar_one())

    # ---------------------------------------------------------------- helpers

    @staticmethod
    def _user_row(conn: Connection, name: str) -> Row[tuple[object, ...]] | None:
        return conn.execute(select(users_t).where(users_t.c.name_key == name_key(" ".join(name.split())))).first()

    def _require_user(self, conn: Connection, name: str) -> Row[tuple[object, ...]]:
        row = self._user_row(conn, name)
        if row is None:
            raise UnknownUser(name)
        return row
