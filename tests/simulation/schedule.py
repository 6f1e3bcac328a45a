"""Seeded schedules: a scenario drawn from a seed, the driver that runs one
against the real controller, and the runner of many (in worker processes).

A schedule: the daemon is started; it cycles every `interval_s` of virtual
time (as tide.loop.run_forever: the next cycle starts `interval_s` after the
last one started, or at once if that one took longer); between and inside
its cycles the world's events and the schedule's faults happen. A crash
(SimCrash) kills the daemon; it is restarted 5 s later, as systemd would,
possibly with its state file lost or a site removed from its configuration.
After `duration_s`, the settling period: no faults, no new demand, until
the world is empty, or nothing has moved for SETTLE_STALL_S (at most
SETTLE_MAX_S); then the final invariants.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.simulation.faults import FaultRates, SimCrash
from tests.simulation.harness import Handle, Operator, start
from tests.simulation.invariants import Stop, Violation
from tests.simulation.pool import Autocluster
from tests.simulation.sites import SiteSpec
from tests.simulation.world import T0, World
from tide.model import Shape, SiteLimits
from tide.store import Store

RESTART_S = 5.0  # systemd's RestartSec
SETTLE_MAX_S = 3600.0
SETTLE_STALL_S = 900.0  # longer than any job, boot, idle, drain or lost timeout
# State files in memory (tmpfs): each schedule's name holds its pid and seed.
_SHM = Path("/dev/shm")  # noqa: S108
STORE_DIR = _SHM if _SHM.is_dir() else Path(tempfile.gettempdir())


@dataclass(frozen=True)
class Scenario:
    seed: int
    sites: tuple[SiteSpec, ...]
    schedds: tuple[str, ...]
    autoclusters: tuple[Autocluster, ...]
    rates: FaultRates
    duration_s: float
    events: tuple[tuple[float, str], ...]  # (seconds in, world_fault kind)
    interval_s: float = 15.0
    lose_state: bool = False  # at the first kill, the state file is lost
    remove_site: str | None = None  # at the first kill, this site leaves the configuration


@dataclass
class Result:
    seed: int
    violation: Violation | None = None
    cycles: int = 0
    crashes: int = 0
    jobs: int = 0
    lines: list[str] = field(default_factory=list)


SHAPE = Shape(4, 8192, 20000)
CALL_S = {"docker": (0.05, 3.0), "openstack": (0.2, 2.0), "slurm": (0.05, 1.0)}


def _walltime(seed: int, letter: str) -> tuple[float, float]:
    """A Slurm site's pilots' walltime (0: none) and end margin: their own
    draw, so adding them left every other scenario as it was. Longer than
    the longest job (600 s) and the margin: every job fits a fresh pilot
    (jobs declare no runtime here), so every job completes in the end."""
    rng = random.Random(f"tide-sim-walltime-{seed}-{letter}")  # noqa: S311
    walltime = rng.choice([0.0, 0.0, 700.0, 900.0])
    return walltime, rng.choice([30.0, 60.0]) if walltime else 0.0


def _budget(seed: int, letter: str) -> float:
    """A Slurm site's allocation of core hours (0: none), its own draw: a
    pilot here costs about one core-hour (4 cores, 700 or 900 s)."""
    rng = random.Random(f"tide-sim-budget-{seed}-{letter}")  # noqa: S311
    return rng.choice([0.0, 0.0, 0.0, 2.0, 5.0])


def random_scenario(seed: int) -> Scenario:
    """The scenario of `seed` (its own random.Random: independent of the run)."""
    rng = random.Random(f"tide-sim-scenario-{seed}")  # noqa: S311 - replayable by design
    kinds = rng.sample(["docker", "openstack", "slurm"], k=rng.choice([1, 2, 2, 3, 3]))
    letters = rng.sample("abc", len(kinds))
    sites = tuple(
        SiteSpec(
            name=f"{letter}-{kind}",
            kind=kind,
            shape=SHAPE,
            limits=SiteLimits(
                max_resources=rng.randint(2, 5),
                max_booting=rng.randint(1, 3),
                boot_timeout_s=180.0,
                idle_timeout_s=rng.choice([30.0, 60.0, 90.0]),
                backoff_base_s=rng.choice([10.0, 20.0, 30.0]),
                backoff_max_s=120.0,
                lost_timeout_s=rng.choice([150.0, 300.0]),
                owner_quiet_s=rng.choice([30.0, 60.0]),
                # Its own draw, so adding it left every other scenario as it was.
                owner_grace_s=random.Random(f"tide-sim-grace-{seed}-{letter}").choice(  # noqa: S311
                    [0.0, 0.0, 5.0, 20.0]
                )
                if kind == "slurm"
                else 0.0,
                end_margin_s=_walltime(seed, letter)[1] if kind == "slurm" else 0.0,
            ),
            nodes=rng.randint(2, 4) if kind == "slurm" else 0,
            call_s=CALL_S[kind],
            walltime_s=_walltime(seed, letter)[0] if kind == "slurm" else 0.0,
            budget_core_h=_budget(seed, letter)
            if kind == "slurm" and _walltime(seed, letter)[0]
            else 0.0,
        )
        for letter, kind in sorted(zip(letters, kinds, strict=True))
    )
    names = [s.name for s in sites]
    autoclusters = tuple(
        Autocluster(
            key=f"ac{i}",
            cpus=rng.choice([1, 2, 4]),
            memory_mb=rng.choice([1024, 2048, 4096]),
            disk_mb=1000,
            sites=tuple(rng.sample(names, k=min(len(names), rng.choice([1, 1, 2])))),
        )
        for i in range(rng.randint(1, 3))
    )
    crash = rng.choice([0.0, 0.002, 0.005, 0.01])
    rates = FaultRates(
        crash=crash,
        max_crashes=rng.randint(1, 6) if crash else 0,
        fail=rng.choice([0.0, 0.01, 0.03]),
        hang=rng.choice([0.0, 0.005, 0.02]),
        store_error=rng.choice([0.0, 0.0, 0.002]),
        race=rng.choice([0.0, 0.01, 0.03]),
    )
    duration = rng.uniform(200.0, 450.0)
    backfill = any(s.kind == "slurm" for s in sites)
    counts = {
        "submit": rng.randint(2, int(duration / 60)),
        "owners": rng.randint(1, max(1, int(duration / 90))) if backfill else 0,
        "collector": rng.choice([0, 0, 1, 2]),
        "schedd": rng.choice([0, 0, 1, 2]),
        "startd": rng.choice([0, 1, 3]),
        "drain": rng.choice([0, 1, 3]),
        "evacuate": rng.choice([0, 0, 1]) if backfill else 0,
        "resume": rng.choice([0, 1]) if backfill else 0,
        "kill": rng.choice([0, 0, 1, 2]),
    }
    lose_state = rng.random() < 0.05
    # Not both at once: a removed site's resources without records are beyond anyone's reach.
    may_remove = len(names) > 1 and not lose_state
    remove_site = rng.choice(names) if may_remove and rng.random() < 0.05 else None
    if (lose_state or remove_site) and not counts["kill"]:
        counts["kill"] = 1
    events = [(rng.uniform(0.0, 20.0), "submit")]
    for kind, n in sorted(counts.items()):
        events += [(rng.uniform(0.0, duration), kind) for _ in range(n)]
    return Scenario(
        seed=seed,
        sites=sites,
        schedds=tuple(f"schedd{i}" for i in range(1, rng.randint(1, 2) + 1)),
        autoclusters=autoclusters,
        rates=rates,
        duration_s=duration,
        events=tuple(sorted(events)),
        lose_state=lose_state,
        remove_site=remove_site,
    )


def describe(s: Scenario) -> str:
    sites = ", ".join(
        f"{x.name} (max {x.limits.max_resources}, booting {x.limits.max_booting}"
        + (f", {x.nodes} nodes" if x.kind == "slurm" else "")
        + ")"
        for x in s.sites
    )
    acs = ", ".join(f"{a.key} {a.cpus}cpu->{'/'.join(a.sites)}" for a in s.autoclusters)
    return (
        f"seed {s.seed}: {s.duration_s:.0f}s; sites {sites}; autoclusters {acs}; {s.rates};"
        f" lose_state={s.lose_state} remove_site={s.remove_site}"
    )


class _Run:
    """One schedule's driver."""

    def __init__(self, world: World, path: Path) -> None:
        self.world = world
        self.path = path
        self.handle: Handle | None = None
        self.crashes = 0
        self.killed = False

    def files(self) -> list[Path]:
        return [self.path.with_name(self.path.name + s) for s in ("", "-wal", "-shm", ".lock")]

    def boot(self, *, lose: bool = False, remove: str | None = None) -> None:
        """Start the daemon, restarting it after each crash, as systemd would."""
        w = self.world
        while True:
            if w.outside is not None:
                w.outside.close()
                w.outside = None
            if lose:
                w.log("FAULT the state file is lost (truncated to 0 bytes)")
                self.path.write_bytes(b"")
                for extra in self.files()[1:3]:
                    with suppress(FileNotFoundError):
                        extra.unlink()
                w.operator_drained.clear()  # the operators' requests were in that file
                w.checker.state_lost()
                w.paused_since.clear()
                lose = False
            if remove is not None:
                w.log(f"FAULT site {remove} removed from the configuration")
                w.configured.discard(remove)
                remove = None
            w.outside = Store.open(self.path, exclusive=False)
            w.operator = Operator(w, w.outside)
            w.log("daemon starts")
            try:
                self.handle = start(w, self.path)
            except SimCrash:
                self._crashed()
                continue
            w.checker.restarted()
            return

    def _crashed(self) -> None:
        w = self.world
        self.crashes += 1
        w.checker.cycle_crashed()
        w.clock.join()
        if self.handle is not None:
            self.handle.crash()
            self.handle = None
        w.clock.run_until(w.clock.now + RESTART_S)

    def kill(self) -> None:
        """Killed between cycles (the schedule's kill event)."""
        w = self.world
        w.kill_pending = False
        w.log("FAULT the daemon is killed")
        assert self.handle is not None
        self.handle.crash()
        self.handle = None
        w.clock.run_until(w.clock.now + RESTART_S)
        first = not self.killed
        self.killed = True
        sc = w.scenario
        self.boot(lose=first and sc.lose_state, remove=sc.remove_site if first else None)

    def cycle(self) -> None:
        w = self.world
        w.in_cycle = True
        w.cycle_started_at = w.clock.now
        w.log("cycle")
        assert self.handle is not None
        try:
            completed = self.handle.cycle()
            w.daemon_cycles += 1
            if completed:
                w.checker.cycle_done()
            else:  # what it saw may not be recorded: judged as a crash would be
                w.checker.cycle_crashed()
        except SimCrash:
            w.in_cycle = False
            self._crashed()
            self.boot()
        finally:
            w.in_cycle = False
        w.checker.check()

    def run(self) -> None:
        w = self.world
        sc = w.scenario
        for at, kind in sc.events:
            w.after(at, _fault(w, kind), None)
        self.boot()
        end = T0 + sc.duration_s
        next_cycle = w.clock.now
        while w.clock.now < end:
            self._until(next_cycle)
            started = w.clock.now
            self.cycle()
            next_cycle = max(started + sc.interval_s, w.clock.now)
        w.settling = True
        w.faults.quiet = True
        w.log("settling: no faults, no new demand, every paused site resumed")
        for site in sorted(w.paused_since):
            assert w.operator is not None
            w.operator.resume(site)
        w.paused_since.clear()
        settle_end = w.clock.now + SETTLE_MAX_S
        progress, progress_at = w.checker.progress(), w.clock.now
        while w.clock.now < settle_end and not w.checker.settled():
            if w.clock.now - progress_at > SETTLE_STALL_S:
                break  # nothing moved for long: what is left stays
            self._until(next_cycle)
            started = w.clock.now
            self.cycle()
            next_cycle = max(started + sc.interval_s, w.clock.now)
            if w.checker.progress() != progress:
                progress, progress_at = w.checker.progress(), w.clock.now
        w.checker.final(w.clock.now - end)

    def _until(self, t: float) -> None:
        w = self.world
        w.clock.run_until(t)
        if w.kill_pending:
            self.kill()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.crash()
        if self.world.outside is not None:
            self.world.outside.close()
        for f in self.files():
            with suppress(FileNotFoundError):
                f.unlink()


