"""One planning instance for the partition tests (not a test module): plans the store at
`--now` with small batches and a pause after each, prints its summary as JSON.

    python -m tests.integration.plan_worker URL CONFIG NOW NAME PAUSE_SECONDS LEASE_SECONDS
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

from dispatcher.config import load_config
from dispatcher.policy import Gate
from dispatcher.services.planner import IncrementalPlanner
from dispatcher.store.db import make_engine
from dispatcher.templates import TemplateSet


def main(argv: list[str]) -> int:
    url, config_path, now_text, name, pause, lease = argv
    config = load_config(Path(config_path))
    engine = make_engine(url)
    catalog = TemplateSet(config.resolve(config.templates.directory), config).approved_catalog()

    def after_batch(part: int, cases: int) -> None:
        print(json.dumps({"batch": part, "cases": cases}), flush=True)
        time.sleep(float(pause))

    planner = IncrementalPlanner(engine, Gate(config), instance_id=name, lease_seconds=float(lease),
                                 batch_size=40, poll_seconds=0.2, on_batch=after_batch)
    summary = planner.run(catalog, dt.datetime.fromisoformat(now_text))
    print(json.dumps({"done": planner.me, "evaluated": summary.evaluated, "partitions": summary.partitions,
                      "queued": summary.queued, "deferred": summary.deferred, "escalated": summary.escalated}),
          flush=True)
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
