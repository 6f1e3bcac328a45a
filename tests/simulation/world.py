"""The simulated world: a virtual clock and its event queue, the pool, the
sites, the fault injector and the invariant checker, all driven by one
seeded random.Random.

Every external call the controller makes goes through `World.call`: a crash
may happen before it (nothing done) or after it (done, then the crash); an
operator or the world may act inside it (racing the loop between its
observe and its act); it may fail, or hang until its deadline
(DeadlineExceeded), its effect then happening late or never; otherwise it
takes a random duration and its effect happens.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol, TypeVar

from tests.simulation.clock import SimRunner, VirtualClock
from tests.simulation.faults import CALL_DEADLINE_S, DeadlineExceeded, Faults, SimFailure
from tests.simulation.invariants import Checker, Stop, Violation
from tests.simulation.pool import Autocluster, Pool
from tests.simulation.sites import KINDS, SimSite, SiteSpec, SlurmSim
from tide.budget import BudgetRule
from tide.loop import SlotState
from tide.model import Site
from tide.sites.base import OwnerQueue
from tide.store import Store

if TYPE_CHECKING:
    from tests.simulation.schedule import Scenario

T = TypeVar("T")
T0 = 1_000_000.0
POOL_CALL_S = (0.01, 0.3)


class Operator(Protocol):
    """What an operator does, through the store (see harness.Operator)."""

    def drain(self, rid: str) -> bool: ...
    def evacuate(self, site: str, nodes: int | None) -> None: ...
    def resume(self, site: str) -> None: ...


class World:
    def __init__(self, scenario: Scenario, *, out: Callable[[str], None] | None = None) -> None:
        self.scenario = scenario
        self.rng = random.Random(scenario.seed)  # noqa: S311 - replayable by design
        self.clock = VirtualClock(T0)
        self.clock.on_advance = self.run_until
        self.runner = SimRunner(self.clock)
        self._out = out
        self.step = 0
        self.faults = Faults(scenario.rates, self.rng, self.log)
        self.pool = Pool(self, scenario.schedds)
        self.specs: dict[str, SiteSpec] = {s.name: s for s in scenario.sites}
        self.sites: dict[str, SimSite] = {s.name: KINDS[s.kind](self, s) for s in scenario.sites}
        self.configured: set[str] = set(self.sites)
        self.autoclusters: tuple[Autocluster, ...] = scenario.autoclusters
        self.slots = SimSlots(self)
        self.checker = Checker(self)
        self.operator: Operator | None = None
        self.outside: Store | None = None  # the operators' (and checker's) connection
        self.operator_drained: set[str] = set()
        self.paused_since: dict[str, float] = {}  # site -> an operator evacuated it then
        self.resumed_at: dict[str, float] = {}  # site -> an operator resumed it then
        self.in_cycle = False
        self.in_late_effect = False
        self.cycle_started_at = T0
        self.daemon_cycles = 0
        self.settling = False
        self.kill_pending = False
        self._events: list[tuple[float, int, Callable[[], None], str | None]] = []
        self._seq = 0
        self._ids = 0
        self._schedule_negotiator()

    # --- time and events ------------------------------------------------

    def after(self, dt: float, fn: Callable[[], None], label: str | None) -> None:
        """Run fn dt seconds from now (the current lane's now)."""
        self._seq += 1
        heapq.heappush(self._events, (self.clock() + dt, self._seq, fn, label))

    def run_until(self, t: float) -> None:
        """Run the events due by t, in time order (the clock's advance hook)."""
        while self._events and self._events[0][0] <= t:
            at, _, fn, label = heapq.heappop(self._events)
            self.clock.now = max(self.clock.now, at)
            if label is not None:
                self.log(label)
            fn()

    def _schedule_negotiator(self) -> None:
        def negotiate() -> None:
            self.pool.negotiate()
            self._schedule_negotiator()

        self.after(self.rng.uniform(10.0, 20.0), negotiate, None)

    # --- reporting --------------------------------------------------------

    def log(self, message: str) -> None:
        if self._out is not None:
            self.step += 1
            self._out(f"[{self.step:5d}] t={self.clock() - T0:8.1f} {message}")

    def violate(self, invariant: str, message: str) -> None:
        v = Violation(invariant, message, self.clock() - T0)
        self.log(f"VIOLATION {v}")
        raise Stop(v)

    # --- the controller's seams --------------------------------------------

    def call(self, point: str, effect: Callable[[], T], *, site: str | None = None) -> T:
        """One external call of the controller (see the module's docstring)."""
        f = self.faults
        f.crash_point(point, "before")
        if self.in_cycle and f.races():
            self.race()
        spec = self.specs.get(site or "")
        low, high = POOL_CALL_S if spec is None else spec.call_s
        outcome = f.outcome(point)
        if outcome == "fail":
            self.clock.advance(self.rng.uniform(low, high))
            self.checker.call_failed(site, point)
            self.log(f"FAULT {point} fails")
            raise SimFailure(f"{point}: simulated failure")
        if outcome in ("hang", "late"):
            self.clock.advance(CALL_DEADLINE_S)
            self.checker.call_failed(site, point)
            self.log(
                f"FAULT {point} hangs past its deadline"
                + (", effect late" if outcome == "late" else "")
            )
            if outcome == "late":
                self.after(
                    self.rng.uniform(0.0, 10.0),
                    lambda: self._late(effect),
                    f"late effect of {point}",
                )
            raise DeadlineExceeded(f"{point}: no answer within {CALL_DEADLINE_S:.0f}s")
        self.clock.advance(self.rng.uniform(low, high))
        result = effect()
        f.crash_point(point, "after")
        return result

    def _late(self, effect: Callable[[], object]) -> None:
        self.in_late_effect = True
        try:
            effect()
        except Exception:  # noqa: S110 - nobody waits for a late answer any more
            pass
        finally:
            self.in_late_effect = False

    def operator_store(self) -> Store | None:
        return self.outside

    def new_id(self, site: str) -> str:
        self._ids += 1
        return f"tide-{site}-{self._ids:08x}"

    def site_model(self, name: str) -> Site:
        spec = self.specs[name]
        budget = None
        if spec.budget_core_h > 0:
            budget = BudgetRule(
                core_hours=spec.budget_core_h,
                since=T0,
                warn_at=(0.5, 0.9),
                pilot_cpus=spec.shape.cpus,
                pilot_walltime_s=spec.walltime_s,
            )
        return Site(name, spec.shape, spec.limits, budget=budget)

    # --- the checker's hooks (called by the simulated sites) -----------------

    def on_create_call(self, site: str, rid: str) -> None:
        self.checker.create_call(site, rid)

    def on_created(self, site: str, rid: str, *, late: bool) -> None:
        self.checker.created(site, rid, late=late)

    def on_destroy_call(self, site: str, rid: str) -> None:
        self.checker.destroy_call(site, rid)

    def on_drain_call(self, site: str, rid: str) -> None:
        self.checker.drain_call(site, rid)

    def on_cancel_drain_call(self, site: str, rid: str) -> None:
        self.checker.cancel_drain_call(site, rid)

    def on_evacuate(self, site: SlurmSim, rid: str) -> None:
        self.checker.evacuate(site, rid)

    def on_owner_answer(self, site: str, answer: OwnerQueue) -> None:
        if self.in_late_effect:  # nobody waits for it any more: the controller never knew
            return
        self.checker.owner_answer(site, answer)

    def on_boot(self, site: str) -> None:
        self.checker.booted(site)

    def evacuation_context(self, site: str) -> bool:
        """Whether vacating a pilot of `site` now is an evacuation: its owners
        wait (now, or in the queue the controller last read: they may have got
        a node in the second since), or an operator evacuated the site."""
        s = self.sites[site]
        if site in self.paused_since:
            return True
        resumed = self.resumed_at.get(site)
        if resumed is not None and resumed >= self.cycle_started_at:
            return True  # resumed during this cycle: its evacuation was asked before
        if not isinstance(s, SlurmSim):
            return False
        read = s.last_answer
        return bool(s.waiting()) or (read is not None and read.pending_nodes > 0)

    # --- faults and operators racing the loop --------------------------------

    def race(self) -> None:
        """Something happens inside a controller's call: mostly an operator's drain."""
        x = self.rng.random()
        if x < 0.5:
            self.world_fault("drain")
        elif x < 0.6:
            self.world_fault("evacuate")
        elif x < 0.7:
            self.world_fault("resume")
        elif x < 0.8:
            self.world_fault("startd")
        elif x < 0.9:
            self.world_fault("collector")
        else:
            self.world_fault("schedd")

    def world_fault(self, kind: str) -> None:  # noqa: PLR0912 - one branch per kind
        """One fault or world event of the schedule, on a target drawn now."""
        if self.settling and kind not in ("kill",):
            return
        rng = self.rng
        slurm = sorted(
            n for n, s in self.sites.items() if isinstance(s, SlurmSim) and n in self.configured
        )
        if kind == "collector":
            self.pool.restart_collector()
        elif kind == "schedd":
            self.pool.restart_schedd(rng.choice(sorted(self.pool.schedds)))
        elif kind == "startd":
            if self.pool.startds:
                self.pool.restart_startd(rng.choice(sorted(self.pool.startds)))
        elif kind == "drain":
            rids = sorted(rid for s in self.sites.values() for rid in s.resources)
            if rids and self.operator is not None:
                rid = rng.choice(rids)
                if self.operator.drain(rid):
                    self.log(f"OPERATOR tide drain {rid}")
                    self.operator_drained.add(rid)
        elif kind == "evacuate":
            if slurm and self.operator is not None:
                site = rng.choice(slurm)
                nodes = None if rng.random() < 0.5 else rng.randint(1, 2)
                self.operator.evacuate(site, nodes)
                self.paused_since.setdefault(site, self.clock())
                self.log(f"OPERATOR tide evacuate --site {site} --nodes {nodes}")
        elif kind == "resume":
            if self.paused_since and self.operator is not None:
                site = rng.choice(sorted(self.paused_since))
                self.operator.resume(site)
                del self.paused_since[site]
                self.resumed_at[site] = self.clock()
                self.log(f"OPERATOR tide resume --site {site}")
        elif kind == "owners":
            if slurm:
                owners = self.sites[rng.choice(slurm)]
                assert isinstance(owners, SlurmSim)
                owners.owners_submit(rng.randint(1, 3))
        elif kind == "submit":
            ac = rng.choice(self.autoclusters)
            self.pool.submit(rng.choice(sorted(self.pool.schedds)), ac, rng.randint(1, 5))
        elif kind == "kill":
            self.kill_pending = True
        else:
            raise ValueError(kind)


class SimSlots:
    """tide.loop.Slots over the simulated collector."""

    def __init__(self, world: World) -> None:
        self.world = world

    def observe(self) -> Mapping[str, SlotState]:
        pool = self.world.pool
        return self.world.call("collector.query", pool.slot_states)

    def started_at(self) -> float:
        """When the simulated collector last (re)started (tide.htcondor.slots.CollectorSlots)."""
        pool = self.world.pool
        return self.world.call("collector.age", lambda: pool.collector_started_at)

    def withdraw(self, resource_id: str) -> None:
        self.world.checker.withdraw_call(resource_id)
        self.world.call("collector.withdraw", lambda: self.world.pool.withdraw(resource_id))
