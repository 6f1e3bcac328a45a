"""Figures of the controller's loop at scale, written to
benchmarks/results/controller.json beside the other controller figures (kept).

cycle_ms            one Controller.cycle() of the real loop (tide.loop, with
                    the real observe, policy, actuator, metrics and a real
                    Store on a SQLite file), steady state, after warm-up
                    cycles; median and p95. Goal (issue 11): <= 1,000 ms.
cycle_rss_mb        the process's peak RSS (ru_maxrss) after the timed
                    cycles. Goal: <= 500 MB.
decide_ms_at_scale  tide.policy.decide on a Snapshot the same loop observes
                    (write=False), 20 runs. Goal: <= 200 ms. (decide_ms,
                    benchmarks.controller_decide's, is a smaller snapshot.)

The size: 10,000 resources over 20 sites, 1,000,000 idle jobs in 10,000
autoclusters from 20 schedds, each matched to 1-3 sites. Only the world
outside the controller is simulated, in memory, and answers at once:

* `BenchSite`: a simulated site for measurement, not a real one (a
  tide.sites.base.SiteAdapter with Capability.DRAIN): it lists what
  it holds, creates and destroys in a dict, and refuses the destroy of a few
  resources (a cloud that fails to delete: they stay STOPPING and are retried).
* `BenchPool`: the simulated pool: the collector's slots (tide.htcondor.slots.Slots)
  and the demand, already matched to sites (a DemandSource).

Steady state: every site is at its quota (demand far exceeds it). Between
two cycles, untimed, the world moves on (`BenchWorld.step`): CHURN running
resources end (a pilot's walltime, a reclaimed spot instance: their site no
longer lists them) and the boots created BOOT_CYCLES cycles ago register
their slot. So each cycle records CHURN resources gone and CHURN boots
promoted, creates CHURN replacements and retries the failed destroys that
are due; the mix stays near 86% RUNNING, 8% BOOTING, 5% DRAINING (operators'
drains still running jobs) and 1% STOPPING. The loop's clock is virtual:
INTERVAL_S per cycle, as the daemon's loop interval.

The calls run inline (tide.runner.InlineRunner), so what is timed is the
loop's own work. Logging is set up as the daemon's (tide.logs, INFO) into a
file in the temporary folder. The state file's folder and whether it is on
tmpfs are written with the figures: on a disk every write is an fsync
(synchronous=FULL). Needs no lab: `python -m benchmarks.controller_cycle`;
`--profile` prints where the timed cycles spend their time (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import itertools
import os
import pstats
import resource
import shutil
import tempfile
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import report
from tide import logs
from tide.htcondor.slots import SlotState
from tide.htcondor.startds import SiteStartds
from tide.loop import Controller
from tide.metrics import Metrics
from tide.model import Demand, Plan, Shape, Site, SiteLimits, Snapshot, State
from tide.policy import decide
from tide.runner import InlineRunner
from tide.sites.base import Capability, Owned, SiteAdapter, SiteError
from tide.store import Store, new_resource_id

RESULTS = Path(__file__).resolve().parent / "results" / "controller.json"
SITES = 20
SCHEDDS = 20
AUTOCLUSTERS = 10_000
JOBS_PER_AUTOCLUSTER = 100
PER_SITE = {  # resources per site by state: 500 a site, 10,000 in all
    State.RUNNING: 430,
    State.BOOTING: 40,
    State.DRAINING: 25,
    State.STOPPING: 5,
}
IDLE_EVERY = 50
"""One running resource in this many has no claimed slot (idle, kept: demand needs it)."""
CHURN = 20
"""Running resources that end between two cycles, all sites together."""
BOOT_CYCLES = 40
"""Cycles from a create to its slot advertised: CHURN * BOOT_CYCLES = the boots in flight."""
INTERVAL_S = 2.0
"""The virtual time between two cycles (tide run's default loop interval)."""
WARMUP = 5
SHAPES = (
    Shape(cpus=8, memory_mb=32_000, disk_mb=200_000),
    Shape(cpus=16, memory_mb=64_000, disk_mb=400_000),
    Shape(cpus=4, memory_mb=16_000, disk_mb=100_000),
    Shape(cpus=32, memory_mb=128_000, disk_mb=800_000),
)
LIMITS = SiteLimits(  # the quota is full: STOPPING ones hold none
    max_resources=sum(PER_SITE.values()) - PER_SITE[State.STOPPING],
    max_booting=100,
    boot_timeout_s=900,
    idle_timeout_s=600,
    backoff_base_s=30,
    backoff_max_s=1_800,
)
GOALS = {"cycle_ms": 1_000.0, "cycle_rss_mb": 500.0, "decide_ms_at_scale": 200.0}


def site_name(i: int) -> str:
    return f"bench{i:02d}"


# --- the simulated world ------------------------------------------------------


@dataclass
class BenchWorld:
    """What the simulated sites hold and what the simulated collector shows."""

    listings: dict[str, dict[str, Owned]]
    slots: dict[str, SlotState] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)  # destroys the site refuses
    boots: deque[tuple[int, str]] = field(default_factory=deque)  # (created in cycle, id)
    running: deque[str] = field(default_factory=deque)  # oldest first: the next to end
    cycle: int = 0

    def step(self) -> None:
        """The pool moves on between two cycles: CHURN running resources end,
        the boots created BOOT_CYCLES ago register their slot."""
        self.cycle += 1
        for _ in range(min(CHURN, len(self.running))):
            rid = self.running.popleft()
            self.slots.pop(rid, None)
            for listing in self.listings.values():
                listing.pop(rid, None)
        while self.boots and self.boots[0][0] <= self.cycle - BOOT_CYCLES:
            _created, rid = self.boots.popleft()
            if any(rid in listing for listing in self.listings.values()):
                self.slots[rid] = SlotState(advertised=True, claimed_slots=1)
                self.running.append(rid)