def _fault(w: World, kind: str) -> Callable[[], None]:
    def fault() -> None:
        w.world_fault(kind)
        if not w.in_cycle and kind != "kill" and not w.settling:
            w.checker.check()

    return fault


def run(
    scenario: Scenario,
    *,
    out: Callable[[str], None] | None = None,
    setup: Callable[[World], None] | None = None,
) -> Result:
    """Run one schedule; the first violation ends it. `out` receives the
    steps (and the controller's log) when given; `setup` may script faults."""
    world = World(scenario, out=out)
    path = STORE_DIR / f"tide-sim-{os.getpid()}-{scenario.seed}.sqlite3"
    runner = _Run(world, path)
    runner.close()  # a leftover of an interrupted run
    result = Result(scenario.seed)
    with _controller_log(world, verbose=out is not None):
        if setup is not None:
            setup(world)
        try:
            runner.run()
        except Stop as stop:
            result.violation = stop.violation
        finally:
            runner.close()
    result.cycles = world.daemon_cycles
    result.crashes = runner.crashes
    result.jobs = len(world.pool.jobs)
    return result


def run_seed(seed: int) -> Result:
    return run(random_scenario(seed))


class _Echo(logging.Handler):
    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        error = f" error={record.exc_info[1]!r}" if record.exc_info else ""
        self.world.log(f"  tide {record.levelname.lower()}: {record.getMessage()} {extra}{error}")


