"""The controller process of benchmarks.controller_loop's `reaction_s`.

It runs what `tide run` runs (tide.cli._run: the configuration and its
token checks, the pool client's configuration, the store, the real demand
source and slot observer from tide.assemble.build_controller, metrics, and
tide.loop.run_forever at the configured interval until SIGTERM), with one
difference: every site's adapter is a RecordingSite. It is a measurement
harness, not a site: it creates nothing, lists what it was asked to create
and not yet to destroy, and appends the wall-clock time of each call to a
file, one JSON object a line:

    {"call": "create", "resource": "tide-reaction-1a2b3c-0f1e2d3c", "at": 1763900000.123}

Started by the benchmark as
`python -m benchmarks.loop_harness --config FILE --record FILE`.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import TextIO

from tide import assemble, logs
from tide.config import check_secret_file, load_config
from tide.loop import run_forever
from tide.metrics import Metrics
from tide.sites.base import Owned, SiteAdapter
from tide.store import Store


class RecordingSite:
    """A site adapter that records when it is called and creates nothing."""

    def __init__(self, name: str, record: TextIO) -> None:
        self.name = name
        self._record = record
        self._alive: set[str] = set()

    def create(self, resource_id: str) -> Mapping[str, str]:
        at = time.time()  # first: the call's time, not the time it took to record it
        self._alive.add(resource_id)
        self._write("create", resource_id, at)
        return {}

    def list_owned(self) -> list[Owned]:
        self._write("list", "", time.time())
        return [Owned(resource_id=rid, status="recorded") for rid in sorted(self._alive)]

    def destroy(self, resource_id: str, details: Mapping[str, str]) -> None:
        at = time.time()
        self._alive.discard(resource_id)
        self._write("destroy", resource_id, at)

    def _write(self, call: str, resource_id: str, at: float) -> None:
        self._record.write(json.dumps({"call": call, "resource": resource_id, "at": at}) + "\n")
        self._record.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--record", required=True, type=Path)
    args = parser.parse_args()
    config = load_config(args.config)
    check_secret_file(config.pool.token_file)
    for site in config.sites.values():
        check_secret_file(site.worker_token_file)
    logs.setup("INFO")
    folder = assemble.configure_htcondor(config.pool.collector, config.pool.token_file)
    try:
        with (
            Store.open(config.loop.state_file, exclusive=True) as store,
            args.record.open("a", encoding="utf-8") as record,
        ):
            adapters: dict[str, SiteAdapter] = {
                name: RecordingSite(name, record) for name in config.sites
            }
            controller = assemble.build_controller(
                config, store, adapters=adapters, metrics=Metrics(config.sites)
            )
            stop = threading.Event()

            def on_signal(signum: int, frame: FrameType | None) -> None:
                stop.set()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            run_forever(controller, config.loop.interval_s, stop)
    finally:
        assemble.remove_htcondor_config(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