class BenchSite(SiteAdapter):
    """A simulated site for measurement (not a real site): creates, lists and
    destroys in memory, at once; drains a startd by marking its slot."""

    capabilities = frozenset({Capability.DRAIN})

    def __init__(self, name: str, world: BenchWorld) -> None:
        self.name = name
        self._world = world
        self._owned = world.listings.setdefault(name, {})

    def create(self, resource_id: str) -> Mapping[str, str]:
        self._owned[resource_id] = Owned(resource_id, "BUILD", {"server_id": resource_id})
        self._world.boots.append((self._world.cycle, resource_id))
        return {"server_id": resource_id}

    def list_owned(self) -> list[Owned]:
        return list(self._owned.values())

    def destroy(self, resource_id: str, details: Mapping[str, str]) -> None:
        if resource_id in self._world.refused:
            raise SiteError(f"{self.name}: simulated delete refused", retryable=True)
        self._owned.pop(resource_id, None)
        self._world.slots.pop(resource_id, None)

    def drain_startd(self, resource_id: str, reason: str, *, only_idle: bool = False) -> str:
        slot = self._world.slots.get(resource_id)
        if slot is not None:
            self._world.slots[resource_id] = SlotState(True, slot.claimed_slots, draining=True)
        return f"drain-{resource_id}"

    def cancel_startd_drain(self, resource_id: str, request_id: str) -> None:
        slot = self._world.slots.get(resource_id)
        if slot is not None:
            self._world.slots[resource_id] = SlotState(True, slot.claimed_slots)


class BenchPool:
    """The simulated pool: the collector's slots (a tide.htcondor.slots.Slots) and the
    schedds' demand, matched to sites (a tide.loop.DemandSource)."""

    def __init__(self, world: BenchWorld, demand: tuple[Demand, ...]) -> None:
        self._world = world
        self._demand = demand

    def observe(self) -> Mapping[str, SlotState]:
        return self._world.slots

    def withdraw(self, resource_id: str) -> None:
        self._world.slots.pop(resource_id, None)

    def __call__(self) -> tuple[tuple[Demand, ...], bool]:
        return self._demand, True


def build_demand() -> tuple[Demand, ...]:
    """10,000 autoclusters of 100 idle jobs from 20 schedds, each matched to
    1-3 sites, with varied requests (every one fits every site's shape)."""
    demand = []
    for i in range(AUTOCLUSTERS):
        first = (7 * i) % SITES
        sites = tuple(site_name((first + 3 * k) % SITES) for k in range(1 + i % 3))
        demand.append(
            Demand(
                key=f"schedd{i % SCHEDDS:02d}#{i}",
                idle_jobs=JOBS_PER_AUTOCLUSTER,
                cpus=1 + i % 4,
                memory_mb=1_000 * (1 + i % 8),
                disk_mb=2_000 * (1 + i % 5),
                sites=sites,
            )
        )
    return tuple(demand)


@dataclass
class Bench:
    controller: Controller
    world: BenchWorld
    store: Store
    clock: list[float]


