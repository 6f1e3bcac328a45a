"""Figures of the controller's policy, written to benchmarks/results/controller.json.

decide_ms       one decide() over 100,000 idle jobs in 1,000 autoclusters
                across 4 sites and 10,000 resources in every state
decide_peak_mb  the peak memory that decide() allocates (tracemalloc, in
                separate runs: tracing slows the timed ones down)

Each metric holds its raw `runs` and their `median` (the file's other
metrics, benchmarks.controller_loop's, are kept). Needs no lab: run
with `python -m benchmarks.controller_decide`. The snapshot is built
arithmetically (no randomness), once, before anything is measured.
"""

from __future__ import annotations

import time
import tracemalloc
from collections import Counter
from pathlib import Path

from benchmarks import report
from tide.model import (
    Demand,
    Resource,
    Shape,
    Site,
    SiteHealth,
    SiteLimits,
    Snapshot,
    State,
)
from tide.policy import decide

RESULTS = Path(__file__).resolve().parent / "results" / "controller.json"
NOW = 1_000_000.0
AUTOCLUSTERS = 1_000
JOBS_PER_AUTOCLUSTER = 100
RESOURCES = 10_000
SITE_NAMES = ("openstack", "slurm", "docker", "cloud")
SHAPES = (
    Shape(cpus=8, memory_mb=32_000, disk_mb=200_000),
    Shape(cpus=32, memory_mb=128_000, disk_mb=500_000),
    Shape(cpus=4, memory_mb=8_000, disk_mb=50_000),
    Shape(cpus=16, memory_mb=64_000, disk_mb=400_000),
)
STATES = (
    State.REQUESTED,
    State.BOOTING,
    State.RUNNING,
    State.RUNNING,
    State.RUNNING,
    State.RUNNING,
    State.DRAINING,
    State.STOPPING,
    State.FAILED,
    State.GONE,
)


def build_snapshot() -> Snapshot:
    limits = SiteLimits(
        max_resources=4_000,
        max_booting=400,
        boot_timeout_s=900,
        idle_timeout_s=600,
        backoff_base_s=30,
        backoff_max_s=1_800,
    )
    sites = {
        name: Site(name=name, shape=shape, limits=limits)
        for name, shape in zip(SITE_NAMES, SHAPES, strict=True)
    }
    demand = []
    for i in range(AUTOCLUSTERS):
        # 1, 2 or 3 sites in a rotating order; every 50th matches none.
        first = i % len(SITE_NAMES)
        count = 0 if i % 50 == 0 else 1 + i % 3
        listed = tuple(SITE_NAMES[(first + k) % len(SITE_NAMES)] for k in range(count))
        demand.append(
            Demand(
                key=f"schedd{i % 3}#{i}",
                idle_jobs=JOBS_PER_AUTOCLUSTER,
                cpus=1 + i % 4,
                memory_mb=1_000 * (1 + i % 6),
                disk_mb=5_000 * (1 + i % 5),
                sites=listed,
            )
        )
    resources = []
    for i in range(RESOURCES):
        state = STATES[i % len(STATES)]
        age = float(60 * (i % 37))  # 0 .. 36 minutes: some boots time out, some idle ones drain
        claimed = (i // len(STATES)) % 3  # a third of running/draining ones are idle
        resources.append(
            Resource(
                id=f"r{i:05d}",
                site=SITE_NAMES[i % len(SITE_NAMES)],
                state=state,
                state_since=NOW - age,
                created_at=NOW - age - 60,
                advertised=state in (State.RUNNING, State.DRAINING),
                claimed_slots=claimed,
                idle_since=NOW - age if claimed == 0 else None,
            )
        )
    health = {"cloud": SiteHealth(consecutive_failures=2, last_failure_at=NOW - 10)}
    return Snapshot(
        now=NOW, sites=sites, demand=tuple(demand), resources=tuple(resources), health=health
    )


def measure_ms(snapshot: Snapshot) -> float:
    start = time.perf_counter()
    decide(snapshot)
    return (time.perf_counter() - start) * 1_000


def measure_peak_mb(snapshot: Snapshot) -> float:
    tracemalloc.start()
    try:
        decide(snapshot)
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def main() -> None:
    args = report.arguments(__doc__.splitlines()[0], RESULTS)
    snapshot = build_snapshot()
    plan = decide(snapshot)  # warm up, and show what is decided
    kinds = Counter(type(a).__name__ for a in plan.actions)
    print(
        f"[bench] plan: {dict(sorted(kinds.items()))}, {len(plan.unmatched)} unmatched",
        flush=True,
    )

    timings = report.repeat("decide_ms", args.runs, lambda: measure_ms(snapshot))
    peaks = report.repeat("decide_peak_mb", args.runs, lambda: measure_peak_mb(snapshot))

    report.write(args.output, {"decide_ms": timings, "decide_peak_mb": peaks})


if __name__ == "__main__":
    main()