class _controller_log:
    """The controller's log: echoed as steps with -v, else silenced (and cheap)."""

    def __init__(self, world: World, *, verbose: bool) -> None:
        self.handler = _Echo(world) if verbose else None
        self.loggers = [logging.getLogger("tide"), logging.getLogger("tests.simulation")]

    def __enter__(self) -> None:
        for lg in self.loggers:
            lg.propagate = False
            if self.handler is not None:
                lg.addHandler(self.handler)
                lg.setLevel(logging.DEBUG)
            else:
                lg.setLevel(logging.CRITICAL + 1)

    def __exit__(self, *exc: object) -> None:
        for lg in self.loggers:
            lg.propagate = True
            lg.setLevel(logging.NOTSET)
            if self.handler is not None:
                lg.removeHandler(self.handler)


def run_many(seeds: Iterable[int], jobs: int = 2) -> Iterator[Result]:
    """Results of many schedules, in worker processes (unordered)."""
    seeds = list(seeds)
    if jobs <= 1:
        yield from map(run_seed, seeds)
        return
    import multiprocessing  # noqa: PLC0415

    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(jobs) as pool:
        yield from pool.imap_unordered(run_seed, seeds, chunksize=16)


def replay_command(seed: int) -> str:
    return f".venv/bin/python -m tests.simulation --seed {seed} -v"