def build(state_file: Path, now: float) -> Bench:
    """The store filled with 10,000 resources (through its own API), the
    simulated world that agrees with it, and the real controller on both."""
    world = BenchWorld(listings={})
    names = [site_name(i) for i in range(SITES)]
    adapters = {name: BenchSite(name, world) for name in names}
    tokens = itertools.count()

    def new_id(site: str) -> str:
        return new_resource_id(site, f"{next(tokens):08x}")

    store = Store.open(state_file)
    running: list[list[str]] = []
    for name in names:
        listing = world.listings[name]
        running.append([])
        for state, count in PER_SITE.items():
            for i in range(count):
                rid = new_id(name)
                listing[rid] = Owned(rid, "ACTIVE", {"server_id": rid})
                _record(store, world, rid, site=name, state=state, now=now)
                if state is State.RUNNING:
                    running[-1].append(rid)
                elif state is State.BOOTING:  # one a site registers each cycle
                    world.boots.append((i + 1 - BOOT_CYCLES, rid))
    # Every site loses one a cycle, not one site all of them.
    world.running = deque(rid for group in zip(*running, strict=True) for rid in group)
    world.boots = deque(sorted(world.boots))
    clock = [now]
    sites = {
        name: (Site(name, SHAPES[i % len(SHAPES)], LIMITS), adapter)
        for i, (name, adapter) in enumerate(adapters.items())
    }
    pool = BenchPool(world, build_demand())
    controller = Controller(
        sites=sites,
        store=store,
        demand=pool,
        slots=pool,
        startds=SiteStartds(adapters),
        metrics=Metrics(names),
        clock=lambda: clock[0],
        new_id=new_id,
        runner=InlineRunner(),
        act_budget_s=INTERVAL_S,
    )
    return Bench(controller, world, store, clock)


def _record(
    store: Store, world: BenchWorld, rid: str, *, site: str, state: State, now: float
) -> None:
    """One resource in `state`, recorded as the loop would have, with its slot."""
    added = State.BOOTING if state is State.BOOTING else State.RUNNING
    store.add(rid, site, now, "benchmark setup", state=added, handle={"server_id": rid})
    if state is State.BOOTING:
        return
    if state is State.STOPPING:  # its site refuses the destroy: retried, and stays
        store.move(rid, State.STOPPING, now, "benchmark setup")
        world.refused.add(rid)
        return
    n = len(world.slots)
    idle = state is State.RUNNING and n % IDLE_EVERY == 0
    world.slots[rid] = SlotState(advertised=True, claimed_slots=0 if idle else 1 + n % 4)
    if state is State.DRAINING:  # an operator's drain, told by the first cycle
        store.request_drain(rid, now)


# --- measuring ---------------------------------------------------------------


def cycle_ms(bench: Bench, plans: list[Plan], cpu: list[float]) -> float:
    """One timed cycle after the world moved on (untimed); its CPU time
    (this process's) is appended to `cpu`: where it is well below the wall
    time, other processes took the CPU."""
    bench.world.step()
    bench.clock[0] += INTERVAL_S
    gc.collect()
    cpu_start, start = time.process_time(), time.perf_counter()
    plans.append(bench.controller.cycle())
    wall = (time.perf_counter() - start) * 1_000
    cpu.append((time.process_time() - cpu_start) * 1_000)
    return wall


def census(store: Store) -> dict[str, int]:
    return dict(sorted(Counter(r.state.value for r in store.alive()).items()))


def plan_kinds(plans: list[Plan]) -> dict[str, float]:
    """The mean number of each action per cycle."""
    kinds: Counter[str] = Counter()
    for plan in plans:
        kinds.update(type(a).__name__ for a in plan.actions)
    return {kind: round(n / len(plans), 1) for kind, n in sorted(kinds.items())}


def filesystem(path: Path) -> str:
    """The type of the filesystem `path` is on (/proc/mounts: the longest mount point)."""
    best, fstype = "", "unknown"
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1]
        inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, fstype = mount, parts[2]
    return fstype


