"""The web app in a spawned process of its own, on a given port.

For the demo: the sender, the sandbox and our webhooks each keep a core busy, and in one
process they would share one interpreter lock. The child builds the app from the same
settings through the same wiring as every other entry point (`dispatcher.wiring`), on
a clock shared with the parent (`SharedClock`), and serves it with uvicorn until
SIGTERM, closing its database connections on the way out.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from dispatcher.clock import Clock
from dispatcher.settings import Settings


def _web_process_main(settings: Settings, clock: Clock, port: int, log_path: str | None) -> None:
    import uvicorn

    from dispatcher.logs import log_to_file
    from dispatcher.web.app import create_app
    from dispatcher.wiring import Runtime

    if log_path:
        log_to_file(Path(log_path))
    runtime = Runtime(settings, clock)
    try:
        app = create_app(runtime.web())
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http="httptools", lifespan="on",
                                               log_config=None, access_log=False, ws="none", timeout_keep_alive=75,
                                               proxy_headers=False))
        server.run()  # uvicorn stops gracefully on SIGTERM
    finally:
        runtime.close()


@contextlib.contextmanager
def run_web_in_process(settings: Settings, clock: Clock, port: int, *,
                       log_path: Path | None = None, start_timeout: float = 60.0) -> Iterator[int]:
    """Serve the web app from a spawned process on 127.0.0.1:`port` until the block ends;
    yields the child's pid once `/healthz` answers. `clock` must pickle (`SharedClock`)."""
    import httpx

    from dispatcher.spawn import spawned

    args = (settings, clock, port, str(log_path) if log_path else None)
    with spawned(_web_process_main, args, name="dispatcher-web") as process:
        deadline = time.monotonic() + start_timeout
        while True:
            if not process.is_alive():
                raise RuntimeError(f"the web process exited during start-up (exit code {process.exitcode})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the web process did not answer on port {port} within {start_timeout:g} s")
            time.sleep(0.1)
        assert process.pid is not None
        yield process.pid
