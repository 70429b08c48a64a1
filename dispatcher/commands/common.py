"""What every command module shares: exit statuses, the consoles, errors that say what
to do, and the command's `Runtime`."""

from __future__ import annotations

import typer
from rich.console import Console

from dispatcher.wiring import Runtime

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_PARTIAL, EXIT_REFUSED = 0, 1, 2, 3, 4

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print an error that says what to do, and return the Exit to raise. The daemon,
    whose stderr is JSON lines, logs it as one."""
    from dispatcher.logs import json_logging_active, log_failure

    if json_logging_active():
        log_failure(message)
    else:
        err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def rt(ctx: typer.Context) -> Runtime:
    """The command's runtime, built by the global options callback."""
    runtime = ctx.obj
    assert isinstance(runtime, Runtime)
    return runtime