def rss_mb() -> float:
    """The process's peak RSS so far (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def goal(name: str, figure: float) -> dict[str, Any]:
    return {"goal": GOALS[name], "goal_met": figure <= GOALS[name]}


def profile(bench: Bench, cycles: int, top: int) -> None:
    """cProfile over `cycles` more cycles: the hot spots, by own and by total time."""
    profiler = cProfile.Profile()
    for _ in range(cycles):
        bench.world.step()
        bench.clock[0] += INTERVAL_S
        profiler.runcall(bench.controller.cycle)
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(top)
        print(f"[bench] profile of {cycles} cycles, by {order}:\n{out.getvalue()}", flush=True)


def main() -> None:
    parser = report.parser(__doc__.splitlines()[0], RESULTS)
    parser.set_defaults(runs=20)
    parser.add_argument("--warmup", type=int, default=WARMUP, help="untimed cycles first")
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="where the state file goes (default: $TMPDIR)"
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="CYCLES", help="then profile this many cycles"
    )
    args = parser.parse_args()
    measured = report.source()
    tmp = Path(tempfile.mkdtemp(prefix="tide-bench-cycle-", dir=args.state_dir))
    try:
        run(args, measured, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, measured: Mapping[str, Any], tmp: Path) -> None:
    state_file = tmp / "state.db"
    fstype = filesystem(tmp)
    with (tmp / "tide.log").open("w") as log:
        logs.setup("INFO", log)
        rss_before = rss_mb()
        started = time.monotonic()
        bench = build(state_file, time.time())
        print(
            f"[bench] setup in {time.monotonic() - started:.1f}s: {census(bench.store)},"
            f" state file on {fstype} ({tmp})",
            flush=True,
        )
        plans: list[Plan] = []
        cpu: list[float] = []
        for _ in range(args.warmup):
            cycle_ms(bench, plans, cpu)
        plans.clear()
        cpu.clear()
        before = census(bench.store)
        load = [os.getloadavg()[0]]
        cycles = report.repeat("cycle_ms", args.runs, lambda: cycle_ms(bench, plans, cpu))
        load.append(os.getloadavg()[0])
        rss = rss_mb()
        after = census(bench.store)
        print(f"[bench] per cycle: {plan_kinds(plans)}; alive {before} -> {after}", flush=True)
        print(f"[bench] peak RSS {rss:.0f} MB ({rss_before:.0f} MB before the setup)", flush=True)

        snapshot: Snapshot = bench.controller.observe(bench.clock[0], write=False)
        decides = report.repeat("decide_ms_at_scale", args.runs, lambda: timed_decide(snapshot))
        if args.profile:
            profile(bench, args.profile, top=30)
        bench.store.close()
        log_lines = sum(1 for _ in (tmp / "tide.log").open())

    size = {
        "resources": sum(PER_SITE.values()) * SITES,
        "sites": SITES,
        "idle_jobs": AUTOCLUSTERS * JOBS_PER_AUTOCLUSTER,
        "autoclusters": AUTOCLUSTERS,
        "schedds": SCHEDDS,
    }
    cycle = report.summary(cycles, with_p95=True)
    report.write(
        args.output,
        {
            "cycle_ms": {
                **cycle,
                **goal("cycle_ms", cycle["p95"]),
                "goal_on": "p95",
                "cpu_ms": report.summary(cpu, with_p95=True),
                "load_average_1m": [round(x, 2) for x in load],
                "cpus": os.cpu_count(),
                "size": size,
                "warmup_cycles": args.warmup,
                "alive_before": before,
                "alive_after": after,
                "actions_per_cycle": plan_kinds(plans),
                "log_lines": log_lines,
                "state_file_fs": fstype,
                "state_file_on_tmpfs": fstype == "tmpfs",
                "notes": {
                    "what": "Controller.cycle() of tide.loop with the real observe, policy, "
                    "actuator, metrics (tide.metrics) and Store (SQLite, WAL, "
                    "synchronous=FULL); sites and pool simulated in memory (BenchSite, "
                    "BenchPool), calls inline (InlineRunner); logging at INFO to a file",
                    "steady state": f"between cycles (untimed) {CHURN} running resources end "
                    f"and {CHURN} boots register; each cycle records them, creates {CHURN} "
                    "replacements and retries the refused destroys that are due; "
                    f"virtual clock, {INTERVAL_S:g}s a cycle",
                    "cpu_ms": "time.process_time() of each timed cycle: the process's own CPU "
                    "time; wall time above it is waiting (fsync) or other processes on the "
                    "machine (load_average_1m: before and after the timed cycles)",
                    "p95": "interpolated between the closest ranks (statistics.quantiles, "
                    "inclusive)",
                },
            },
            "cycle_rss_mb": {
                "peak": round(rss, 1),
                "before_setup": round(rss_before, 1),
                **goal("cycle_rss_mb", rss),
                "notes": "resource.getrusage(RUSAGE_SELF).ru_maxrss after the timed cycles: "
                "the whole process (interpreter, demand, simulated world, controller)",
            },
            "decide_ms_at_scale": {
                **report.summary(decides, with_p95=True),
                **goal("decide_ms_at_scale", report.p95(decides)),
                "goal_on": "p95",
                "size": size,
                "notes": "tide.policy.decide on the Snapshot Controller.observe(write=False) "
                "returns after the timed cycles: the same size and mix",
            },
        },
        measured=measured,
    )


def timed_decide(snapshot: Snapshot) -> float:
    start = time.perf_counter()
    decide(snapshot)
    return (time.perf_counter() - start) * 1_000


if __name__ == "__main__":
    main()
