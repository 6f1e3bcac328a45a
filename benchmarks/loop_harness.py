"""The controller process of benchmarks.controller_loop's `reaction_s`.

It runs what `tide run` runs (tide.daemon.run_daemon: the token checks,
the pool client's configuration, the store, the real demand source and slot
observer, metrics, and the loop at the configured interval until SIGTERM),
with one difference: every site's adapter is a RecordingSite. It is a measurement
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
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from tide.config import Config, load_config
from tide.daemon import run_daemon
from tide.sites.base import Owned, PoolEndpoint, SiteAdapter


class RecordingSite(SiteAdapter):
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
    with args.record.open("a", encoding="utf-8") as record:

        def recording(config: Config, owner: str, pool: PoolEndpoint) -> dict[str, SiteAdapter]:
            return {name: RecordingSite(name, record) for name in config.sites}

        return run_daemon(config, "INFO", recording)


if __name__ == "__main__":
    raise SystemExit(main())
