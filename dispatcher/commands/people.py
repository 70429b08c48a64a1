"""`dispatcher users …` and `dispatcher tokens …` (SPEC 14): the people who use the
console and the API, their passwords and API tokens.

Whoever runs these commands has the server's shell and database: they act as
`cli:<their OS login>` in the audit trail. Exit 0 on success, 2 for bad input (unknown
user or role, a name taken, a short password), 1 for other failures.
"""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer
from rich.table import Table

from dispatcher.commands.common import err, fail, out, rt

users_app = typer.Typer(help="People who sign in to the console and the API, and their roles.",
                        no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens (shown once, stored hashed).", no_args_is_help=True)


def _cli_actor() -> str:
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        login = ""
    return f"cli:{login}"[:64] if login else "cli"


def _read_password() -> str:
    """The new password: prompted twice on a terminal, else the first line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass("new password: ")
        if getpass.getpass("again: ") != first:
            raise fail("the two passwords differ; run the command again")
        return first
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


@users_app.command("add")
def users_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the person's name (any script; recorded on what they do)")],
    role: Annotated[list[str], typer.Option("--role", help="collector, author, compliance, admin or ops (repeat)")],
) -> None:
    """Add a user with one or more roles; then set a password with `users password NAME`."""
    from dispatcher.roles import InvalidName, parse_roles
    from dispatcher.services.people import PeopleError

    try:
        roles = parse_roles(role)
        user = rt(ctx).people.add_user(name, roles, _cli_actor())
    except (InvalidName, PeopleError, ValueError) as exc:
        raise fail(str(exc)) from None
    print(f"added user {user.name} ({', '.join(user.roles)}); set a password: dispatcher users password {user.name!r}")


@users_app.command("list")
def users_list(ctx: typer.Context) -> None:
    """Every user, with roles and state (active, no password, disabled)."""
    table = Table("name", "roles", "state", "created", "by")
    for user in rt(ctx).people.list_users():
        table.add_row(user.name, ", ".join(user.roles), user.state, user.created_at.isoformat(timespec="seconds"),
                      user.created_by)
    out.print(table)


@users_app.command("disable")
def users_disable(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Disable a user: their API tokens and console sessions stop working at once."""
    from dispatcher.services.people import PeopleError

    try:
        user = rt(ctx).people.disable_user(name, _cli_actor())
    except PeopleError as exc:
        raise fail(str(exc)) from None
    print(f"disabled user {user.name}")


@users_app.command("password")
def users_password(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Set a user's password, read from standard input (argon2id at rest); their console sessions end."""
    from dispatcher.credentials import PasswordRefused
    from dispatcher.services.people import PeopleError

    password = _read_password()
    try:
        rt(ctx).people.set_password(name, password, _cli_actor())
    except (PasswordRefused, PeopleError) as exc:
        raise fail(str(exc)) from None
    print(f"password set for {name}")


@tokens_app.command("create")
def tokens_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the user the token acts as")],
    days: Annotated[int, typer.Option("--days", help="days until it expires")] = 90,
) -> None:
    """Create an API token; it is printed once (on standard output, alone) and stored hashed."""
    from dispatcher.services.people import PeopleError

    try:
        token = rt(ctx).people.create_token(name, days, _cli_actor())
    except PeopleError as exc:
        raise fail(str(exc)) from None
    err.print(f"token {token.id} for {token.user}, expires {token.expires_at.isoformat(timespec='seconds')};"
              " it is shown only now: keep it in a secret store", highlight=False, markup=False)
    print(token.token)


@tokens_app.command("list")
def tokens_list(ctx: typer.Context) -> None:
    """Every token (never the token itself): id, user, created, expires, state."""
    runtime = rt(ctx)
    now = runtime.clock.now()
    table = Table("id", "user", "created", "expires", "state")
    for token in runtime.people.list_tokens():
        table.add_row(str(token.id), token.user, token.created_at.isoformat(timespec="seconds"),
                      token.expires_at.isoformat(timespec="seconds"), token.state(now))
    out.print(table)


@tokens_app.command("revoke")
def tokens_revoke(ctx: typer.Context, token_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Revoke a token: it stops working at once."""
    from dispatcher.services.people import PeopleError

    try:
        token = rt(ctx).people.revoke_token(token_id, _cli_actor())
    except PeopleError as exc:
        raise fail(str(exc)) from None
    print(f"revoked token {token.id} of {token.user}")
